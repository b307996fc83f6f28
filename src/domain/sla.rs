//! The clock of the sales–marketing agreement: how much of the time between
//! two instants counts toward a follow-up deadline, and when a deadline
//! falls. Either every hour counts, or only business hours: working days
//! of the week, opening and closing times in a time zone (daylight saving
//! included), holidays left out.
//!
//! Pure and bounded: every answer walks at most `MAX_DAYS` local days.
//! `handover` tells where one hand-over stands: on time, late, or waiting;
//! `Agreement` is the rule file's `[sla]` section, `Pending` a lead's
//! hand-over waiting for sales.

use std::collections::BTreeSet;

use chrono::{Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;

use super::Timestamp;

/// Local days an answer walks at most (ten years): a deadline further than
/// that is `Timestamp` at its end.
pub const MAX_DAYS: u64 = 3660;

/// Business hours: when the time counts.
#[derive(Debug, Clone, PartialEq)]
pub struct BusinessHours {
    pub zone: Tz,
    /// Monday first.
    pub working_days: [bool; 7],
    /// Opening and closing, local wall-clock time; `open < close`.
    pub open: NaiveTime,
    pub close: NaiveTime,
    pub holidays: BTreeSet<NaiveDate>,
}

/// What counts toward a deadline.
#[derive(Debug, Clone, PartialEq)]
pub enum SlaClock {
    /// Every hour.
    Always,
    Business(BusinessHours),
}

impl BusinessHours {
    /// The local instant as UTC milliseconds; in a daylight-saving gap the
    /// first instant after it, in an overlap the earlier one.
    fn utc(&self, local: NaiveDateTime) -> i64 {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.timestamp_millis(),
            LocalResult::None => {
                // Gaps last at most a few hours: the first valid minute.
                let mut probe = local.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(local);
                for _ in 0..(24 * 60) {
                    probe += chrono::Duration::minutes(1);
                    if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) = self.zone.from_local_datetime(&probe)
                    {
                        return t.timestamp_millis();
                    }
                }
                local.and_utc().timestamp_millis()
            }
        }
    }

    /// The working window of a local day in UTC milliseconds, if it has one.
    fn window(&self, day: NaiveDate) -> Option<(i64, i64)> {
        let weekday = day.weekday().num_days_from_monday() as usize;
        if !self.working_days[weekday] || self.holidays.contains(&day) {
            return None;
        }
        let (open, close) = (self.utc(day.and_time(self.open)), self.utc(day.and_time(self.close)));
        (open < close).then_some((open, close))
    }

    /// The local day of an instant.
    fn local_day(&self, at: Timestamp) -> NaiveDate {
        // Years 1 to 9999: any zone's offset keeps the local day in range.
        let millis = at.millis().clamp(-62_135_596_800_000, 253_402_300_799_999);
        let utc = chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default();
        utc.with_timezone(&self.zone).date_naive()
    }

    /// The working windows from the local day of `from` on (at most
    /// `MAX_DAYS` days).
    fn windows(&self, from: Timestamp) -> impl Iterator<Item = (i64, i64)> + '_ {
        let first = self.local_day(from);
        (0..MAX_DAYS).filter_map(move |d| first.checked_add_days(Days::new(d))).filter_map(|day| self.window(day))
    }
}

impl SlaClock {
    /// The time that counts between `from` and `to` (0 when `to` is not
    /// after `from`), in milliseconds.
    pub fn elapsed(&self, from: Timestamp, to: Timestamp) -> i64 {
        let (a, b) = (from.millis(), to.millis());
        if b <= a {
            return 0;
        }
        match self {
            SlaClock::Always => b.saturating_sub(a),
            SlaClock::Business(hours) => hours
                .windows(from)
                .take_while(|(open, _)| *open < b)
                .map(|(open, close)| (close.min(b) - open.max(a)).max(0))
                .sum(),
        }
    }

    /// The instant at which `within` milliseconds of counted time have
    /// passed since `from`: `from` itself when `within` is 0 or less, the
    /// end of `Timestamp` when no such instant comes within `MAX_DAYS`.
    pub fn deadline(&self, from: Timestamp, within: i64) -> Timestamp {
        if within <= 0 {
            return from;
        }
        match self {
            SlaClock::Always => from.plus_millis(within),
            SlaClock::Business(hours) => {
                let mut left = within;
                for (open, close) in hours.windows(from) {
                    let start = open.max(from.millis());
                    if start >= close {
                        continue;
                    }
                    if close - start >= left {
                        return Timestamp::from_millis(start + left);
                    }
                    left -= close - start;
                }
                Timestamp::from_millis(i64::MAX)
            }
        }
    }
}

/// The follow-up agreement of the rule file (`[sla]`): every lead that
/// becomes an MQL must be decided on by sales (a `SetStage` out of MQL:
/// accepted, recycled, disqualified) within `within_ms` of counted time.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub clock: SlaClock,
    pub within_ms: i64,
    /// The lead attribute naming its owner (the sales rep), told with a breach.
    pub owner_attribute: String,
}

impl Agreement {
    /// The deadline of a hand-over at `handed`.
    pub fn due(&self, handed: Timestamp) -> Timestamp {
        self.clock.deadline(handed, self.within_ms)
    }

    /// Where a pending hand-over stands at `now`, decided at `decided` if
    /// it was; held to the deadline it was given.
    pub fn stands(&self, pending: Pending, decided: Option<Timestamp>, now: Timestamp) -> Handover {
        let took = |at: Timestamp| self.clock.elapsed(pending.handed_at, at);
        match decided {
            Some(at) if at <= pending.due => Handover::OnTime { took: took(at) },
            Some(at) => Handover::Late { took: took(at), late_by: at.millis().saturating_sub(pending.due.millis()) },
            None => Handover::Waiting { age: took(now), due: pending.due, overdue: now > pending.due },
        }
    }
}

/// In words: "within 24h" or "within 24h of business hours: Europe/Berlin,
/// mon tue wed thu fri 09:00-17:00, 3 holidays".
impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Agreements are stated in hours ("24h", not "1d": a day of
        // business hours is not a calendar day).
        const HOUR: i64 = 3_600_000;
        match self.within_ms {
            ms if ms % HOUR == 0 => write!(f, "within {}h", ms / HOUR)?,
            ms => write!(f, "within {}", super::duration::format_duration(ms))?,
        }
        if let SlaClock::Business(h) = &self.clock {
            const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            let days: Vec<&str> = DAYS.iter().zip(h.working_days).filter(|(_, on)| *on).map(|(d, _)| *d).collect();
            let (open, close) = (h.open.format("%H:%M"), h.close.format("%H:%M"));
            write!(f, " of business hours: {}, {} {open}-{close}", h.zone, days.join(" "))?;
            match h.holidays.len() {
                0 => {}
                1 => write!(f, ", 1 holiday")?,
                n => write!(f, ", {n} holidays")?,
            }
        }
        Ok(())
    }
}

/// A lead handed over to sales and not yet decided on: when, and the
/// deadline the agreement in force then gave it (a later rule set does not
/// move it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub handed_at: Timestamp,
    pub due: Timestamp,
    /// The breach was counted (once per hand-over).
    pub breached: bool,
}

/// Where one hand-over stands against the agreement: `within` of counted
/// time from the moment a lead was handed over (became an MQL) to sales'
/// decision (accepted or recycled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// Decided in time, after `took` of counted time.
    OnTime { took: i64 },
    /// Decided `late_by` after the deadline.
    Late { took: i64, late_by: i64 },
    /// Not decided yet; `due` is the deadline, `age` the counted time so
    /// far; `overdue` once `due` has passed (a decision now would be late).
    Waiting { age: i64, due: Timestamp, overdue: bool },
}

impl Handover {
    /// Whether the deadline has passed without a decision in time.
    pub fn breached(self) -> bool {
        match self {
            Handover::OnTime { .. } => false,
            Handover::Late { .. } => true,
            Handover::Waiting { overdue, .. } => overdue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;

    fn berlin() -> SlaClock {
        SlaClock::Business(BusinessHours {
            zone: "Europe/Berlin".parse().unwrap(),
            working_days: [true, true, true, true, true, false, false],
            open: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
            close: NaiveTime::from_hms_opt(17, 0, 0).unwrap(),
            holidays: [NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()].into(),
        })
    }

    fn utc(s: &str) -> Timestamp {
        Timestamp::from_millis(chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis())
    }

    #[test]
    fn business_hours_skip_nights_weekends_and_holidays() {
        let clock = berlin();
        // Friday 16:00 in Berlin (15:00 UTC): one hour left that day, then
        // Monday from 09:00 (08:00 UTC).
        let friday = utc("2026-12-04T15:00:00Z");
        assert_eq!(clock.deadline(friday, 8 * HOUR), utc("2026-12-07T15:00:00Z"));
        assert_eq!(clock.elapsed(friday, utc("2026-12-07T15:00:00Z")), 8 * HOUR);
        // Thursday 24 December at 16:00: the 25th is a holiday, the 26th and
        // 27th a weekend.
        assert_eq!(clock.deadline(utc("2026-12-24T15:00:00Z"), 2 * HOUR), utc("2026-12-28T09:00:00Z"));
        // Saturday night: the clock starts on Monday morning.
        assert_eq!(clock.deadline(utc("2026-12-05T22:00:00Z"), HOUR), utc("2026-12-07T09:00:00Z"));
        assert_eq!(SlaClock::Always.deadline(friday, 8 * HOUR), utc("2026-12-04T23:00:00Z"));
    }

    #[test]
    fn business_hours_follow_daylight_saving() {
        let clock = berlin();
        // Berlin is UTC+1 in March until the 29th, UTC+2 after.
        assert_eq!(clock.deadline(utc("2026-03-27T07:00:00Z"), HOUR), utc("2026-03-27T09:00:00Z"));
        assert_eq!(clock.deadline(utc("2026-03-30T06:00:00Z"), HOUR), utc("2026-03-30T08:00:00Z"));
        // Opening at 02:30 on the Sunday clocks skip from 02:00 to 03:00:
        // the day opens at 03:00 local (01:00 UTC).
        let SlaClock::Business(mut night) = clock else { unreachable!() };
        night.working_days = [true; 7];
        night.open = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
        let night = SlaClock::Business(night);
        assert_eq!(night.deadline(utc("2026-03-28T23:00:00Z"), HOUR), utc("2026-03-29T02:00:00Z"));
    }

    #[test]
    fn a_calendar_without_working_time_answers_at_once() {
        let SlaClock::Business(mut hours) = berlin() else { unreachable!() };
        hours.working_days = [false; 7];
        let clock = SlaClock::Business(hours);
        let at = utc("2026-12-04T15:00:00Z");
        assert_eq!(clock.deadline(at, HOUR), Timestamp::from_millis(i64::MAX));
        assert_eq!(clock.elapsed(at, at.plus_millis(400 * 24 * HOUR)), 0);
    }

    #[test]
    fn a_handover_is_on_time_late_or_waiting() {
        let clock = berlin();
        let handed = utc("2026-12-04T15:00:00Z");
        let within = 24 * HOUR;
        // 24 business hours from Friday 16:00: three working days later.
        let due = clock.deadline(handed, within);
        assert_eq!(due, utc("2026-12-09T15:00:00Z"));
        let monday = utc("2026-12-07T10:00:00Z");
        let agreement = Agreement { clock, within_ms: within, owner_attribute: "owner".into() };
        assert_eq!(
            agreement.to_string(),
            "within 24h of business hours: Europe/Berlin, mon tue wed thu fri 09:00-17:00, 1 holiday"
        );
        let pending = Pending { handed_at: handed, due: agreement.due(handed), breached: false };
        let handover = |decided: Option<Timestamp>, now: Timestamp| agreement.stands(pending, decided, now);
        assert_eq!(handover(Some(monday), monday), Handover::OnTime { took: 3 * HOUR });
        let late = due.plus_millis(2 * HOUR);
        let h = handover(Some(late), late);
        assert_eq!(h, Handover::Late { took: within + HOUR, late_by: 2 * HOUR }, "17:00 to 18:00 does not count");
        assert!(h.breached());
        let waiting = handover(None, monday);
        assert_eq!(waiting, Handover::Waiting { age: 3 * HOUR, due, overdue: false });
        assert!(!waiting.breached());
        assert!(!handover(None, due).breached(), "a decision at the deadline is in time");
        assert_eq!(handover(Some(due), due), Handover::OnTime { took: within });
        let evening = handover(None, late);
        assert_eq!(evening, Handover::Waiting { age: within + HOUR, due, overdue: true });
        assert!(evening.breached());
        let clock = &agreement.clock;
        // Instants beyond the calendar: no panic, no overflow.
        let (min, max) = (Timestamp::from_millis(i64::MIN), Timestamp::from_millis(i64::MAX));
        assert_eq!(SlaClock::Always.elapsed(min, max), i64::MAX);
        assert_eq!(clock.elapsed(max, max), 0);
        assert_eq!(clock.deadline(max, HOUR), max);
        let _ = clock.elapsed(min, handed);
    }

    proptest! {
        /// The deadline is when exactly the time asked for has counted;
        /// counted time adds up over consecutive spans and grows with the
        /// span.
        #[test]
        fn deadlines_and_elapsed_time_agree(
            from in 1_700_000_000_000i64..1_900_000_000_000,
            within in 0i64..(400 * HOUR),
            cut in 0i64..(2_000 * HOUR),
            more in 0i64..(2_000 * HOUR),
        ) {
            for clock in [SlaClock::Always, berlin()] {
                let from = Timestamp::from_millis(from);
                let due = clock.deadline(from, within);
                prop_assert!(due >= from);
                prop_assert_eq!(clock.elapsed(from, due), within);
                if within > 0 {
                    prop_assert!(clock.elapsed(from, due.plus_millis(-1)) < within);
                }
                let (mid, end) = (from.plus_millis(cut), from.plus_millis(cut + more));
                prop_assert_eq!(clock.elapsed(from, mid) + clock.elapsed(mid, end), clock.elapsed(from, end));
                prop_assert!(clock.elapsed(from, end) <= cut + more);
            }
        }
    }
}
