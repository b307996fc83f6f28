//! A lead's whole stored state, and the change one step of the lifecycle
//! makes to it and to the aggregates around it. The scoring core (`transition`)
//! computes both; the stores only keep the state and apply the change
//! atomically (if the lead is still at the version it was read at).

use std::collections::{BTreeMap, VecDeque};

use super::attribution::{CreditCounter, Journey, Model};
use super::profiles::{CohortCounter, FunnelCounter, ModelScore, Month, ScoreBucket, ScoreHistoryEntry};
use super::sla::Pending;
use super::{AccountId, FiredTrigger, LeadId, LeadLedger, LeadSnapshot, Stage, StageChange, Timestamp, Tombstone};

/// The earliest signal's `occurred_at` and its source, channel, campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstTouch {
    pub at: Timestamp,
    pub values: [String; 3],
}

/// Where a lead counts in the cohort aggregates, as of its last change.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortPlace {
    pub month: Month,
    pub stage: Stage,
    pub reached_mql: bool,
    /// `""` (all leads) and `name=value` per declared cohort attribute.
    pub groups: Vec<String>,
    /// Every model's score as of the last change, primary first.
    pub scores: Vec<ModelScore>,
}

impl CohortPlace {
    /// Whether the lead counts in the same counters (scores aside).
    pub fn same_counters(&self, other: &CohortPlace) -> bool {
        self.month == other.month
            && self.stage == other.stage
            && self.reached_mql == other.reached_mql
            && self.groups == other.groups
            && self.scores.iter().map(|s| &s.model).eq(other.scores.iter().map(|s| &s.model))
    }

    /// Where the place counts the lead in the score distributions: per
    /// group, each model's (model, group, bucket).
    pub fn score_buckets(&self) -> impl Iterator<Item = (&str, &str, ScoreBucket)> + '_ {
        self.groups.iter().flat_map(move |group| {
            self.scores.iter().map(move |s| (s.model.as_str(), group.as_str(), ScoreBucket::of(s.total())))
        })
    }
}

/// Everything kept about one lead.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadState {
    pub lead: LeadSnapshot,
    /// Changes written so far: the compare-and-set token. 0 for a lead
    /// never written.
    pub version: u64,
    /// Event ids within the dedupe window and the bounded raw history.
    pub ledger: LeadLedger,
    /// Stage changes, newest first, bounded.
    pub stages: VecDeque<StageChange>,
    /// `None` for visitors, identified visitors, and leads never placed.
    pub cohort: Option<CohortPlace>,
    pub first_touch: Option<FirstTouch>,
    /// The furthest funnel stage reached (`profiles::funnel_rank`).
    pub funnel_reached: usize,
    /// Ever reached MQL or a later sales stage.
    pub reached_mql: bool,
    /// The creation funnel entry, counted before any first touch was known:
    /// moved under the first touch when it arrives.
    pub untouched_creation: Option<(Timestamp, Stage)>,
    /// Score changes, newest first, bounded by count and age.
    pub score_history: VecDeque<ScoreHistoryEntry>,
    /// Touches, stages reached and deals won, for multi-touch attribution.
    pub journey: Journey,
    /// Handed over to sales (became an MQL under a follow-up agreement)
    /// and not decided on yet.
    pub handover: Option<Pending>,
    /// The customer's expansion deals, newest first, at most
    /// `expansion::MAX_KEPT`.
    pub expansion: Vec<super::expansion::Deal>,
    /// What the lead added to the day-keyed aggregates: what erasing it
    /// takes back.
    pub contributions: Contributions,
    /// Identified visitors merged into this lead, newest first, at most
    /// `MAX_VISITORS`: erased with it.
    pub visitors: Vec<LeadId>,
}

/// Identified visitors a lead remembers (for erasure).
pub const MAX_VISITORS: usize = 100;

/// Below this, a funnel counter's float sum is zero.
const ZERO: f64 = 1e-9;

/// A lead's own net share of the aggregates kept by day — funnel counters
/// and attribution credits — for as long as those days are kept: erasing
/// the lead takes exactly this back, so each aggregate equals a recount
/// without it. (Cohort counters need no such record: a lead counts in
/// exactly its current `CohortPlace`.)
#[derive(Debug, Clone, PartialEq)]
pub struct Contributions {
    /// (UTC day, group, counter) → the lead's net increment.
    pub funnel: BTreeMap<(i64, String, FunnelCounter), f64>,
    /// (UTC day, model, group, counter) → the lead's net credit, kept only
    /// once its journey is settled (`credits_kept`); until then its credit
    /// is exactly a recount from its journey (`attribution::credits_of`).
    pub credits: BTreeMap<(i64, Model, String, CreditCounter), i64>,
    pub credits_kept: bool,
    /// Kept since the lead was created: `false` for a lead first written
    /// by a release that did not keep them (its erasure takes back only
    /// what was kept since).
    pub complete: bool,
}

impl Default for Contributions {
    fn default() -> Self {
        Self { funnel: BTreeMap::new(), credits: BTreeMap::new(), credits_kept: false, complete: true }
    }
}

impl Contributions {
    /// Adds a delta the lead makes (cohort deltas are not kept).
    pub fn add(&mut self, delta: &AggregateDelta) {
        match delta {
            AggregateDelta::Funnel { day, group, counter, by, .. } => {
                let key = (*day, group.clone(), *counter);
                let sum = self.funnel.get(&key).copied().unwrap_or(0.0) + by;
                if sum.abs() < ZERO {
                    self.funnel.remove(&key);
                } else {
                    self.funnel.insert(key, sum);
                }
            }
            AggregateDelta::Credit { .. } if !self.credits_kept => {}
            AggregateDelta::Credit { day, model, group, counter, by, .. } => {
                let key = (*day, *model, group.clone(), *counter);
                let sum = self.credits.get(&key).copied().unwrap_or(0).saturating_add(*by);
                if sum == 0 {
                    self.credits.remove(&key);
                } else {
                    self.credits.insert(key, sum);
                }
            }
            AggregateDelta::CohortCount { .. } | AggregateDelta::CohortScore { .. } => {}
        }
    }

    /// Forgets the days whose counters are dropped by `now` (kept
    /// `retention_ms` after their day).
    pub fn prune(&mut self, now: Timestamp, retention_ms: i64) {
        let first_kept = first_kept_day(now, retention_ms);
        self.funnel.retain(|(day, ..), _| *day >= first_kept);
        self.credits.retain(|(day, ..), _| *day >= first_kept);
    }

    /// The deltas that take every contribution back: the funnel shares
    /// kept, and the credit shares kept or, before the journey settled,
    /// the credit its journey gives.
    pub fn reversal(&self, journey: &Journey, now: Timestamp, retention_ms: i64) -> Vec<AggregateDelta> {
        let first_kept = first_kept_day(now, retention_ms);
        let funnel =
            self.funnel.iter().filter(|((day, ..), _)| *day >= first_kept).map(|((day, group, counter), by)| {
                AggregateDelta::Funnel {
                    day: *day,
                    group: group.clone(),
                    counter: *counter,
                    by: -by,
                    expires: day_expires(*day, retention_ms),
                }
            });
        let given: BTreeMap<(i64, Model, String, CreditCounter), i64> = if self.credits_kept {
            self.credits.clone()
        } else {
            let mut given = BTreeMap::new();
            for d in super::attribution::credits_of(journey) {
                let group = super::attribution::credit_group(d.group_by, &d.value);
                *given.entry((d.day, d.model, group, d.counter)).or_insert(0) += d.by;
            }
            given
        };
        let credits = given.into_iter().filter(|((day, ..), by)| *day >= first_kept && *by != 0).map(
            |((day, model, group, counter), by)| AggregateDelta::Credit {
                day,
                model,
                group,
                counter,
                by: -by,
                expires: day_expires(day, retention_ms),
            },
        );
        funnel.chain(credits).collect()
    }

    /// How many counters the lead has a share in.
    pub fn len(&self) -> usize {
        self.funnel.len() + self.credits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// When a UTC day's funnel counters and credits may be dropped.
pub fn day_expires(day: i64, retention_ms: i64) -> Timestamp {
    Timestamp::from_millis((day + 1) * 86_400_000 + retention_ms)
}

/// The oldest UTC day whose counters are still kept at `now`.
fn first_kept_day(now: Timestamp, retention_ms: i64) -> i64 {
    // Day d is kept while now < (d + 1) * DAY + retention.
    (now.millis() - retention_ms).div_euclid(86_400_000)
}

impl LeadState {
    /// A lead never written.
    pub fn new(lead: LeadSnapshot) -> Self {
        Self {
            lead,
            version: 0,
            ledger: LeadLedger::default(),
            stages: VecDeque::new(),
            cohort: None,
            first_touch: None,
            funnel_reached: 0,
            reached_mql: false,
            untouched_creation: None,
            score_history: VecDeque::new(),
            journey: Journey::default(),
            handover: None,
            expansion: Vec::new(),
            contributions: Contributions::default(),
            visitors: Vec::new(),
        }
    }
}

/// A change to an aggregate kept beside the leads.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateDelta {
    /// A funnel counter of a group on a UTC day; the day's counters may be
    /// dropped after `expires`.
    Funnel { day: i64, group: String, counter: FunnelCounter, by: f64, expires: Timestamp },
    /// A cohort month's counter of a group.
    CohortCount { month: Month, group: String, counter: CohortCounter, by: i64 },
    /// Leads in a score bucket of a cohort month's (model, group)
    /// distribution: +1 where a lead's score now counts, -1 where it did.
    CohortScore { month: Month, model: String, group: String, bucket: ScoreBucket, by: i64 },
    /// The credit of a funnel group (`campaign=…`) under an attribution
    /// model on a UTC day (millionths of a lead, or micros of revenue); the
    /// day's credits may be dropped after `expires`.
    Credit { day: i64, model: Model, group: String, counter: CreditCounter, by: i64, expires: Timestamp },
}

/// A per-partition index of leads by the instant something falls due for
/// them: the sweeps read it instead of scanning leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Due {
    /// An `inactive(…)` trigger definition: leads by last engagement.
    Inactivity(String),
    /// Hand-overs waiting for sales, by when they were handed over.
    Waiting,
    /// Hand-overs not yet past their deadline, by deadline.
    Deadline,
}

/// Everything one step does: written in one atomic step per lead.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadChange {
    /// The version the lead was read at (0: it must still not exist).
    pub expected_version: u64,
    /// The lead afterwards (`version` = `expected_version + 1`).
    pub state: LeadState,
    /// Appended to the change feed, in order.
    pub feed: Vec<StageChange>,
    /// Appended to the trigger stream, in order.
    pub triggers: Vec<FiredTrigger>,
    pub aggregates: Vec<AggregateDelta>,
    /// (Re)lists the lead in its partition's lead index by this time.
    pub indexed_at: Option<Timestamp>,
    /// Listed in an index by this time (`Some`) or taken off it (`None`).
    pub due: Vec<(Due, Option<Timestamp>)>,
    /// The account the lead left and the one it joined, when it changed
    /// (or was named again: listing is idempotent).
    pub account: Option<(Option<AccountId>, Option<AccountId>)>,
    /// The lead is erased: its record, its lead-index entry and its
    /// entries in the change feed and trigger stream are deleted, and this
    /// tombstone is appended to the change feed instead of `feed`.
    pub erase: Option<Tombstone>,
}

impl LeadChange {
    pub fn lead(&self) -> &LeadSnapshot {
        &self.state.lead
    }
}
