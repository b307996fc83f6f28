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
    }
}
