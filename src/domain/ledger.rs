//! Recording signals on one lead: de-duplication by `event_id`, per-UTC-day
//! caps, and the bounded raw history. The one implementation: both stores
//! only keep what this computes (see the scoring core, `transition`).

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::{EventId, LeadSnapshot, ModelWeight, Timestamp};

/// A validated signal with the points every model gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredSignal {
    pub event_id: EventId,
    pub signal_type: String,
    pub occurred_at: Timestamp,
    /// At most this many signals of the type count per lead per UTC day.
    pub daily_cap: Option<u32>,
    /// One entry per model of the rule set.
    pub weights: Vec<ModelWeight>,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalStatus {
    Accepted,
    Duplicate,
    /// Recorded, but over the type's daily cap: counts zero.
    Capped,
}

/// How long and how much a lead remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestPolicy {
    /// How long a seen `event_id` is remembered for de-duplication.
    pub dedupe_window_ms: i64,
    /// Oldest `occurred_at` accepted; also how long cap counters live.
    pub retention_ms: i64,
    /// Raw signals kept per lead (newest first), for rescoring.
    pub history_limit: usize,
}

/// One raw signal as kept in a lead's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The event id's fingerprint (`fingerprint`): what de-duplication
    /// compares.
    pub print: u64,
    pub signal_type: String,
    pub occurred_at_ms: i64,
    pub properties: BTreeMap<String, String>,
    /// When it was recorded: replaying the history in arrival order
    /// reproduces caps and de-duplication exactly.
    pub arrived_at_ms: i64,
}

impl HistoryEntry {
    pub fn of(print: u64, signal: &ScoredSignal, arrived_at: Timestamp) -> Self {
        Self {
            print,
            signal_type: signal.signal_type.clone(),
            occurred_at_ms: signal.occurred_at.millis(),
            properties: signal.properties.clone(),
            arrived_at_ms: arrived_at.millis(),
        }
    }
}

/// A 64-bit fingerprint of an event id (FNV-1a): what the dedupe window
/// remembers instead of the id itself. Stable across versions and machines.
pub fn fingerprint(event_id: &str) -> u64 {
    event_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// De-duplication and history state of one lead.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeadLedger {
    /// Event-id fingerprint → when it was recorded (within the window).
    seen: HashMap<u64, Timestamp>,
    /// Newest first.
    history: VecDeque<HistoryEntry>,
}

impl LeadLedger {
    /// A ledger as stored: fingerprints with when they were recorded, and
    /// the raw history newest first.
    pub fn from_parts(seen: impl IntoIterator<Item = (u64, Timestamp)>, history: VecDeque<HistoryEntry>) -> Self {
        Self { seen: seen.into_iter().collect(), history }
    }

    /// Fingerprints remembered, with when they were recorded, oldest first.
    pub fn seen(&self) -> Vec<(u64, Timestamp)> {
        let mut seen: Vec<(u64, Timestamp)> = self.seen.iter().map(|(f, at)| (*f, *at)).collect();
        seen.sort_by_key(|(f, at)| (*at, *f));
        seen
    }

    /// Whether this event id was recorded within the window ending `now`.
    pub fn has_seen(&self, event_id: &str, now: Timestamp, policy: &IngestPolicy) -> bool {
        self.seen.get(&fingerprint(event_id)).is_some_and(|at| at.millis() > now.millis() - policy.dedupe_window_ms)
    }

    /// Records `signal` on `lead`.
    pub fn record(
        &mut self,
        lead: &mut LeadSnapshot,
        signal: &ScoredSignal,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> SignalStatus {
        self.record_print(lead, fingerprint(signal.event_id.as_str()), signal, now, policy)
    }

    /// Records `signal`, whose event id has the fingerprint `print` (a
    /// signal replayed from a raw history keeps only that).
    pub fn record_print(
        &mut self,
        lead: &mut LeadSnapshot,
        print: u64,
        signal: &ScoredSignal,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> SignalStatus {
        let window_start = now.millis() - policy.dedupe_window_ms;
        self.seen.retain(|_, at| at.millis() > window_start);
        if self.seen.contains_key(&print) {
            return SignalStatus::Duplicate;
        }
        self.seen.insert(print, now);
        lead.recorded += 1;

        let per_day = lead.daily.entry(signal.signal_type.clone()).or_default();
        let n = per_day.entry(signal.occurred_at.utc_day()).or_insert(0);
        *n += 1;
        let counted = signal.daily_cap.is_none_or(|cap| *n <= cap);
        if *n == 1 {
            // A new day: forget the days past retention.
            let oldest_day = now.plus_millis(-policy.retention_ms).utc_day();
            for days in lead.daily.values_mut() {
                days.retain(|day, _| *day >= oldest_day);
            }
        }

        if policy.history_limit > 0 {
            self.history.push_front(HistoryEntry::of(print, signal, now));
            self.history.truncate(policy.history_limit);
        }

        if counted {
            lead.tallies.entry(signal.signal_type.clone()).or_default().add(signal.occurred_at, &signal.weights);
            lead.last_engaged_at = Some(now);
            SignalStatus::Accepted
        } else {
            SignalStatus::Capped
        }
    }

    /// Newest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &HistoryEntry> + ExactSizeIterator {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Decay;

    const DAY: i64 = 86_400_000;
    const POLICY: IngestPolicy = IngestPolicy { dedupe_window_ms: 7 * DAY, retention_ms: 90 * DAY, history_limit: 3 };

    fn lead() -> LeadSnapshot {
        LeadSnapshot::new(crate::domain::LeadId::parse("l").unwrap(), Timestamp::from_millis(0))
    }

    fn signal(id: &str, at: i64, cap: Option<u32>) -> ScoredSignal {
        ScoredSignal {
            event_id: EventId::parse(id).unwrap(),
            signal_type: "page_view".into(),
            occurred_at: Timestamp::from_millis(at),
            daily_cap: cap,
            weights: vec![ModelWeight { model: "m".into(), points: 1.0, decay: Decay::None }],
            properties: BTreeMap::new(),
        }
    }

    #[test]
    fn duplicates_change_nothing_within_the_window() {
        let (mut ledger, mut lead) = (LeadLedger::default(), lead());
        let now = Timestamp::from_millis(100 * DAY);
        assert_eq!(ledger.record(&mut lead, &signal("e1", 99 * DAY, None), now, &POLICY), SignalStatus::Accepted);
        let before = lead.clone();
        assert_eq!(ledger.record(&mut lead, &signal("e1", 99 * DAY, None), now, &POLICY), SignalStatus::Duplicate);
        assert_eq!(lead, before);
        // After the window the id is forgotten.
        let later = now.plus_millis(8 * DAY);
        assert_eq!(ledger.record(&mut lead, &signal("e1", 99 * DAY, None), later, &POLICY), SignalStatus::Accepted);
    }

    #[test]
    fn cap_counts_first_arrivals_per_utc_day() {
        let (mut ledger, mut lead) = (LeadLedger::default(), lead());
        let now = Timestamp::from_millis(100 * DAY);
        let day = 99 * DAY;
        let statuses: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| ledger.record(&mut lead, &signal(id, day + 10, Some(2)), now, &POLICY))
            .collect();
        assert_eq!(statuses, [SignalStatus::Accepted, SignalStatus::Accepted, SignalStatus::Capped]);
        // Another day has its own allowance.
        assert_eq!(ledger.record(&mut lead, &signal("d", day - 10, Some(2)), now, &POLICY), SignalStatus::Accepted);
        assert_eq!(lead.tallies["page_view"].counted, 3);
        // Windows are whole UTC days up to today (day 100).
        assert_eq!(lead.count_within("page_view", 1, Some(2), now), 0);
        assert_eq!(lead.count_within("page_view", 2, Some(2), now), 2);
        assert_eq!(lead.count_within("page_view", 3, Some(2), now), 3);
        assert_eq!(lead.count_within("page_view", 3, None, now), 4);
    }

    #[test]
    fn history_is_bounded_newest_first() {
        let (mut ledger, mut lead) = (LeadLedger::default(), lead());
        let now = Timestamp::from_millis(100 * DAY);
        for id in ["a", "b", "c", "d"] {
            ledger.record(&mut lead, &signal(id, 99 * DAY, None), now, &POLICY);
        }
        let prints: Vec<_> = ledger.history().map(|h| h.print).collect();
        assert_eq!(prints, ["d", "c", "b"].map(fingerprint));
    }
}
