//! Where leads live. One trait, two stores: Redis (the store of record) and
//! an embedded in-memory store for trying the service without setup. Both
//! pass the same contract tests (`tests/it/contract.rs`).

mod memory;
pub mod redis;
mod spec;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryStore;
pub use spec::ProfileSpec;

use crate::domain::AccountId;
use crate::domain::account::AccountProfile;
use crate::domain::ledger::HistoryEntry;
use crate::domain::profiles::{CohortProfile, CohortQuery, FunnelCounters, ScoreHistoryEntry};
use crate::domain::{
    Delivery, IngestPolicy, LeadId, LeadProfile, LeadSnapshot, QualificationChange, ScoredSignal, SignalStatus, Stage,
    StageChange, Timestamp, TriggerFire,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing store cannot be reached; the caller may retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    /// A lead's stored data cannot be decoded (e.g. edited by hand).
    #[error("stored data of lead '{lead_id}' is unreadable: {detail}")]
    Corrupt { lead_id: String, detail: String },
    /// A feed cursor this store did not issue.
    #[error("invalid cursor: {0}")]
    BadCursor(String),
    #[error("store error: {0}")]
    Internal(String),
}

/// What an attempt to change a lead's stage did.
#[derive(Debug, Clone, PartialEq)]
pub enum StageUpdate {
    /// Applied; the changes as the feed holds them, in order, and the ids
    /// of the triggers fired.
    Applied {
        changes: Vec<QualificationChange>,
        triggers: Vec<String>,
    },
    /// The lead was no longer in the expected stage; nothing was written.
    Conflict {
        current: Stage,
    },
    NotFound,
}

/// How long stage history and the change feed are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPolicy {
    /// Stage changes kept per lead (newest first).
    pub history_limit: usize,
    /// Changes older than this may be trimmed from the feed.
    pub retention_ms: i64,
    /// Triggers older than this may be trimmed from the trigger stream.
    pub trigger_retention_ms: i64,
}

/// A lead as read for the read-compute-commit ingest path.
#[derive(Debug, Clone)]
pub struct CommitRead {
    /// `None`: never seen.
    pub lead: Option<LeadSnapshot>,
    /// The batch's event ids already recorded within the dedupe window,
    /// with when they were recorded.
    pub seen: Vec<(String, Timestamp)>,
}

/// Everything a batch of signals does to one lead, computed outside the
/// store, written in one atomic step if the lead is still as it was read.
#[derive(Debug, Clone)]
pub struct CommitPlan {
    /// The lead afterwards: its tallies, day counters, recorded count and
    /// last engagement are written.
    pub lead: LeadSnapshot,
    /// `None` when the lead is new (it must still not exist); otherwise
    /// the (recorded count, stage) it was read with.
    pub expected: Option<(u64, Stage)>,
    pub initial_stage: Stage,
    /// Newly recorded signals, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Whether a counted signal arrived (the inactivity indexes move).
    pub engaged: bool,
    pub watch_inactivity: std::sync::Arc<[String]>,
    /// Triggers the signals fire (cooldowns checked when written).
    pub fires: Vec<TriggerFire>,
    /// Stage changes the rules make, and the triggers each fires.
    pub changes: Vec<StageChange>,
    pub change_fires: Vec<Vec<TriggerFire>>,
    pub now: Timestamp,
    /// The score history entry's cause when counted signals changed the
    /// score (`None`: they did not).
    pub score_cause: Option<String>,
}

/// How triggers are redelivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// A trigger delivered but not acknowledged for this long goes to
    /// another consumer of the group.
    pub visibility_timeout_ms: i64,
    /// After this many deliveries without an ack, a trigger goes to the
    /// group's dead letters instead.
    pub max_deliveries: u64,
}

/// Where a consumer group stands, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TriggerStats {
    /// Triggers ever fired (all groups see the same).
    pub fired: u64,
    /// Triggers the group has read at least once.
    pub delivered: u64,
    /// Delivered and not acknowledged yet (dead letters excluded).
    pub pending: u64,
    pub dead_letters: u64,
    /// Acknowledgements, ever.
    pub acked: u64,
    /// Deliveries after the first (after a visibility timeout), ever.
    pub redelivered: u64,
}

/// A page of the qualification change feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedPage {
    /// Oldest first; a lead's changes always in the order they happened.
    pub changes: Vec<QualificationChange>,
    /// Where the next page starts; equals the request's cursor when empty.
    pub next_cursor: String,
}

/// Signals for one lead, in arrival order.
#[derive(Debug, Clone)]
pub struct LeadBatch {
    pub lead_id: LeadId,
    pub signals: Vec<ScoredSignal>,
    /// The stage the lead gets if this batch creates it.
    pub initial_stage: Stage,
    /// `inactive(…)` trigger definitions whose index a counted signal
    /// (re)enters the lead in.
    pub watch_inactivity: std::sync::Arc<[String]>,
}

impl LeadBatch {
    /// A batch for `lead_id`, which starts as `ANONYMOUS` if it is a visitor
    /// and as `LEAD` otherwise.
    pub fn new(lead_id: LeadId, signals: Vec<ScoredSignal>) -> Self {
        let initial_stage = if lead_id.visitor().is_some() { Stage::Anonymous } else { Stage::Lead };
        Self { lead_id, signals, initial_stage, watch_inactivity: std::sync::Arc::from(Vec::new()) }
    }

    pub fn watching(mut self, definitions: std::sync::Arc<[String]>) -> Self {
        self.watch_inactivity = definitions;
        self
    }
}

/// What recording a `LeadBatch` did, and the lead afterwards.
#[derive(Debug, Clone)]
pub struct LeadOutcome {
    /// One per signal of the batch, in order.
    pub statuses: Vec<SignalStatus>,
    pub lead: LeadSnapshot,
    /// The batch was for a visitor already identified as this lead: nothing
    /// was written, and the signals belong to that lead.
    pub merged_into: Option<LeadId>,
}

/// What marking a visitor as identified did.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentifyMark {
    /// Marked (or already marked as this lead): its signals now go there.
    Marked,
    /// The visitor was identified as another lead before.
    AlreadyIdentified(LeadId),
    NotFound,
}

/// An account as stored: its profile (if upserted), its leads and whether
/// it qualified.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAccount {
    /// `None` until `UpsertAccount`.
    pub attributes: Option<std::collections::BTreeMap<String, String>>,
    /// Leads that named the account in their last upsert. May briefly hold
    /// a lead that moved away (readers check the lead's own account id).
    pub lead_ids: Vec<LeadId>,
    /// The account rule that first qualified it, and when.
    pub qualified: Option<(String, Timestamp)>,
}

#[async_trait]
pub trait LeadStore: Send + Sync + 'static {
    /// "redis" or "memory", for logs.
    fn kind(&self) -> &'static str;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates the lead or replaces its profile; returns the stored lead.
    async fn upsert_lead(&self, profile: LeadProfile, now: Timestamp) -> Result<LeadSnapshot, StoreError>;

    /// Records each batch atomically per lead (a lead never shows half a
    /// batch). Leads are independent: a failure part-way may leave some
    /// leads recorded, and replaying the call is safe (duplicates are
    /// recognised by `event_id`). Creates leads never seen before.
    async fn record_signals(
        &self,
        batches: Vec<LeadBatch>,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> Result<Vec<LeadOutcome>, StoreError>;

    /// The leads, in the order asked; `None` for a lead never seen.
    async fn load_leads(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadSnapshot>>, StoreError>;

    /// Moves the lead through `changes` (in order) if its stage is still
    /// `expected`, recording each in its stage history and in the change
    /// feed, and firing each change's triggers (`fires[i]` for `changes[i]`;
    /// one whose cooldown for this lead still runs is skipped) — all
    /// atomically. Otherwise writes nothing.
    async fn change_stage(
        &self,
        lead_id: &LeadId,
        expected: Stage,
        changes: &[StageChange],
        fires: &[Vec<TriggerFire>],
        policy: &FeedPolicy,
    ) -> Result<StageUpdate, StoreError>;

    /// Marks the visitor subject as identified as `lead`: from then on its
    /// signals are refused with `merged_into` (see `LeadOutcome`).
    async fn mark_identified(&self, visitor: &LeadId, lead: &LeadId) -> Result<IdentifyMark, StoreError>;

    /// The lead's stage changes, newest first.
    async fn stage_history(&self, lead_id: &LeadId, limit: usize) -> Result<Vec<StageChange>, StoreError>;

    /// Changes after `cursor` (empty: from the oldest kept), at most `limit`.
    async fn list_changes(&self, cursor: &str, limit: usize) -> Result<FeedPage, StoreError>;

    /// The cursor at the current end of the feed (to follow only new changes).
    async fn feed_end(&self) -> Result<String, StoreError>;

    /// Hands `consumer` of consumer group `group` up to `max` triggers:
    /// first those delivered (to any consumer of the group) and not
    /// acknowledged within the visibility timeout, then new ones. Each
    /// group gets every trigger; within a group each goes to one consumer
    /// at a time. A trigger already delivered `max_deliveries` times goes to
    /// the group's dead letters instead.
    async fn deliver_triggers(
        &self,
        group: &str,
        consumer: &str,
        max: usize,
        policy: &DeliveryPolicy,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Acknowledges triggers (delivered or dead-lettered) for a group;
    /// returns how many were pending. Unknown ids are ignored.
    async fn ack_triggers(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError>;

    /// Triggers delivered to `consumer` and not yet acknowledged.
    async fn triggers_in_flight(&self, group: &str, consumer: &str) -> Result<u64, StoreError>;

    /// A mark of the newest trigger of every partition: it changes whenever
    /// a trigger is fired, on any replica. One cheap read for all waiting
    /// consumers of a replica, instead of each polling every partition.
    async fn trigger_heads(&self) -> Result<Vec<String>, StoreError>;

    /// The group's dead letters, oldest first.
    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Puts dead letters back in line for the group (their delivery count
    /// starts again); returns how many were dead letters.
    async fn replay_dead_letters(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError>;

    /// Counts for a consumer group (metrics).
    async fn trigger_stats(&self, group: &str) -> Result<TriggerStats, StoreError>;

    /// Leads of a partition, engaged last before `before`, that have not had
    /// the inactivity trigger `definition` since (at most `limit`).
    async fn inactive_leads(
        &self,
        definition: &str,
        partition: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<LeadId>, StoreError>;

    /// Fires an inactivity trigger (`fire`; `None` when its condition did
    /// not hold) if the lead is still as it was read: no counted signal
    /// since `engaged_at`, the trigger not fired since, its cooldown over.
    /// Either way the lead leaves the definition's index until its next
    /// counted signal. Returns whether it fired.
    async fn fire_inactivity(
        &self,
        lead_id: &LeadId,
        engaged_at: Timestamp,
        definition: &str,
        fire: Option<&TriggerFire>,
        policy: &FeedPolicy,
    ) -> Result<bool, StoreError>;

    /// Reads a lead and which of `event_ids` it recorded since
    /// `seen_since`.
    async fn read_for_commit(
        &self,
        lead_id: &LeadId,
        event_ids: &[String],
        seen_since: Timestamp,
    ) -> Result<CommitRead, StoreError>;

    /// Writes `plan` if the lead is still as it was read (and is not an
    /// identified visitor). Returns whether it did.
    async fn commit(&self, plan: &CommitPlan, policy: &IngestPolicy, feed: &FeedPolicy) -> Result<bool, StoreError>;

    /// How many partitions `lead_ids` walks.
    fn partitions(&self) -> u32;

    /// Every lead id of one partition (for rule simulation and rescoring).
    async fn lead_ids(&self, partition: u32) -> Result<Vec<LeadId>, StoreError>;

    /// Each lead's raw signal history, newest first.
    async fn signal_histories(&self, ids: &[LeadId]) -> Result<Vec<Vec<HistoryEntry>>, StoreError>;

    /// Replaces the lead's tallies, day counters and last engagement with
    /// `rebuilt`'s, if it still has `rebuilt.recorded` signals (no signal
    /// arrived meanwhile). Returns whether it did.
    /// The score history gets a `rescore:<version>` entry.
    async fn replace_tallies(&self, rebuilt: &LeadSnapshot, now: Timestamp) -> Result<bool, StoreError>;

    /// After a rule change: brings the lead's stored fit scores and its
    /// cohort aggregates up to the active rule set, with a
    /// `rescore:<version>` score history entry if its fit changed.
    async fn refresh_fit(&self, lead: &LeadSnapshot, now: Timestamp) -> Result<(), StoreError>;

    /// Activates what a (re)loaded rule set says about score profiles and
    /// cohort aggregates; every later write follows it.
    fn set_profile_spec(&self, spec: std::sync::Arc<ProfileSpec>);

    /// Records that rule-set `version` has content `digest`, unless the
    /// version is already recorded: then returns the recorded digest (the
    /// same or not). Kept for good, so a version names one content across
    /// replicas and restarts.
    async fn claim_rule_set_version(&self, version: &str, digest: &str) -> Result<Option<String>, StoreError>;

    /// The digest recorded for `version`, if any.
    async fn rule_set_version_digest(&self, version: &str) -> Result<Option<String>, StoreError>;

    /// The lead's score history, newest first, without entries older than
    /// the spec's history age at `now`.
    async fn score_history(
        &self,
        lead_id: &LeadId,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<ScoreHistoryEntry>, StoreError>;

    /// The cohort's figures, from the aggregates kept at write time.
    async fn cohort_profile(&self, query: &CohortQuery) -> Result<CohortProfile, StoreError>;

    /// The funnel counters of the UTC days `from_day..to_day`.
    async fn funnel(&self, from_day: i64, to_day: i64) -> Result<FunnelCounters, StoreError>;

    /// Creates the account or replaces its attributes.
    async fn upsert_account(&self, account: &AccountProfile) -> Result<(), StoreError>;

    /// `None` for an account never upserted and named by no lead.
    async fn load_account(&self, account_id: &AccountId) -> Result<Option<StoredAccount>, StoreError>;

    /// Forgets leads listed under the account that now belong elsewhere.
    async fn drop_account_leads(&self, account_id: &AccountId, lead_ids: &[LeadId]) -> Result<(), StoreError>;

    /// Records that the account qualified by `rule_id` at `at`, unless it
    /// already had; returns whether this call did.
    async fn mark_account_qualified(
        &self,
        account_id: &AccountId,
        rule_id: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError>;
}
