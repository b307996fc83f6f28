//! Score profiles, cohort figures and the funnel: the pure parts. The
//! scoring core (`transition`) computes how each change moves the
//! aggregates; the stores keep them; this module defines what they count
//! and turns them into answers. How a store lays them out is its own
//! business.

use std::collections::BTreeMap;

use chrono::{Datelike, TimeZone, Utc};

use super::expansion::{Event, Kind};
use super::{Stage, Timestamp};

/// Stages that count as "reached MQL" for a cohort's MQL rate.
pub const QUALIFIED_STAGES: [Stage; 6] =
    [Stage::Mql, Stage::Sal, Stage::Sql, Stage::Opportunity, Stage::Customer, Stage::Advocate];

/// The stages a funnel reports conversions between, in order.
pub const FUNNEL_STAGES: [Stage; 6] =
    [Stage::Lead, Stage::Mql, Stage::Sal, Stage::Sql, Stage::Opportunity, Stage::Customer];

// ---------------------------------------------------------------- history

/// One model's score in a history entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelScore {
    pub model: String,
    pub behavior: f64,
    pub fit: f64,
}

impl ModelScore {
    pub fn total(&self) -> f64 {
        self.behavior + self.fit
    }
}

/// A lead's scores right after one change, as written with the change.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreHistoryEntry {
    pub at: Timestamp,
    /// `signal:<type>`, `signals`, `profile` or `rescore:<version>`.
    pub cause: String,
    pub scores: Vec<ModelScore>,
}

impl ScoreHistoryEntry {
    pub fn score(&self, model: &str) -> Option<&ModelScore> {
        self.scores.iter().find(|s| s.model == model)
    }
}

/// The cause a batch of recorded signals gives its score history entry.
pub fn signals_cause<'a>(types: impl IntoIterator<Item = &'a str>) -> String {
    let mut types: Vec<&str> = types.into_iter().collect();
    types.sort_unstable();
    types.dedup();
    match types.as_slice() {
        [one] => format!("signal:{one}"),
        _ => "signals".to_owned(),
    }
}

// ---------------------------------------------------------------- months

/// A UTC calendar month, counted as `year * 12 + (month - 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(i64);

impl Month {
    pub fn of(at: Timestamp) -> Self {
        let date = Utc.timestamp_millis_opt(at.millis()).single().unwrap_or_default();
        Self(i64::from(date.year()) * 12 + i64::from(date.month0()))
    }

    /// The month `at` starts, if it is exactly the first instant of one.
    pub fn starting_at(at: Timestamp) -> Option<Self> {
        let month = Self::of(at);
        (month.start() == at).then_some(month)
    }

    pub fn start(self) -> Timestamp {
        let (year, month0) = (self.0.div_euclid(12), self.0.rem_euclid(12));
        let year = i32::try_from(year).unwrap_or(1970);
        let start = Utc.with_ymd_and_hms(year, month0 as u32 + 1, 1, 0, 0, 0).single().unwrap_or_default();
        Timestamp::from_millis(start.timestamp_millis())
    }

    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// `YYYYMM`, the key of the month's aggregates.
    pub fn key(self) -> String {
        format!("{:04}{:02}", self.0.div_euclid(12), self.0.rem_euclid(12) + 1)
    }

    /// The month of a `YYYYMM` key.
    pub fn parse_key(key: &str) -> Option<Self> {
        if key.len() != 6 || !key.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (year, month): (i64, i64) = (key[..4].parse().ok()?, key[4..].parse().ok()?);
        (1..=12).contains(&month).then_some(Self(year * 12 + month - 1))
    }

    /// Months from `self` up to (excluding) `end`.
    pub fn until(self, end: Month) -> impl Iterator<Item = Month> {
        (self.0..end.0).map(Month)
    }
}

// ---------------------------------------------------------------- cohorts

/// Which leads a cohort profile covers.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortQuery {
    /// Created from the start of `from` up to the start of `to`.
    pub from: Month,
    pub to: Month,
    pub model: String,
    /// `(attribute, value)`: a declared cohort attribute.
    pub filter: Option<(String, String)>,
    pub buckets: usize,
}

impl CohortQuery {
    /// The aggregate group the query reads: `""` for all leads, or
    /// `name=value`.
    pub fn group(&self) -> String {
        self.filter.as_ref().map(|(n, v)| format!("{n}={v}")).unwrap_or_default()
    }
}

/// What a cohort month counts per group (all leads, or an attribute value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CohortCounter {
    /// Leads now in the stage.
    InStage(Stage),
    /// Leads that ever reached MQL or later.
    ReachedMql,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistogramBucket {
    pub lower: f64,
    pub upper: f64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CohortProfile {
    pub lead_count: u64,
    pub histogram: Vec<HistogramBucket>,
    /// p50, p75, p90, p99 (nearest rank, to the `SCORE_RESOLUTION`).
    pub percentiles: [f64; 4],
    pub min: f64,
    pub max: f64,
    pub by_stage: BTreeMap<Stage, u64>,
    /// Leads that ever reached a stage of `QUALIFIED_STAGES`.
    pub reached_mql: u64,
}

pub const PERCENTILES: [f64; 4] = [0.50, 0.75, 0.90, 0.99];

impl CohortProfile {
    pub fn mql_rate(&self) -> f64 {
        if self.lead_count == 0 { 0.0 } else { self.reached_mql as f64 / self.lead_count as f64 }
    }

    /// From a cohort's aggregates as the stores keep them — its score
    /// distribution (leads per `ScoreBucket`) and its counters, summed over
    /// partitions and months —: every figure is computed here, the same for
    /// every store. O(buckets).
    pub fn from_aggregates(
        distribution: &ScoreDistribution,
        counters: impl IntoIterator<Item = (CohortCounter, i64)>,
        buckets: usize,
    ) -> Self {
        // Summed first, then read: a store may hand the same counter once
        // per partition and month. Saturating: stored counts are data, and
        // data may be corrupt.
        let mut sums: BTreeMap<CohortCounter, i64> = BTreeMap::new();
        for (counter, n) in counters {
            let sum = sums.entry(counter).or_default();
            *sum = sum.saturating_add(n);
        }
        let mut profile = CohortProfile::default();
        for (counter, n) in sums {
            let n = u64::try_from(n).unwrap_or(0);
            match counter {
                CohortCounter::InStage(stage) if n > 0 => {
                    profile.by_stage.insert(stage, n);
                }
                CohortCounter::InStage(_) => {}
                CohortCounter::ReachedMql => profile.reached_mql = n,
            }
        }
        let counts: Vec<(ScoreBucket, u64)> =
            distribution.0.iter().filter(|(_, n)| **n > 0).map(|(b, n)| (*b, *n as u64)).collect();
        profile.lead_count = counts.iter().fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
        let (Some(first), Some(last)) = (counts.first(), counts.last()) else { return profile };
        profile.min = first.0.score();
        profile.max = last.0.score();
        for (slot, p) in profile.percentiles.iter_mut().zip(PERCENTILES) {
            let rank = nearest_rank(p, profile.lead_count);
            let mut seen = 0u64;
            *slot = counts
                .iter()
                .find(|(_, n)| {
                    seen = seen.saturating_add(*n);
                    seen >= rank
                })
                .map_or(profile.max, |(b, _)| b.score());
        }
        let bounds = histogram_bounds(profile.min, profile.max, buckets);
        let bounds_len = bounds.len();
        profile.histogram = bounds
            .into_iter()
            .enumerate()
            .map(|(i, (lower, upper))| {
                let last = i + 1 == bounds_len;
                let count = counts
                    .iter()
                    .filter(|(b, _)| {
                        let s = b.score();
                        s >= lower && (s < upper || (last && s <= upper))
                    })
                    .fold(0u64, |sum, (_, n)| sum.saturating_add(*n));
                HistogramBucket { lower, upper, count }
            })
            .collect();
        profile
    }

    /// From every lead's score, stage and whether it reached MQL: what the
    /// stores' aggregates answer without the list (the tests use this).
    pub fn from_leads(leads: impl IntoIterator<Item = (f64, Stage, bool)>, buckets: usize) -> Self {
        let mut distribution = ScoreDistribution::default();
        let mut counters = Vec::new();
        for (score, stage, reached) in leads {
            distribution.add(ScoreBucket::of(score), 1);
            counters.push((CohortCounter::InStage(stage), 1));
            counters.push((CohortCounter::ReachedMql, i64::from(reached)));
        }
        Self::from_aggregates(&distribution, counters, buckets)
    }
}

/// Where a score counts in a cohort's score distribution: the score rounded
/// to the nearest whole point (`SCORE_RESOLUTION`). Cohort profiles are
/// computed from these counts, so their percentiles, extremes and histogram
/// are exact to the point, whatever the cohort's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScoreBucket(i64);

/// The width of a `ScoreBucket`, in points.
pub const SCORE_RESOLUTION: f64 = 1.0;

/// Scores beyond ± this many points share the outermost buckets.
const SCORE_BUCKET_LIMIT: i64 = 1_000_000_000;

impl ScoreBucket {
    pub fn of(score: f64) -> Self {
        let b = (score / SCORE_RESOLUTION).round();
        // `as` saturates and maps NaN to 0; the clamp keeps every bucket's
        // score exact in an f64.
        Self((b as i64).clamp(-SCORE_BUCKET_LIMIT, SCORE_BUCKET_LIMIT))
    }

    /// The bucket's score: the whole point its scores round to.
    pub fn score(self) -> f64 {
        self.0 as f64 * SCORE_RESOLUTION
    }

    pub fn index(self) -> i64 {
        self.0
    }

    pub fn from_index(index: i64) -> Self {
        Self(index.clamp(-SCORE_BUCKET_LIMIT, SCORE_BUCKET_LIMIT))
    }
}

/// Leads per score bucket of one cohort (model, group): what the stores
/// keep at write time, summed over partitions and months when read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreDistribution(pub BTreeMap<ScoreBucket, i64>);

impl ScoreDistribution {
    pub fn add(&mut self, bucket: ScoreBucket, by: i64) {
        let n = self.0.entry(bucket).or_default();
        *n = n.saturating_add(by);
    }
}

/// The 1-based rank of percentile `p` among `n` values: the smallest rank
/// whose share of the values is at least `p`.
pub fn nearest_rank(p: f64, n: u64) -> u64 {
    ((p * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// Up to `buckets` equal-width buckets with round bounds (a width of 1, 2,
/// 2.5 or 5 times a power of ten) covering `[min, max]`; buckets that would
/// start past `max` are left out.
pub fn histogram_bounds(min: f64, max: f64, buckets: usize) -> Vec<(f64, f64)> {
    if !(min.is_finite() && max.is_finite()) {
        return vec![(min, max)];
    }
    let buckets = buckets.max(1);
    let span = (max - min).max(0.0);
    // At least one score bucket wide: every bucket's scores fall in one bar.
    let raw = (span / buckets as f64).max(SCORE_RESOLUTION);
    // The smallest round width from `raw` up whose buckets, started at a
    // multiple of the width, still reach `max`. From a width of `span` on,
    // two buckets always do; one bucket never does across zero (it would
    // have to start at a multiple of its width below zero and end above):
    // then it is `[min, max]` itself.
    let mut magnitude = 10f64.powf(raw.log10().floor());
    let mut found = None;
    while found.is_none() && magnitude <= raw.max(span) * 10.0 {
        found = [1.0, 2.0, 2.5, 5.0].iter().map(|m| m * magnitude).filter(|w| *w >= raw).find_map(|w| {
            let lower = (min / w).floor() * w;
            (lower + w * buckets as f64 >= max).then_some((w, lower))
        });
        magnitude *= 10.0;
    }
    let Some((width, lower)) = found else { return vec![(round_bound(min), round_bound(max))] };
    // Round widths can leave buckets past `max` at the end: drop them.
    (0..buckets)
        .map(|i| lower + width * i as f64)
        .take_while(|lo| *lo <= max)
        .map(|lo| (round_bound(lo), round_bound(lo + width)))
        .collect()
}

fn round_bound(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

// ---------------------------------------------------------------- funnel

/// Which first-touch property splits a funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FunnelGroupBy {
    Source,
    Channel,
    Campaign,
}

impl FunnelGroupBy {
    pub const ALL: [FunnelGroupBy; 3] = [FunnelGroupBy::Source, FunnelGroupBy::Channel, FunnelGroupBy::Campaign];

    pub fn property(self) -> &'static str {
        match self {
            FunnelGroupBy::Source => "source",
            FunnelGroupBy::Channel => "channel",
            FunnelGroupBy::Campaign => "campaign",
        }
    }
}

/// The value of a first-touch property missing from the first signal.
pub const NO_VALUE: &str = "(none)";
/// The group every funnel entry also counts in.
pub const ALL_GROUP: &str = "*";

/// The first-touch values of a signal: `source`, `channel`, `campaign`
/// properties (control characters replaced), `(none)` when missing.
pub fn first_touch(properties: &BTreeMap<String, String>) -> [String; 3] {
    FunnelGroupBy::ALL.map(|g| {
        properties
            .get(g.property())
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
            .unwrap_or_else(|| NO_VALUE.to_owned())
    })
}

/// The earliest of some signals: its `occurred_at` and first-touch values;
/// of signals at the same instant, the one with the least values (as an
/// attribution journey orders its touches), whatever order they came in.
pub fn earliest_touch<'a>(
    signals: impl IntoIterator<Item = (Timestamp, &'a BTreeMap<String, String>)>,
) -> Option<(Timestamp, [String; 3])> {
    let mut best: Option<(Timestamp, &BTreeMap<String, String>)> = None;
    for (at, properties) in signals {
        let earlier = match best {
            None => true,
            Some((b, _)) if at != b => at < b,
            // Ties only: the values are built to be compared.
            Some((_, kept)) => first_touch(properties) < first_touch(kept),
        };
        if earlier {
            best = Some((at, properties));
        }
    }
    best.map(|(at, properties)| (at, first_touch(properties)))
}

/// The funnel groups a lead with these first-touch values counts in.
pub fn funnel_groups(first_touch: Option<&[String; 3]>) -> Vec<String> {
    let mut groups = vec![ALL_GROUP.to_owned()];
    for (g, value) in FunnelGroupBy::ALL.iter().zip(0..) {
        let value = first_touch.map_or(NO_VALUE, |ft| ft[value].as_str());
        groups.push(format!("{}={value}", g.property()));
    }
    groups
}

/// The log bucket of a duration: 0 under a second, then ×1.1 steps.
pub fn duration_bucket(millis: i64) -> i64 {
    if millis < 1000 { 0 } else { ((millis as f64 / 1000.0).ln() / 1.1f64.ln()).floor() as i64 + 1 }
}

/// A representative duration of a bucket (its geometric middle), ms.
pub fn bucket_millis(bucket: i64) -> i64 {
    if bucket <= 0 { 0 } else { (1000.0 * 1.1f64.powf(bucket as f64 - 0.5)).round() as i64 }
}

/// The position of a stage in `FUNNEL_STAGES` (1-based), 0 for the others.
pub fn funnel_rank(stage: Stage) -> usize {
    FUNNEL_STAGES.iter().position(|s| *s == stage).map_or(0, |i| i + 1)
}

/// The funnel stages a lead passes for the first time when it enters
/// `stage`, having reached `reached` (a funnel rank) before: a lead that
/// jumps from MQL to SQL passed SAL too.
pub fn newly_passed(reached: usize, stage: Stage) -> Vec<Stage> {
    let rank = funnel_rank(stage);
    if rank <= reached { Vec::new() } else { FUNNEL_STAGES[reached..rank].to_vec() }
}

/// One lead entering a stage, as the funnel counts it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelEntry {
    /// Funnel stages this entry passes for the first time (`newly_passed`).
    pub passed: Vec<Stage>,
    pub stage: Stage,
    /// From the lead's creation to the entry.
    pub since_created_ms: i64,
    /// A recycled lead moved forward by new engagement.
    pub reopened: bool,
    /// Won deal amount (with CUSTOMER).
    pub deal_amount: Option<f64>,
}

/// What a day's funnel counts per group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FunnelCounter {
    /// Leads that entered the stage.
    Entered(Stage),
    /// Leads that passed the funnel stage for the first time.
    Passed(Stage),
    /// Entries into the stage by time since creation (`duration_bucket`).
    Duration(Stage, i64),
    /// Recycled leads moved forward by new engagement.
    Reopened,
    /// Won deals.
    Won,
    /// Won revenue.
    Revenue,
    /// Hand-overs to sales decided on (`[sla]`): in time or late.
    Decided { on_time: bool },
    /// Decided hand-overs by wall-clock time from hand-over to decision
    /// (`duration_bucket`): speed to lead.
    SpeedToLead(i64),
    /// Hand-overs whose deadline passed without a decision (on the
    /// deadline's day).
    Breached,
    /// Customers' expansion deals (`expansion`), by kind.
    Expansion(Kind, ExpansionCounter),
}

/// What the funnel counts of expansion deals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExpansionCounter {
    /// Deals opened.
    Opened,
    /// Their amounts when opened (and repriced while open).
    Pipeline,
    Won,
    /// Won amounts.
    Revenue,
    Lost,
}

impl ExpansionCounter {
    pub const ALL: [ExpansionCounter; 5] = [
        ExpansionCounter::Opened,
        ExpansionCounter::Pipeline,
        ExpansionCounter::Won,
        ExpansionCounter::Revenue,
        ExpansionCounter::Lost,
    ];

    pub fn key(self) -> &'static str {
        match self {
            ExpansionCounter::Opened => "opened",
            ExpansionCounter::Pipeline => "pipeline",
            ExpansionCounter::Won => "won",
            ExpansionCounter::Revenue => "revenue",
            ExpansionCounter::Lost => "lost",
        }
    }

    pub fn parse_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.key() == key)
    }
}

/// The funnel counter increments of an expansion deal's event.
pub fn expansion_increments(event: Event) -> Vec<(FunnelCounter, f64)> {
    let units = |micros: i64| micros as f64 / 1e6;
    let c = |kind, counter| FunnelCounter::Expansion(kind, counter);
    match event {
        Event::Opened { kind, micros } => {
            vec![(c(kind, ExpansionCounter::Opened), 1.0), (c(kind, ExpansionCounter::Pipeline), units(micros))]
        }
        Event::Repriced { kind, micros } => vec![(c(kind, ExpansionCounter::Pipeline), units(micros))],
        Event::Won { kind, micros } => {
            vec![(c(kind, ExpansionCounter::Won), 1.0), (c(kind, ExpansionCounter::Revenue), units(micros))]
        }
        Event::Lost { kind } => vec![(c(kind, ExpansionCounter::Lost), 1.0)],
    }
}

/// One kind of expansion over a period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExpansionFigures {
    pub opened: u64,
    pub pipeline: f64,
    pub won: u64,
    pub revenue: f64,
    pub lost: u64,
}

impl ExpansionFigures {
    /// Whether nothing was counted: a deal opened before the period and
    /// won in it counts (won, revenue) without being opened in it.
    pub fn is_empty(&self) -> bool {
        self.opened == 0 && self.won == 0 && self.lost == 0 && self.pipeline == 0.0 && self.revenue == 0.0
    }
}

/// The funnel counters of one decided hand-over: in time or late, and its
/// speed to lead.
pub fn decision_increments(on_time: bool, waited_ms: i64) -> [(FunnelCounter, f64); 2] {
    [(FunnelCounter::Decided { on_time }, 1.0), (FunnelCounter::SpeedToLead(duration_bucket(waited_ms.max(0))), 1.0)]
}

impl FunnelEntry {
    /// The counter increments of this entry (for each of its groups).
    pub fn increments(&self) -> Vec<(FunnelCounter, f64)> {
        let mut out = vec![
            (FunnelCounter::Entered(self.stage), 1.0),
            (FunnelCounter::Duration(self.stage, duration_bucket(self.since_created_ms.max(0))), 1.0),
        ];
        out.extend(self.passed.iter().map(|s| (FunnelCounter::Passed(*s), 1.0)));
        if self.reopened {
            out.push((FunnelCounter::Reopened, 1.0));
        }
        if let Some(amount) = self.deal_amount {
            out.push((FunnelCounter::Won, 1.0));
            out.push((FunnelCounter::Revenue, amount));
        }
        out
    }
}

/// One group's funnel over a period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Funnel {
    pub entered: BTreeMap<Stage, u64>,
    /// Leads that reached a funnel stage (or passed it) for the first time.
    pub passed: BTreeMap<Stage, u64>,
    /// Per stage: duration bucket → entries.
    pub durations: BTreeMap<Stage, BTreeMap<i64, u64>>,
    pub reopened: u64,
    pub won_deals: u64,
    pub won_revenue: f64,
    /// Hand-overs decided in time and late.
    pub handovers_on_time: u64,
    pub handovers_late: u64,
    /// Speed to lead: duration bucket → decided hand-overs.
    pub speed_to_lead: BTreeMap<i64, u64>,
    pub sla_breaches: u64,
    /// Customers' expansion deals by kind (apart from new business).
    pub expansion: BTreeMap<Kind, ExpansionFigures>,
}

/// The `p` quantile (0 < p ≤ 1, nearest rank) of durations kept in
/// `duration_bucket`s, if any.
fn bucket_quantile(buckets: &BTreeMap<i64, u64>, p: f64) -> Option<i64> {
    let n: u64 = buckets.values().sum();
    let mut seen = 0;
    buckets.iter().find_map(|(b, count)| {
        seen += count;
        (seen >= nearest_rank(p, n)).then(|| bucket_millis(*b))
    })
}

impl Funnel {
    pub fn total_entered(&self) -> u64 {
        self.entered.values().sum()
    }

    /// Median time from creation to entering `stage`, if any entered.
    pub fn median_time_to(&self, stage: Stage) -> Option<i64> {
        bucket_quantile(self.durations.get(&stage)?, 0.5)
    }

    /// The `p` quantile of speed to lead, if any hand-over was decided.
    pub fn speed_to_lead(&self, p: f64) -> Option<i64> {
        bucket_quantile(&self.speed_to_lead, p)
    }

    /// The share of decided hand-overs decided in time, if any was.
    pub fn sla_attainment(&self) -> Option<f64> {
        let decided = self.handovers_on_time + self.handovers_late;
        (decided > 0).then(|| self.handovers_on_time as f64 / decided as f64)
    }

    /// Whether anything was counted (counters moved to another group leave
    /// zeros behind).
    pub fn is_empty(&self) -> bool {
        self.total_entered() == 0 && self.sla_breaches == 0 && self.expansion.values().all(ExpansionFigures::is_empty)
    }

    /// Expansion of every kind.
    pub fn expansion_total(&self) -> ExpansionFigures {
        let mut t = ExpansionFigures::default();
        for e in self.expansion.values() {
            t.opened += e.opened;
            t.pipeline += e.pipeline;
            t.won += e.won;
            t.revenue += e.revenue;
            t.lost += e.lost;
        }
        t
    }

    /// `passed(to) / passed(from)` between consecutive `FUNNEL_STAGES`:
    /// of the leads that reached a stage in the period, the share that
    /// reached the next one (skipping counts as passing).
    pub fn conversions(&self) -> Vec<(Stage, Stage, f64)> {
        FUNNEL_STAGES
            .windows(2)
            .map(|w| {
                let from = self.passed.get(&w[0]).copied().unwrap_or(0);
                let to = self.passed.get(&w[1]).copied().unwrap_or(0);
                (w[0], w[1], if from == 0 { 0.0 } else { to as f64 / from as f64 })
            })
            .collect()
    }

    fn add(&mut self, counter: FunnelCounter, by: f64) {
        let count = by.max(0.0).round() as u64;
        match counter {
            FunnelCounter::Entered(stage) => *self.entered.entry(stage).or_default() += count,
            FunnelCounter::Passed(stage) => *self.passed.entry(stage).or_default() += count,
            FunnelCounter::Duration(stage, bucket) => {
                *self.durations.entry(stage).or_default().entry(bucket).or_default() += count
            }
            FunnelCounter::Reopened => self.reopened += count,
            FunnelCounter::Won => self.won_deals += count,
            FunnelCounter::Revenue => self.won_revenue += by,
            FunnelCounter::Decided { on_time: true } => self.handovers_on_time += count,
            FunnelCounter::Decided { on_time: false } => self.handovers_late += count,
            FunnelCounter::SpeedToLead(bucket) => *self.speed_to_lead.entry(bucket).or_default() += count,
            FunnelCounter::Breached => self.sla_breaches += count,
            FunnelCounter::Expansion(kind, counter) => {
                let e = self.expansion.entry(kind).or_default();
                match counter {
                    ExpansionCounter::Opened => e.opened += count,
                    ExpansionCounter::Pipeline => e.pipeline += by,
                    ExpansionCounter::Won => e.won += count,
                    ExpansionCounter::Revenue => e.revenue += by,
                    ExpansionCounter::Lost => e.lost += count,
                }
            }
        }
    }
}

/// Funnels by group, summed from counters (any number of days and
/// partitions).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FunnelCounters {
    pub groups: BTreeMap<String, Funnel>,
}

impl FunnelCounters {
    pub fn add(&mut self, group: &str, counter: FunnelCounter, value: f64) {
        match self.groups.get_mut(group) {
            Some(funnel) => funnel.add(counter, value),
            None => {
                let mut funnel = Funnel::default();
                funnel.add(counter, value);
                self.groups.insert(group.to_owned(), funnel);
            }
        }
    }

    /// The funnel of all leads.
    pub fn total(&self) -> Funnel {
        self.groups.get(ALL_GROUP).cloned().unwrap_or_default()
    }

    /// The funnels of one grouping, by value, most entries first.
    pub fn by(&self, group_by: FunnelGroupBy) -> Vec<(String, Funnel)> {
        let prefix = format!("{}=", group_by.property());
        let mut out: Vec<(String, Funnel)> = self
            .groups
            .iter()
            .filter_map(|(g, f)| Some((g.strip_prefix(&prefix)?.to_owned(), f.clone())))
            .filter(|(_, f)| !f.is_empty())
            .collect();
        out.sort_by(|a, b| b.1.total_entered().cmp(&a.1.total_entered()).then_with(|| a.0.cmp(&b.0)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn months() {
        let nov = Month::of(Timestamp::from_millis(1_763_769_600_000)); // 2025-11-22
        assert_eq!(nov.key(), "202511");
        assert_eq!(nov.start().millis(), 1_761_955_200_000); // 2025-11-01
        assert_eq!(Month::starting_at(nov.start()), Some(nov));
        assert_eq!(Month::starting_at(nov.start().plus_millis(1)), None);
        assert_eq!(nov.next().next().key(), "202601");
        assert_eq!(nov.until(nov.next().next()).count(), 2);
        assert_eq!(Month::of(Timestamp::from_millis(0)).key(), "197001");
    }

    #[test]
    fn nearest_ranks() {
        assert_eq!(nearest_rank(0.5, 10), 5);
        assert_eq!(nearest_rank(0.99, 10), 10);
        assert_eq!(nearest_rank(0.5, 1), 1);
        assert_eq!(nearest_rank(0.9, 0), 1);
    }

    #[test]
    fn histogram_bounds_are_round_and_cover_the_range() {
        let b = histogram_bounds(3.2, 97.5, 10);
        assert_eq!(b.len(), 10);
        assert_eq!(histogram_bounds(23.0, 135.0, 10).len(), 6, "20 wide from 20: six buckets reach 135");
        assert_eq!(histogram_bounds(-10.0, 205.8, 10).len(), 10, "25 wide from -25");
        assert_eq!(b[0], (0.0, 10.0));
        assert_eq!(b[9], (90.0, 100.0));
        let b = histogram_bounds(-12.0, 88.0, 10);
        assert!(b[0].0 <= -12.0 && b[b.len() - 1].1 >= 88.0, "{b:?}");
        assert_eq!(histogram_bounds(-5.0, 5.0, 1), vec![(-5.0, 5.0)], "one bucket across zero");
        assert_eq!(histogram_bounds(0.0, f64::INFINITY, 3).len(), 1, "no endless search");
        assert_eq!(histogram_bounds(-5.0, 5.0, 2), vec![(-5.0, 0.0), (0.0, 5.0)]);
        let one = histogram_bounds(5.0, 5.0, 4);
        assert!(one[0].0 <= 5.0 && one[one.len() - 1].1 >= 5.0);
        for (min, max) in [(0.0, 1e6), (-0.5, 0.49), (17.3, 17.31)] {
            let b = histogram_bounds(min, max, 7);
            assert!(b[0].0 <= min && b[b.len() - 1].1 >= max, "{min} {max} {b:?}");
        }
    }

    #[test]
    fn profile_from_leads() {
        let leads = (1..=100).map(|i| (f64::from(i), if i > 80 { Stage::Mql } else { Stage::Lead }, i > 70));
        let p = CohortProfile::from_leads(leads, 10);
        assert_eq!(p.lead_count, 100);
        assert_eq!(p.percentiles, [50.0, 75.0, 90.0, 99.0]);
        assert_eq!(p.by_stage[&Stage::Mql], 20);
        assert_eq!(p.mql_rate(), 0.3);
        assert_eq!(p.histogram.iter().map(|b| b.count).sum::<u64>(), 100);
        let empty = CohortProfile::from_leads(Vec::new(), 10);
        assert_eq!((empty.lead_count, empty.histogram.len(), empty.mql_rate()), (0, 0, 0.0));
    }

    #[test]
    fn score_buckets_round_to_the_point() {
        assert_eq!(ScoreBucket::of(42.49).score(), 42.0);
        assert_eq!(ScoreBucket::of(42.5).score(), 43.0);
        assert_eq!(ScoreBucket::of(-3.6).score(), -4.0);
        assert_eq!(ScoreBucket::of(f64::NAN).score(), 0.0);
        assert_eq!(ScoreBucket::of(f64::INFINITY), ScoreBucket::of(1e300));
        assert_eq!(ScoreBucket::from_index(ScoreBucket::of(-17.2).index()), ScoreBucket::of(-17.0));
    }

    #[test]
    fn corrupt_aggregates_answer_without_panicking() {
        let mut d = ScoreDistribution::default();
        d.add(ScoreBucket::of(10.0), i64::MAX);
        d.add(ScoreBucket::of(20.0), i64::MAX);
        d.add(ScoreBucket::of(30.0), -5);
        let counters = [(CohortCounter::ReachedMql, i64::MAX), (CohortCounter::ReachedMql, 1)];
        let p = CohortProfile::from_aggregates(&d, counters, 10);
        assert_eq!((p.lead_count, p.max), (u64::MAX - 1, 20.0));
        // Per-partition counters that only add up to a count: summed first.
        let split = [(CohortCounter::InStage(Stage::Mql), 3), (CohortCounter::InStage(Stage::Mql), -1)];
        assert_eq!(CohortProfile::from_aggregates(&d, split, 10).by_stage[&Stage::Mql], 2);
    }

    proptest::proptest! {
        /// The earliest touch of some signals does not depend on their
        /// order, ties at the same instant included, and is the first a
        /// journey keeps.
        #[test]
        fn the_earliest_touch_whatever_the_order(signals in proptest::collection::vec((0i64..4, 0usize..3), 1..8)) {
            let props: Vec<(Timestamp, BTreeMap<String, String>)> = signals
                .iter()
                .map(|(at, c)| (Timestamp::from_millis(*at), [("campaign".to_owned(), ["a", "b", ""][*c].to_owned())].into()))
                .collect();
            let forward = earliest_touch(props.iter().map(|(at, p)| (*at, p)));
            let backward = earliest_touch(props.iter().rev().map(|(at, p)| (*at, p)));
            proptest::prop_assert_eq!(&forward, &backward);
            let mut journey = crate::domain::attribution::Journey::default();
            for (at, p) in &props {
                journey.add_touch(crate::domain::attribution::Touch { at: *at, values: first_touch(p) });
            }
            let first = journey.touches.first().map(|t| (t.at, t.values.clone()));
            proptest::prop_assert_eq!(forward, first);
        }

        /// The distribution answers what sorting every lead's rounded score
        /// answers: nearest-rank percentiles, extremes, bars that add up.
        #[test]
        fn distribution_equals_sorting(scores in proptest::collection::vec(-500.0f64..500.0, 1..300), buckets in 1usize..20) {
            let p = CohortProfile::from_leads(scores.iter().map(|s| (*s, Stage::Lead, false)), buckets);
            let mut rounded: Vec<f64> = scores.iter().map(|s| ScoreBucket::of(*s).score()).collect();
            rounded.sort_by(f64::total_cmp);
            let n = rounded.len() as u64;
            proptest::prop_assert_eq!(p.lead_count, n);
            proptest::prop_assert_eq!((p.min, p.max), (rounded[0], rounded[rounded.len() - 1]));
            for (got, q) in p.percentiles.iter().zip(PERCENTILES) {
                proptest::prop_assert_eq!(*got, rounded[(nearest_rank(q, n) - 1) as usize]);
            }
            proptest::prop_assert_eq!(p.histogram.iter().map(|b| b.count).sum::<u64>(), n);
            for b in &p.histogram {
                let inside = rounded.iter().filter(|s| **s >= b.lower && **s <= b.upper).count() as u64;
                proptest::prop_assert!(b.count <= inside);
            }
        }
    }

    #[test]
    fn funnel_from_counter_fields() {
        let mut counters = FunnelCounters::default();
        let entries = [
            FunnelEntry {
                passed: newly_passed(0, Stage::Lead),
                stage: Stage::Lead,
                since_created_ms: 0,
                reopened: false,
                deal_amount: None,
            },
            FunnelEntry {
                passed: newly_passed(0, Stage::Lead),
                stage: Stage::Lead,
                since_created_ms: 0,
                reopened: false,
                deal_amount: None,
            },
            FunnelEntry {
                passed: newly_passed(1, Stage::Mql),
                stage: Stage::Mql,
                since_created_ms: 2 * DAY,
                reopened: true,
                deal_amount: None,
            },
            FunnelEntry {
                passed: newly_passed(2, Stage::Customer),
                stage: Stage::Customer,
                since_created_ms: 30 * DAY,
                reopened: false,
                deal_amount: Some(1e4),
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            let groups = funnel_groups(Some(&[format!("s{}", i % 2), "email".into(), NO_VALUE.into()]));
            for g in groups {
                for (counter, by) in e.increments() {
                    counters.add(&g, counter, by);
                }
            }
        }
        let total = counters.total();
        assert_eq!(total.entered[&Stage::Lead], 2);
        assert_eq!(total.reopened, 1);
        assert_eq!((total.won_deals, total.won_revenue), (1, 1e4));
        let conversions = total.conversions();
        assert_eq!(conversions[0], (Stage::Lead, Stage::Mql, 0.5));
        // The customer skipped SAL to OPPORTUNITY: it passed them all.
        assert_eq!(conversions[1], (Stage::Mql, Stage::Sal, 1.0));
        assert_eq!(total.passed[&Stage::Sql], 1);
        assert_eq!(newly_passed(4, Stage::Mql), Vec::<Stage>::new());
        assert_eq!(newly_passed(0, Stage::Recycled), Vec::<Stage>::new());
        let median = total.median_time_to(Stage::Mql).unwrap();
        assert!((median - 2 * DAY).abs() < 2 * DAY / 20, "{median}");
        assert_eq!(total.median_time_to(Stage::Lead), Some(0));
        let by_source = counters.by(FunnelGroupBy::Source);
        assert_eq!(by_source.len(), 2);
        assert_eq!(by_source[0].1.total_entered(), 2);
        assert_eq!(counters.by(FunnelGroupBy::Campaign)[0].0, NO_VALUE);
    }

    #[test]
    fn duration_buckets_are_within_five_percent() {
        for ms in [1_000, 59_000, 3_600_000, DAY, 45 * DAY, 400 * DAY] {
            let back = bucket_millis(duration_bucket(ms));
            assert!((back - ms).abs() as f64 <= ms as f64 * 0.05, "{ms} → {back}");
        }
        assert_eq!(duration_bucket(0), 0);
    }
}
