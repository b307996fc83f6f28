//! Multi-touch attribution: how the credit for something a lead reached (a
//! stage, a won deal) is shared among the campaigns, sources and channels
//! of the touches that came before it. Pure and exact: every share is an
//! integer number of millionths and the shares of one credit always sum to
//! the whole, so credits per campaign add up to the total being credited,
//! to the millionth, whatever the order the touches arrived in.
//!
//! Not yet kept at write time: the campaign report answers first touch from
//! the funnel counters (see `spend::campaign_report`); the scoring core
//! will keep per-lead touches and these credits as aggregate deltas.

use super::Timestamp;

/// One whole credit, in millionths.
pub const WHOLE: i64 = 1_000_000;

/// A signal that carried a campaign, source or channel.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Touch {
    pub at: Timestamp,
    /// Source, channel, campaign (as `profiles::first_touch`).
    pub values: [String; 3],
}

/// How credit is shared among the touches before the credited moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// All to the earliest touch.
    FirstTouch,
    /// All to the latest touch before the moment.
    LastTouch,
    /// Equal parts.
    Linear,
    /// Weight 2^(−age / half-life) by each touch's age at the moment.
    TimeDecay { half_life_ms: i64 },
    /// 40% to the first, 40% to the last, 20% shared by those between
    /// (50/50 with two touches, all with one).
    PositionBased,
}

/// The touches that count for a moment: those at or before it, oldest
/// first (ties by value, so the order they arrived in does not matter).
pub fn before(touches: &[Touch], at: Timestamp) -> Vec<&Touch> {
    let mut before: Vec<&Touch> = touches.iter().filter(|t| t.at <= at).collect();
    before.sort();
    before
}

/// Each touch's share of `amount` (any integer quantity: millionths of a
/// lead, micros of revenue) under `model`, in the order of `touches`
/// (oldest first, as `before` gives them). The shares sum to `amount`
/// exactly: weights are turned into shares by the largest remainder, ties
/// to the earlier touch. Empty without touches.
pub fn shares(model: Model, touches: &[&Touch], at: Timestamp, amount: i64) -> Vec<i64> {
    let n = touches.len();
    if n == 0 {
        return Vec::new();
    }
    let weights: Vec<f64> = match model {
        Model::FirstTouch => (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
        Model::LastTouch => (0..n).map(|i| if i == n - 1 { 1.0 } else { 0.0 }).collect(),
        Model::Linear => vec![1.0; n],
        Model::TimeDecay { half_life_ms } => touches
            .iter()
            .map(|t| {
                let age = (at.millis() - t.at.millis()).max(0) as f64;
                (-(age / half_life_ms.max(1) as f64) * std::f64::consts::LN_2).exp()
            })
            .collect(),
        Model::PositionBased => match n {
            1 => vec![1.0],
            2 => vec![0.5, 0.5],
            _ => (0..n).map(|i| if i == 0 || i == n - 1 { 0.4 } else { 0.2 / (n - 2) as f64 }).collect(),
        },
    };
    apportion(&weights, amount)
}

/// `amount` split in proportion to `weights` into integers that sum to it
/// exactly (largest remainder; ties to the earlier index). All weights zero
/// or not finite: equal parts.
pub fn apportion(weights: &[f64], amount: i64) -> Vec<i64> {
    let usable = weights.iter().all(|w| w.is_finite() && *w >= 0.0) && weights.iter().any(|w| *w > 0.0);
    let weights: Vec<f64> = if usable { weights.to_vec() } else { vec![1.0; weights.len()] };
    let total: f64 = weights.iter().sum();
    if weights.is_empty() {
        return Vec::new();
    }
    let exact: Vec<f64> = weights.iter().map(|w| w / total * amount as f64).collect();
    let mut parts: Vec<i64> = exact.iter().map(|x| x.floor() as i64).collect();
    let mut left = amount - parts.iter().sum::<i64>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    // Largest remainder first; the floor of a float may still overshoot by
    // rounding, so the remainder can be negative too.
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - parts[a] as f64, exact[b] - parts[b] as f64);
        rb.partial_cmp(&ra).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
    });
    let mut i = 0;
    while left != 0 && !order.is_empty() {
        let at = order[i % order.len()];
        if left > 0 {
            parts[at] += 1;
            left -= 1;
        } else if parts[at] > 0 {
            parts[at] -= 1;
            left += 1;
        }
        i += 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    fn touch(day: i64, campaign: &str) -> Touch {
        Touch { at: Timestamp::from_millis(day * DAY), values: ["google".into(), "paid".into(), campaign.into()] }
    }

    fn models() -> [Model; 5] {
        [
            Model::FirstTouch,
            Model::LastTouch,
            Model::Linear,
            Model::TimeDecay { half_life_ms: 7 * DAY },
            Model::PositionBased,
        ]
    }

    #[test]
    fn each_model_shares_as_it_says() {
        let touches = [touch(1, "a"), touch(5, "b"), touch(8, "c"), touch(9, "d")];
        let at = Timestamp::from_millis(8 * DAY);
        let counted = before(&touches, at);
        assert_eq!(counted.len(), 3, "the touch after the moment does not count");
        assert_eq!(shares(Model::FirstTouch, &counted, at, WHOLE), [WHOLE, 0, 0]);
        assert_eq!(shares(Model::LastTouch, &counted, at, WHOLE), [0, 0, WHOLE]);
        assert_eq!(shares(Model::Linear, &counted, at, WHOLE), [333_334, 333_333, 333_333]);
        assert_eq!(shares(Model::PositionBased, &counted, at, WHOLE), [400_000, 200_000, 400_000]);
        assert_eq!(shares(Model::PositionBased, &counted[..2], at, WHOLE), [500_000, 500_000]);
        // Ages 7, 3 and 0 days with a 7-day half-life: 1/2, 2^(-3/7), 1.
        let decay = shares(Model::TimeDecay { half_life_ms: 7 * DAY }, &counted, at, WHOLE);
        let w = [0.5, (-3.0_f64 / 7.0).exp2(), 1.0];
        let total: f64 = w.iter().sum();
        for (share, w) in decay.iter().zip(w) {
            assert!((*share as f64 - w / total * WHOLE as f64).abs() <= 1.0, "{decay:?}");
        }
        assert!(shares(Model::Linear, &[], at, WHOLE).is_empty());
    }

    proptest! {
        /// Under every model the shares sum to the amount exactly, and the
        /// order the touches arrived in changes nothing.
        #[test]
        fn shares_sum_to_the_whole_whatever_the_order(
            days in proptest::collection::vec((0i64..60, 0usize..4), 1..30),
            at in 0i64..70,
            amount in 0i64..=1_000_000_000_000,
            seed in any::<u64>(),
        ) {
            let touches: Vec<Touch> = days.iter().map(|(d, c)| touch(*d, ["a", "b", "c", "d"][*c])).collect();
            let mut shuffled = touches.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let at = Timestamp::from_millis(at * DAY);
            for model in models() {
                let a = before(&touches, at);
                let b = before(&shuffled, at);
                let sa = shares(model, &a, at, amount);
                prop_assert_eq!(&sa, &shares(model, &b, at, amount));
                if !a.is_empty() {
                    prop_assert_eq!(sa.iter().sum::<i64>(), amount);
                    prop_assert!(sa.iter().all(|s| *s >= 0));
                }
            }
        }

        #[test]
        fn apportion_is_exact(weights in proptest::collection::vec(0.0f64..1e6, 1..50), amount in 0i64..=i64::MAX / 4) {
            let parts = apportion(&weights, amount);
            prop_assert_eq!(parts.iter().sum::<i64>(), amount);
            prop_assert!(parts.iter().all(|p| *p >= 0));
        }
    }
}
