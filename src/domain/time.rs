//! Instants, UTC days and the clock.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MILLIS_PER_DAY: i64 = 86_400_000;

/// An instant, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    pub const fn millis(self) -> i64 {
        self.0
    }

    /// The UTC calendar day, counted from 1970-01-01 (day 0).
    pub const fn utc_day(self) -> i64 {
        self.0.div_euclid(MILLIS_PER_DAY)
    }

    pub const fn plus_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis))
    }
}

/// RFC 3339 in UTC, to the second (e.g. `2026-12-04T15:00:00Z`); the raw
/// milliseconds beyond the calendar.
impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            None => write!(f, "{} ms", self.0),
        }
    }
}

/// As unix milliseconds.
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.millis())
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i64::deserialize(d).map(Timestamp::from_millis)
    }
}

/// Where "now" comes from; tests substitute a controllable clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_day_boundaries() {
        assert_eq!(Timestamp::from_millis(0).utc_day(), 0);
        assert_eq!(Timestamp::from_millis(MILLIS_PER_DAY - 1).utc_day(), 0);
        assert_eq!(Timestamp::from_millis(MILLIS_PER_DAY).utc_day(), 1);
        assert_eq!(Timestamp::from_millis(-1).utc_day(), -1);
        assert_eq!(Timestamp::from_millis(1_796_396_400_999).to_string(), "2026-12-04T15:00:00Z");
        assert_eq!(Timestamp::from_millis(i64::MAX).to_string(), format!("{} ms", i64::MAX));
    }
}
