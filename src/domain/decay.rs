//! Exponential decay kept exactly with O(1) updates (SPEC §3).
//!
//! Per signal type a lead keeps, for each model, the sum of its counted
//! signals' points decayed to the type's *anchor*: the `occurred_at` of the
//! newest counted signal of that type. A newer signal moves the anchor
//! forward (the sum is decayed to the new anchor first); a late one is added
//! already decayed to the anchor. So every exponent is `<= 0` and nothing can
//! overflow however long a lead lives, and the value at `T` is
//! `sum × 0.5^((T − anchor) / half_life)` whatever order signals came in.
//!
//! This is the only implementation: the scoring core (`crate::transition`)
//! applies it, and the stores keep the sums it yields.

use std::collections::BTreeMap;

use super::time::Timestamp;

/// How a signal type's points fade.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// Points keep their full value (e.g. `unsubscribe`).
    None,
    /// Points halve every `millis` milliseconds.
    HalfLife { millis: f64 },
}

impl Decay {
    /// Weight at `to` of a point recorded at `from`: `0.5^((to − from) / h)`.
    pub fn factor(self, from: Timestamp, to: Timestamp) -> f64 {
        match self {
            Decay::None => 1.0,
            Decay::HalfLife { millis } => 2f64.powf((from.millis() - to.millis()) as f64 / millis),
        }
    }
}

/// Points and decay one model gives one signal.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelWeight {
    pub model: String,
    pub points: f64,
    pub decay: Decay,
}

/// What a lead has accumulated for one signal type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeTally {
    /// Signals of this type that count (not duplicates, not over the cap).
    pub counted: u64,
    /// Newest `occurred_at` among them: the anchor of `sums`.
    pub last_at: Option<Timestamp>,
    /// Per model: points decayed to `last_at`.
    pub sums: BTreeMap<String, f64>,
}

impl TypeTally {
    /// Counts one signal at `at`. `weights` must hold every model of the
    /// rule set (zero points included) so each sum is re-anchored with its
    /// own half-life.
    pub fn add(&mut self, at: Timestamp, weights: &[ModelWeight]) {
        for w in weights {
            let sum = self.sums.entry(w.model.clone()).or_insert(0.0);
            *sum = match self.last_at {
                None => w.points,
                Some(anchor) if at > anchor => *sum * w.decay.factor(anchor, at) + w.points,
                Some(anchor) => *sum + w.points * w.decay.factor(at, anchor),
            };
        }
        self.counted += 1;
        if self.last_at.is_none_or(|anchor| at > anchor) {
            self.last_at = Some(at);
        }
    }

    /// The model's decayed points at `now`.
    pub fn value_at(&self, model: &str, decay: Decay, now: Timestamp) -> f64 {
        match (self.sums.get(model), self.last_at) {
            (Some(sum), Some(anchor)) => sum * decay.factor(anchor, now),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn weight(points: f64, decay: Decay) -> Vec<ModelWeight> {
        vec![ModelWeight { model: "m".into(), points, decay }]
    }

    #[test]
    fn halves_at_one_half_life() {
        let decay = Decay::HalfLife { millis: (7 * DAY) as f64 };
        let mut tally = TypeTally::default();
        tally.add(Timestamp::from_millis(0), &weight(10.0, decay));
        let at = |d: i64| tally.value_at("m", decay, Timestamp::from_millis(d * DAY));
        assert!((at(0) - 10.0).abs() < 1e-12);
        assert!((at(7) - 5.0).abs() < 1e-12);
        assert!((at(14) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn late_signal_equals_in_order_signal() {
        let decay = Decay::HalfLife { millis: DAY as f64 };
        let (t1, t2) = (Timestamp::from_millis(0), Timestamp::from_millis(3 * DAY));
        let mut in_order = TypeTally::default();
        in_order.add(t1, &weight(8.0, decay));
        in_order.add(t2, &weight(4.0, decay));
        let mut late = TypeTally::default();
        late.add(t2, &weight(4.0, decay));
        late.add(t1, &weight(8.0, decay));
        let now = Timestamp::from_millis(5 * DAY);
        let expected = 8.0 * 0.5f64.powi(5) + 4.0 * 0.5f64.powi(2);
        assert!((in_order.value_at("m", decay, now) - expected).abs() < 1e-12);
        assert!((late.value_at("m", decay, now) - expected).abs() < 1e-12);
        assert_eq!(late.last_at, Some(t2));
    }

    #[test]
    fn no_decay_keeps_points_and_negative_points_subtract() {
        let mut tally = TypeTally::default();
        tally.add(Timestamp::from_millis(0), &weight(-50.0, Decay::None));
        tally.add(Timestamp::from_millis(400 * DAY), &weight(-50.0, Decay::None));
        let now = Timestamp::from_millis(10_000 * DAY);
        assert_eq!(tally.value_at("m", Decay::None, now), -100.0);
    }

    #[test]
    fn decades_of_short_half_life_do_not_overflow() {
        let decay = Decay::HalfLife { millis: (DAY / 24) as f64 };
        let mut tally = TypeTally::default();
        for year in 0..30 {
            tally.add(Timestamp::from_millis(year * 365 * DAY), &weight(1.0, decay));
        }
        let v = tally.value_at("m", decay, Timestamp::from_millis(29 * 365 * DAY));
        assert!(v.is_finite() && (v - 1.0).abs() < 1e-9, "{v}");
    }
}
