//! Multi-touch attribution: how the credit for what a lead reached (a
//! funnel stage, a won deal) is shared among the campaigns, sources and
//! channels of the touches that came before it. Pure and exact: every share
//! is an integer (millionths of a lead, micros of revenue) and the shares of
//! one credit always sum to the whole, so credits per campaign add up to the
//! total being credited, to the millionth, whatever order the touches
//! arrived in.
//!
//! Kept at write time: each lead keeps its `Journey` (bounded touches, the
//! moments it reached, its won deals); every change to a journey gives the
//! credit deltas of the moments it moves (`credit_changes`), so the kept
//! credits equal a recount from the leads' journeys, until a journey is
//! full: from then on what it credited stays as given.

use std::collections::BTreeMap;

use super::profiles::{FunnelGroupBy, NO_VALUE};
use super::{Stage, Timestamp};

/// One whole credit (one lead), in millionths.
pub const WHOLE: i64 = 1_000_000;

/// Touches kept per lead: the first and the 31 latest.
pub const MAX_TOUCHES: usize = 32;

/// Won deals kept per lead (older deals keep the credit they were given).
pub const MAX_DEALS: usize = 8;

/// The stages whose first reaching is credited (what a campaign report
/// counts).
pub const CREDITED_STAGES: [Stage; 5] = [Stage::Lead, Stage::Mql, Stage::Sql, Stage::Opportunity, Stage::Customer];

/// The time-decay half-life of a rule set that sets none.
pub const DEFAULT_HALF_LIFE_MS: i64 = 7 * 86_400_000;

/// A deal amount (currency units) in micros, rounded; negative or not
/// finite amounts count 0, and no more than `spend::MAX_AMOUNT` (what
/// `SetStage` accepts).
pub fn micros(amount: f64) -> i64 {
    let max = super::spend::MAX_AMOUNT.0 as f64;
    if amount.is_finite() && amount > 0.0 { (amount * 1e6).round().min(max) as i64 } else { 0 }
}

/// A day on which a lead came through a source, channel and campaign: the
/// earliest signal of that day carrying them (or, for the lead's first
/// touch, its earliest signal whatever it carried).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Touch {
    pub at: Timestamp,
    /// Source, channel, campaign (as `profiles::first_touch`).
    pub values: [String; 3],
}

impl Touch {
    /// Whether the signal carried a source, channel or campaign.
    pub fn tagged(&self) -> bool {
        self.values.iter().any(|v| v != NO_VALUE)
    }

    fn same_day(&self, other: &Touch) -> bool {
        self.values == other.values && self.at.utc_day() == other.at.utc_day()
    }

    /// The value under `group_by`.
    pub fn value(&self, group_by: FunnelGroupBy) -> &str {
        let i = FunnelGroupBy::ALL.iter().position(|g| *g == group_by).unwrap_or(0);
        &self.values[i]
    }
}

/// How credit is shared among the touches before the credited moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Model {
    /// All to the earliest touch.
    FirstTouch,
    /// All to the latest touch before the moment.
    LastTouch,
    /// Equal parts.
    Linear,
    /// Weight 2^(−age / half-life) by each touch's age at the moment.
    TimeDecay,
    /// 40% to the first, 40% to the last, 20% shared by those between
    /// (50/50 with two touches, all with one).
    PositionBased,
}

impl Model {
    /// Every model, each kept as credits at write time. First touch too,
    /// rather than read from the funnel, whose entries stay under the first
    /// touch known when they were counted: here a signal that arrives late
    /// with an earlier `occurred_at` moves the credit (unless the journey
    /// is `settled`).
    pub const ALL: [Model; 5] =
        [Model::FirstTouch, Model::LastTouch, Model::Linear, Model::TimeDecay, Model::PositionBased];

    /// The model's name in keys, the CLI and the docs.
    pub fn key(self) -> &'static str {
        match self {
            Model::FirstTouch => "first_touch",
            Model::LastTouch => "last_touch",
            Model::Linear => "linear",
            Model::TimeDecay => "time_decay",
            Model::PositionBased => "position_based",
        }
    }

    pub fn parse_key(key: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|m| m.key() == key)
    }
}

/// What a credit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CreditCounter {
    /// Leads that reached a `CREDITED_STAGES` stage (millionths of a lead).
    Reached(Stage),
    /// Won new-business revenue (micros).
    Revenue,
    /// Won expansion revenue (micros): upsells and cross-sells to
    /// customers (`expansion`).
    ExpansionRevenue,
}

/// A won deal, as attribution credits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WonDeal {
    pub at: Timestamp,
    pub micros: i64,
    /// An upsell or cross-sell to a customer, not new business.
    pub expansion: bool,
}

impl WonDeal {
    /// What its credit counts.
    pub fn counter(&self) -> CreditCounter {
        if self.expansion { CreditCounter::ExpansionRevenue } else { CreditCounter::Revenue }
    }
}

/// Everything attribution keeps about one lead.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Journey {
    /// Oldest first; the first is the lead's earliest signal, the others
    /// carried a source, channel or campaign, one per (values, UTC day).
    pub touches: Vec<Touch>,
    /// When each of `CREDITED_STAGES` was first reached.
    pub reached: [Option<Timestamp>; 5],
    /// Won deals, new business and expansion, newest first, at most
    /// `MAX_DEALS`.
    pub deals: Vec<WonDeal>,
    /// Deals ever won.
    pub deals_won: u64,
    /// The time-decay half-life its credit was shared with (0: the
    /// default).
    pub half_life_ms: i64,
    /// Whether it ever dropped touches to stay within `MAX_TOUCHES`: from
    /// then on, the credit it gave stays as given (a recount could no
    /// longer see the touches it was shared among), and only moments
    /// reached later are shared, among the touches kept then.
    pub settled: bool,
}

impl Journey {
    /// The time-decay half-life in effect.
    pub fn half_life(&self) -> i64 {
        if self.half_life_ms > 0 { self.half_life_ms } else { DEFAULT_HALF_LIFE_MS }
    }

    /// Whether anything it keeps has been credited.
    pub fn credited(&self) -> bool {
        self.reached.iter().any(Option::is_some) || !self.deals.is_empty()
    }

    /// Whether `touch` would change the touches kept.
    pub fn would_add(&self, touch: &Touch) -> bool {
        let Some(first) = self.touches.first() else { return true };
        if touch < first {
            return true;
        }
        if !touch.tagged() {
            return false;
        }
        if let Some(same) = self.touches.iter().find(|k| k.same_day(touch)) {
            return touch < same;
        }
        // Full: a touch older than every later one is dropped at once.
        !(self.touches.len() >= MAX_TOUCHES && self.touches.get(1).is_some_and(|second| touch < second))
    }

    /// Adds a touch: kept sorted, one per (values, day) at its earliest,
    /// untagged ones only as the first, the first and the latest kept.
    /// Answers whether anything changed.
    pub fn add_touch(&mut self, touch: Touch) -> bool {
        if !self.would_add(&touch) {
            return false;
        }
        self.touches.push(touch);
        self.touches.sort();
        let mut kept: Vec<Touch> = Vec::with_capacity(self.touches.len());
        for (i, t) in std::mem::take(&mut self.touches).into_iter().enumerate() {
            if i == 0 || (t.tagged() && !kept.iter().any(|k| k.same_day(&t))) {
                kept.push(t);
            }
        }
        if kept.len() > MAX_TOUCHES {
            kept.drain(1..=kept.len() - MAX_TOUCHES);
            self.settled = true;
        }
        self.touches = kept;
        true
    }

    /// When a stage was first reached: `None` for a stage not credited.
    fn slot(&mut self, stage: Stage) -> Option<&mut Option<Timestamp>> {
        let i = CREDITED_STAGES.iter().position(|s| *s == stage)?;
        self.reached.get_mut(i)
    }

    /// Whether a credited stage has been reached.
    pub fn has_reached(&self, stage: Stage) -> bool {
        CREDITED_STAGES.iter().zip(&self.reached).any(|(s, at)| *s == stage && at.is_some())
    }

    /// Records the first reaching of a credited stage; answers whether it
    /// was the first.
    pub fn reach(&mut self, stage: Stage, at: Timestamp) -> bool {
        match self.slot(stage) {
            Some(slot @ None) => {
                *slot = Some(at);
                true
            }
            _ => false,
        }
    }

    /// Records a won deal of `micros` (an expansion or new business).
    pub fn won(&mut self, at: Timestamp, micros: i64, expansion: bool) {
        self.deals.insert(0, WonDeal { at, micros: micros.max(0), expansion });
        self.deals.truncate(MAX_DEALS);
        self.deals_won += 1;
    }

    /// The touches that share a moment's credit: those at or before it
    /// (oldest first); without any, the first touch (a lead created before
    /// its first signal).
    pub fn relevant(&self, at: Timestamp) -> Vec<&Touch> {
        let before: Vec<&Touch> = self.touches.iter().take_while(|t| t.at <= at).collect();
        if before.is_empty() { self.touches.first().into_iter().collect() } else { before }
    }
}

/// A change to the credits of a (model, grouping value, counter) on a UTC
/// day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditDelta {
    pub day: i64,
    pub model: Model,
    pub group_by: FunnelGroupBy,
    pub value: String,
    pub counter: CreditCounter,
    pub by: i64,
}

type CreditKey = (i64, Model, usize, String, CreditCounter);

/// A moment's credit under every model, per grouping and value, added
/// to `out` with `sign`.
fn credit(
    out: &mut BTreeMap<CreditKey, i64>,
    touches: &[&Touch],
    counter: CreditCounter,
    at: Timestamp,
    amount: i64,
    sign: i64,
    half_life_ms: i64,
) {
    let none = Touch { at, values: [NO_VALUE.to_owned(), NO_VALUE.to_owned(), NO_VALUE.to_owned()] };
    let touches: Vec<&Touch> = if touches.is_empty() { vec![&none] } else { touches.to_vec() };
    for model in Model::ALL {
        let shares = shares(model, &touches, at, amount, half_life_ms);
        for (touch, share) in touches.iter().zip(shares) {
            for (dim, value) in touch.values.iter().enumerate() {
                *out.entry((at.utc_day(), model, dim, value.clone(), counter)).or_default() += sign * share;
            }
        }
    }
}

/// What moving a lead's journey from `old` to `new` changes in the kept
/// credits: every moment of `new` whose sharing touches changed (or that is
/// new, or all of them when the half-life changed) takes back its old
/// shares and gives its new ones. Deals no longer kept keep their credit.
/// Zero changes are left out.
/// All the credit a journey gives: what its lead counts for in the
/// credits while the journey is not settled.
pub fn credits_of(journey: &Journey) -> Vec<CreditDelta> {
    let none = Journey { half_life_ms: journey.half_life_ms, ..Journey::default() };
    credit_changes(&none, journey)
}

pub fn credit_changes(old: &Journey, new: &Journey) -> Vec<CreditDelta> {
    let mut out: BTreeMap<CreditKey, i64> = BTreeMap::new();
    let (old_half_life, new_half_life) = (old.half_life(), new.half_life());
    let new_deals = new.deals_won.saturating_sub(old.deals_won) as usize;
    let reached = CREDITED_STAGES.iter().enumerate().filter_map(|(i, stage)| {
        let at = new.reached[i]?;
        Some((CreditCounter::Reached(*stage), at, WHOLE, old.reached[i].is_some()))
    });
    let deals = new.deals.iter().enumerate().map(|(i, d)| (d.counter(), d.at, d.micros, i >= new_deals));
    // Once touches were dropped (before or by this change), what was
    // credited stays as given.
    let settled = old.settled || new.settled;
    for (counter, at, amount, was_credited) in reached.chain(deals) {
        let rel_new = new.relevant(at);
        if was_credited {
            if settled {
                continue;
            }
            let rel_old = old.relevant(at);
            if rel_old == rel_new && old_half_life == new_half_life {
                continue;
            }
            credit(&mut out, &rel_old, counter, at, amount, -1, old_half_life);
        }
        credit(&mut out, &rel_new, counter, at, amount, 1, new_half_life);
    }
    out.into_iter()
        .filter(|(_, by)| *by != 0)
        .map(|((day, model, dim, value, counter), by)| CreditDelta {
            day,
            model,
            group_by: FunnelGroupBy::ALL[dim],
            value,
            counter,
            by,
        })
        .collect()
}

/// Credits as read back: per funnel group (`campaign=…`), per counter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Credits {
    pub groups: BTreeMap<String, BTreeMap<CreditCounter, i64>>,
}

impl Credits {
    pub fn add(&mut self, group: &str, counter: CreditCounter, by: i64) {
        let counters = match self.groups.get_mut(group) {
            Some(c) => c,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        let n = counters.entry(counter).or_default();
        *n = n.saturating_add(by);
    }

    /// The credits of one grouping, by value.
    pub fn by(&self, group_by: FunnelGroupBy) -> impl Iterator<Item = (&str, &BTreeMap<CreditCounter, i64>)> {
        let prefix = format!("{}=", group_by.property());
        self.groups.iter().filter_map(move |(g, c)| Some((g.strip_prefix(prefix.as_str())?, c)))
    }
}

/// The funnel group a credit counts in (`campaign=spring`).
pub fn credit_group(group_by: FunnelGroupBy, value: &str) -> String {
    format!("{}={value}", group_by.property())
}

/// Each touch's share of `amount` (any integer quantity: millionths of a
/// lead, micros of revenue) under `model`, in the order of `touches`
/// (oldest first, as `Journey::relevant` gives them). The shares sum to
/// `amount` exactly: weights are turned into shares by the largest
/// remainder, ties to the earlier touch. Empty without touches.
pub fn shares(model: Model, touches: &[&Touch], at: Timestamp, amount: i64, half_life_ms: i64) -> Vec<i64> {
    let n = touches.len();
    if n == 0 {
        return Vec::new();
    }
    let weights: Vec<f64> = match model {
        Model::FirstTouch => (0..n).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect(),
        Model::LastTouch => (0..n).map(|i| if i == n - 1 { 1.0 } else { 0.0 }).collect(),
        Model::Linear => vec![1.0; n],
        // Ages from the newest touch rather than from the moment: the same
        // proportions, and the newest weighs 1 however short the half-life.
        Model::TimeDecay => {
            let newest = touches.iter().map(|t| t.at.millis().min(at.millis())).max().unwrap_or(0);
            touches
                .iter()
                .map(|t| {
                    let age = (newest - t.at.millis()).max(0) as f64;
                    (-(age / half_life_ms.max(1) as f64) * std::f64::consts::LN_2).exp()
                })
                .collect()
        }
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
    const HALF_LIFE: i64 = 7 * DAY;

    fn touch(day: i64, campaign: &str) -> Touch {
        if campaign == NO_VALUE {
            return Touch {
                at: Timestamp::from_millis(day * DAY),
                values: [NO_VALUE.into(), NO_VALUE.into(), NO_VALUE.into()],
            };
        }
        Touch { at: Timestamp::from_millis(day * DAY), values: ["google".into(), "paid".into(), campaign.into()] }
    }

    fn journey(touches: &[Touch]) -> Journey {
        let mut j = Journey::default();
        for t in touches {
            j.add_touch(t.clone());
        }
        j
    }

    #[test]
    fn each_model_shares_as_it_says() {
        let j = journey(&[touch(1, "a"), touch(5, "b"), touch(8, "c"), touch(9, "d")]);
        let at = Timestamp::from_millis(8 * DAY);
        let counted = j.relevant(at);
        assert_eq!(counted.len(), 3, "the touch after the moment does not count");
        let share = |model| shares(model, &counted, at, WHOLE, HALF_LIFE);
        assert_eq!(share(Model::FirstTouch), [WHOLE, 0, 0]);
        assert_eq!(share(Model::LastTouch), [0, 0, WHOLE]);
        assert_eq!(share(Model::Linear), [333_334, 333_333, 333_333]);
        assert_eq!(share(Model::PositionBased), [400_000, 200_000, 400_000]);
        assert_eq!(shares(Model::PositionBased, &counted[..2], at, WHOLE, HALF_LIFE), [500_000, 500_000]);
        // Ages 7, 3 and 0 days with a 7-day half-life: 1/2, 2^(-3/7), 1.
        let decay = share(Model::TimeDecay);
        let w = [0.5, (-3.0_f64 / 7.0).exp2(), 1.0];
        let total: f64 = w.iter().sum();
        for (share, w) in decay.iter().zip(w) {
            assert!((*share as f64 - w / total * WHOLE as f64).abs() <= 1.0, "{decay:?}");
        }
        assert!(shares(Model::Linear, &[], at, WHOLE, HALF_LIFE).is_empty());
        // A moment before every touch is credited to the first.
        assert_eq!(j.relevant(Timestamp::from_millis(0)), [&touch(1, "a")]);
    }

    #[test]
    fn a_journey_keeps_one_touch_per_day_and_the_latest() {
        let untagged = |day: i64| Touch {
            at: Timestamp::from_millis(day * DAY),
            values: [NO_VALUE.to_owned(), NO_VALUE.to_owned(), NO_VALUE.to_owned()],
        };
        let noon = Touch { at: touch(4, "a").at.plus_millis(DAY / 2), ..touch(4, "a") };
        let mut j = journey(&[untagged(3), noon.clone()]);
        assert!(!j.add_touch(untagged(5)), "an untagged signal is a touch only as the first");
        assert!(j.add_touch(untagged(2)));
        assert_eq!(j.touches, [untagged(2), noon.clone()], "the first untagged touch gives way to an earlier one");
        let later_that_day = Touch { at: noon.at.plus_millis(3_600_000), ..noon.clone() };
        assert!(!j.add_touch(later_that_day.clone()), "one touch per campaign and day");
        let earlier_that_day = Touch { at: noon.at.plus_millis(-3_600_000), ..noon };
        assert!(j.add_touch(earlier_that_day.clone()));
        assert_eq!(j.touches, [untagged(2), earlier_that_day]);
        let mut j = journey(&(0..100).map(|d| touch(d, "x")).collect::<Vec<_>>());
        assert_eq!(j.touches.len(), MAX_TOUCHES);
        assert_eq!(j.touches[0], touch(0, "x"), "the first is kept");
        assert_eq!(j.touches[1], touch(100 - MAX_TOUCHES as i64 + 1, "x"), "then the latest");
        assert!(!j.would_add(&touch(50, "y")), "older than every later touch kept: dropped");
        assert!(!j.add_touch(touch(50, "y")));
    }

    #[test]
    fn a_full_journey_keeps_the_credit_it_gave() {
        let mut j = journey(&(0..MAX_TOUCHES as i64).map(|d| touch(d, "x")).collect::<Vec<_>>());
        let before = j.clone();
        j.reach(Stage::Mql, Timestamp::from_millis(20 * DAY));
        let given = credit_changes(&before, &j);
        let linear = |ds: &[CreditDelta]| -> i64 {
            ds.iter().filter(|d| d.model == Model::Linear && d.group_by == FunnelGroupBy::Campaign).map(|d| d.by).sum()
        };
        assert_eq!(linear(&given), WHOLE);
        for day in 40..100 {
            let old = j.clone();
            assert!(j.add_touch(touch(day, "y")));
            assert_eq!(credit_changes(&old, &j), [], "day {day}: the MQL keeps the shares it was given");
        }
        let old = j.clone();
        j.reach(Stage::Sql, Timestamp::from_millis(100 * DAY));
        let sql: i64 = credit_changes(&old, &j)
            .iter()
            .filter(|d| d.model == Model::LastTouch && d.group_by == FunnelGroupBy::Campaign && d.value == "y")
            .map(|d| d.by)
            .sum();
        assert_eq!(sql, WHOLE, "a new moment is shared among the touches kept then");
    }

    #[test]
    fn a_journey_that_dropped_touches_stays_settled() {
        // An untagged first touch, then 31 tagged ones: full, nothing
        // dropped yet.
        let mut all = vec![touch(10, NO_VALUE)];
        all.extend((11..42).map(|d| touch(d, "x")));
        let mut j = journey(&all);
        assert_eq!((j.touches.len(), j.settled), (MAX_TOUCHES, false));
        j.add_touch(touch(50, "x"));
        assert!(j.settled, "the oldest tagged touch was dropped");
        j.reach(Stage::Mql, Timestamp::from_millis(45 * DAY));
        let mut kept = Kept::new();
        keep(&mut kept, credit_changes(&Journey::default(), &j));
        // A late signal earlier than the untagged first replaces it: the
        // journey stays settled, so the MQL's credit is neither re-shared
        // nor taken back.
        let old = j.clone();
        assert!(j.add_touch(touch(5, "y")));
        assert!(j.settled);
        assert_eq!(credit_changes(&old, &j), []);
        // A batch that crosses the bound in one change settles it too.
        let mut j = journey(&(0..30).map(|d| touch(d, "x")).collect::<Vec<_>>());
        j.reach(Stage::Mql, Timestamp::from_millis(29 * DAY));
        let old = j.clone();
        for d in 0..5 {
            j.add_touch(touch(d, "z"));
        }
        assert!(j.settled);
        assert_eq!(credit_changes(&old, &j), [], "the MQL keeps what it was given");
    }

    #[test]
    fn time_decay_weighs_the_newest_touch_whatever_the_half_life() {
        let j = journey(&[touch(1, "a"), touch(30, "b"), touch(31, "c")]);
        let at = Timestamp::from_millis(400 * DAY);
        assert_eq!(shares(Model::TimeDecay, &j.relevant(at), at, WHOLE, 1), [0, 0, WHOLE]);
        let day = shares(Model::TimeDecay, &j.relevant(at), at, WHOLE, DAY);
        assert_eq!(day.iter().sum::<i64>(), WHOLE);
        assert!(day[2] > 2 * day[1] - 2 && day[1] > day[0], "{day:?}");
    }

    /// One step of a lead's journey: touches (day, campaign) in a batch, a
    /// stage reached, a deal won.
    #[derive(Debug, Clone)]
    enum Op {
        Touches(Vec<(i64, usize)>),
        Reach(usize, i64),
        Won(i64, i64, bool),
        HalfLife(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => proptest::collection::vec((0i64..60, 0usize..5), 1..12).prop_map(Op::Touches),
            1 => (0usize..5, 0i64..70).prop_map(|(s, d)| Op::Reach(s, d)),
            1 => (0i64..70, 0i64..=1_000_000_000_000, any::<bool>()).prop_map(|(d, m, x)| Op::Won(d, m, x)),
            1 => (1i64..30).prop_map(|d| Op::HalfLife(d * DAY)),
        ]
    }

    /// A campaign, or none (an untagged touch, kept only as the first).
    fn campaign(c: usize) -> &'static str {
        ["a", "b", "c", "d", NO_VALUE][c]
    }

    type Kept = BTreeMap<(i64, Model, FunnelGroupBy, String, CreditCounter), i64>;

    fn keep(kept: &mut Kept, deltas: Vec<CreditDelta>) {
        for d in deltas {
            *kept.entry((d.day, d.model, d.group_by, d.value, d.counter)).or_default() += d.by;
        }
        kept.retain(|_, n| *n != 0);
    }

    /// Runs the steps, keeping credits from the deltas as a store would.
    fn run(ops: &[Op]) -> (Journey, Kept) {
        let (mut j, mut kept) = (Journey { half_life_ms: HALF_LIFE, ..Journey::default() }, Kept::new());
        for op in ops {
            let old = j.clone();
            match op {
                Op::Touches(ts) => {
                    for (day, c) in ts {
                        j.add_touch(touch(*day, campaign(*c)));
                    }
                }
                Op::Reach(s, day) => {
                    j.reach(CREDITED_STAGES[*s], Timestamp::from_millis(day * DAY));
                }
                Op::Won(day, micros, expansion) => j.won(Timestamp::from_millis(day * DAY), *micros, *expansion),
                Op::HalfLife(ms) => j.half_life_ms = *ms,
            }
            keep(&mut kept, credit_changes(&old, &j));
        }
        (j, kept)
    }

    fn recount(j: &Journey) -> Kept {
        let mut kept = Kept::new();
        let none = Journey { half_life_ms: j.half_life_ms, ..Journey::default() };
        keep(&mut kept, credit_changes(&none, j));
        kept
    }

    proptest! {
        /// Under every model the shares sum to the amount exactly, and the
        /// order the touches arrived in changes nothing.
        #[test]
        fn shares_sum_to_the_whole_whatever_the_order(
            days in proptest::collection::vec((0i64..60, 0usize..4), 1..30),
            at in 0i64..70,
            amount in 0i64..=1_000_000_000_000,
        ) {
            let touches: Vec<Touch> = days.iter().map(|(d, c)| touch(*d, campaign(*c))).collect();
            let mut reversed = touches.clone();
            reversed.reverse();
            let at = Timestamp::from_millis(at * DAY);
            let (a, b) = (journey(&touches), journey(&reversed));
            for model in Model::ALL {
                let sa = shares(model, &a.relevant(at), at, amount, HALF_LIFE);
                prop_assert_eq!(&sa, &shares(model, &b.relevant(at), at, amount, HALF_LIFE));
                prop_assert_eq!(sa.iter().sum::<i64>(), amount);
                prop_assert!(sa.iter().all(|s| *s >= 0));
            }
        }

        /// Whatever a lead goes through, the credits kept from the deltas
        /// equal a recount from its journey (until it drops touches), never
        /// go below zero, and per model and grouping sum exactly to what
        /// was reached and won.
        #[test]
        fn kept_credits_equal_a_recount_and_sum_to_the_whole(ops in proptest::collection::vec(op(), 1..25)) {
            let deals = ops.iter().filter(|o| matches!(o, Op::Won(..))).count();
            prop_assume!(deals <= MAX_DEALS);
            let (j, kept) = run(&ops);
            if !j.settled {
                prop_assert_eq!(&kept, &recount(&j));
            }
            prop_assert!(kept.values().all(|n| *n > 0), "{:?}", kept);
            let reached = j.reached.iter().flatten().count() as i64;
            let revenue = |counter: CreditCounter| -> i64 { j.deals.iter().filter(|d| d.counter() == counter).map(|d| d.micros).sum() };
            for model in Model::ALL {
                for g in FunnelGroupBy::ALL {
                    let sum = |counter: fn(&CreditCounter) -> bool| -> i64 {
                        kept.iter().filter(|((_, m, gb, _, c), _)| *m == model && *gb == g && counter(c)).map(|(_, n)| n).sum()
                    };
                    prop_assert_eq!(sum(|c| matches!(c, CreditCounter::Reached(_))), reached * WHOLE);
                    prop_assert_eq!(sum(|c| *c == CreditCounter::Revenue), revenue(CreditCounter::Revenue));
                    prop_assert_eq!(sum(|c| *c == CreditCounter::ExpansionRevenue), revenue(CreditCounter::ExpansionRevenue));
                }
            }
        }

        /// Splitting the touches into other batches, or sending them in
        /// another order, gives the same credits.
        #[test]
        fn batching_and_order_do_not_change_the_credits(
            touches in proptest::collection::vec((0i64..60, 0usize..4), 1..20),
            moments in proptest::collection::vec((0usize..5, 0i64..70), 0..5),
            chunk in 1usize..5,
            seed in any::<u64>(),
        ) {
            let mut shuffled = touches.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let reach: Vec<Op> = moments.iter().map(|(st, d)| Op::Reach(*st, *d)).collect();
            // Moments first, touches after (late arrivals), or the other way.
            let one: Vec<Op> = reach.iter().cloned().chain([Op::Touches(touches.clone())]).collect();
            let many: Vec<Op> = shuffled.chunks(chunk).map(|c| Op::Touches(c.to_vec())).chain(reach.iter().cloned()).collect();
            let (a, ka) = run(&one);
            let (b, kb) = run(&many);
            prop_assert_eq!(&a.touches, &b.touches);
            prop_assert_eq!(ka, kb);
        }
    }
}
