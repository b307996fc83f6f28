//! Where leads live. Role traits — `Leads`, `ChangeFeed`, `TriggerQueue`,
//! `Aggregates`, `Accounts`, `RuleSetVersions`, `Spend`, `Webhooks`, `AuditLog` — each implemented by both
//! stores: Redis (the store of record) and an embedded in-memory store for
//! trying the service without setup. `LeadStore` is all of them, what the
//! application holds. Both pass the same contract tests
//! (`tests/it/contract.rs`). Stores store: every rule is computed by the
//! scoring core (`crate::transition`), never here.

mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryStore;

use crate::domain::AccountId;
use crate::domain::account::AccountProfile;
use crate::domain::attribution::{Credits, Model};
use crate::domain::profiles::{CohortProfile, CohortQuery, FunnelCounters};
use crate::domain::spend::SpendEntry;
use crate::domain::state::{Due, LeadChange, LeadState};
use crate::domain::{Delivery, LeadId, LeadSnapshot, QualificationChange, Timestamp};

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

/// What writing one lead's change did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Written; the ids the feed and the trigger stream gave the change's
    /// entries, in order.
    Written { feed_ids: Vec<String>, trigger_ids: Vec<String> },
    /// The lead was no longer at the version it was read at: nothing of
    /// this change was written.
    Conflict,
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

/// Lead states: load them, apply computed changes atomically, walk them by partition.
#[async_trait]
pub trait Leads: Send + Sync + 'static {
    /// "redis" or "memory", for logs.
    fn kind(&self) -> &'static str;

    /// Succeeds when the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The leads' stored states, in the order asked; `None` for a lead
    /// never written. One round trip, whatever the number of leads.
    async fn load(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadState>>, StoreError>;

    /// Writes each change — the lead's new state, its feed and trigger
    /// entries, its score history entry, its aggregate deltas and index
    /// moves — atomically per lead, if the lead is still at the version it
    /// was read at (`Applied::Conflict` otherwise, nothing of it written).
    /// Leads are independent; changes of one partition go in one step.
    async fn apply(&self, changes: &[LeadChange], feed: &FeedPolicy) -> Result<Vec<Applied>, StoreError>;

    /// The leads, in the order asked; `None` for a lead never seen.
    async fn load_leads(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadSnapshot>>, StoreError> {
        Ok(self.load(ids).await?.into_iter().map(|s| s.map(|s| s.lead)).collect())
    }

    /// Leads of a partition listed in the index `due` at or before
    /// `before`, earliest first (at most `limit`), with their times.
    async fn due_leads(
        &self,
        due: &Due,
        partition: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(LeadId, Timestamp)>, StoreError>;

    /// How many leads of a partition the index `due` lists.
    async fn due_count(&self, due: &Due, partition: u32) -> Result<u64, StoreError>;

    /// How many partitions `lead_ids` walks.
    fn partitions(&self) -> u32;

    /// Every lead id of one partition (for rule simulation and rescoring).
    async fn lead_ids(&self, partition: u32) -> Result<Vec<LeadId>, StoreError>;

    /// A page of one partition's leads created before `before`, oldest
    /// first: `limit` of them after skipping `offset` (retention sweeps).
    async fn leads_created_before(
        &self,
        partition: u32,
        before: Timestamp,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<LeadId>, StoreError>;
}

/// The durable, ordered qualification change feed.
#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Changes after `cursor` (empty: from the oldest kept), at most `limit`.
    async fn list_changes(&self, cursor: &str, limit: usize) -> Result<FeedPage, StoreError>;

    /// The cursor at the current end of the feed (to follow only new changes).
    async fn feed_end(&self) -> Result<String, StoreError>;
}

/// Fired nurture triggers, delivered at least once to consumer groups.
#[async_trait]
pub trait TriggerQueue: Send + Sync + 'static {
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

    /// Moves the group (creating it if need be) to the end of the trigger
    /// stream: it receives only triggers fired from now on. What it had
    /// pending stays pending.
    async fn start_group_at_end(&self, group: &str) -> Result<(), StoreError>;

    /// The lead's fired triggers still kept in the trigger stream, newest
    /// first, among the newest `scan` of its partition (all groups alike).
    async fn lead_triggers(&self, lead: &LeadId, scan: usize) -> Result<Vec<Delivery>, StoreError>;

    /// The group's dead letters, oldest first.
    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Puts dead letters back in line for the group (their delivery count
    /// starts again); returns how many were dead letters.
    async fn replay_dead_letters(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError>;

    /// Counts for a consumer group (metrics).
    async fn trigger_stats(&self, group: &str) -> Result<TriggerStats, StoreError>;
}

/// The aggregates kept at write time: cohorts and the funnel.
#[async_trait]
pub trait Aggregates: Send + Sync + 'static {
    /// The cohort's figures, from the aggregates kept at write time.
    async fn cohort_profile(&self, query: &CohortQuery) -> Result<CohortProfile, StoreError>;

    /// The funnel counters of the UTC days `from_day..to_day`.
    async fn funnel(&self, from_day: i64, to_day: i64) -> Result<FunnelCounters, StoreError>;

    /// The credits under an attribution model of the UTC days
    /// `from_day..to_day`.
    async fn credits(&self, model: Model, from_day: i64, to_day: i64) -> Result<Credits, StoreError>;
}

/// Accounts (ABM): their profiles, lead lists and qualification.
#[async_trait]
pub trait Accounts: Send + Sync + 'static {
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

/// Which content each rule-set version names, for good.
#[async_trait]
pub trait RuleSetVersions: Send + Sync + 'static {
    /// Records that rule-set `version` has content `digest`, unless the
    /// version is already recorded: then returns the recorded digest (the
    /// same or not). Kept for good, so a version names one content across
    /// replicas and restarts.
    async fn claim_rule_set_version(&self, version: &str, digest: &str) -> Result<Option<String>, StoreError>;

    /// The digest recorded for `version`, if any.
    async fn rule_set_version_digest(&self, version: &str) -> Result<Option<String>, StoreError>;

    /// Records `digest` as the rule set the service now runs and returns
    /// the one recorded before (so of several replicas activating the same
    /// rules, one sees a change).
    async fn mark_active_rule_set(&self, digest: &str) -> Result<Option<String>, StoreError>;
}

/// Marketing spend per campaign and UTC day.
#[async_trait]
pub trait Spend: Send + Sync + 'static {
    /// Records each entry, replacing what was recorded for its campaign,
    /// source and channel on its day.
    async fn record_spend(&self, entries: &[SpendEntry]) -> Result<(), StoreError>;

    /// The entries of the UTC days `from_day..to_day`.
    async fn spend(&self, from_day: i64, to_day: i64) -> Result<Vec<SpendEntry>, StoreError>;

    /// Records the currency spend is kept in, unless one is recorded: then
    /// returns that one (the same or not). Kept for good: amounts are
    /// never converted.
    async fn claim_currency(&self, currency: &str) -> Result<Option<String>, StoreError>;

    /// The currency spend is kept in, if any spend was recorded.
    async fn spend_currency(&self) -> Result<Option<String>, StoreError>;
}

/// A webhook event given up on after its attempts (a dead letter), or put
/// back in line by a replay: the body exactly as it was sent.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WebhookLetter {
    /// The `webhook-id`: `change:<change id>` or `trigger:<trigger id>`.
    pub event_id: String,
    pub lead_id: String,
    /// `lead.stage_changed` or `trigger.fired`.
    pub event_type: String,
    /// When the stage changed or the trigger fired (unix ms).
    pub occurred_at_ms: i64,
    /// The JSON body as sent.
    pub body: String,
    /// Attempts made before it was given up on.
    pub attempts: u32,
    /// The last attempt's failure, bounded.
    pub last_error: String,
    /// When it became a dead letter (unix ms).
    pub dead_at_ms: i64,
}

/// Which line of an endpoint's letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetterLine {
    /// Given up on; waiting for a replay.
    Dead,
    /// Replayed; delivered first by the endpoint's next round.
    Replay,
}

/// Where a webhook endpoint stands in the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookPosition {
    /// The change feed cursor after the last change handled.
    pub cursor: String,
    /// When the endpoint first started (unix ms): triggers fired before are
    /// not sent.
    pub since_ms: i64,
}

/// An endpoint's delivery counts, across replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookCounters {
    /// Events the receiver accepted (2xx).
    pub delivered: u64,
    /// Attempts that failed (refused, timed out, unreachable).
    pub failed: u64,
    /// Attempts after an event's first.
    pub retried: u64,
    /// Events given up on, ever.
    pub dead_lettered: u64,
    /// The newest failure, bounded; `""` for none.
    pub last_error: String,
    /// Unix ms of the newest failure and success; 0 for never.
    pub last_error_at_ms: i64,
    pub last_success_at_ms: i64,
}

impl WebhookCounters {
    /// Adds `delta`'s counts; its newest failure and success replace these
    /// when set.
    pub fn add(&mut self, delta: &WebhookCounters) {
        self.delivered += delta.delivered;
        self.failed += delta.failed;
        self.retried += delta.retried;
        self.dead_lettered += delta.dead_lettered;
        if delta.last_error_at_ms > 0 {
            self.last_error.clone_from(&delta.last_error);
            self.last_error_at_ms = delta.last_error_at_ms;
        }
        if delta.last_success_at_ms > 0 {
            self.last_success_at_ms = delta.last_success_at_ms;
        }
    }
}

/// Webhook endpoints' delivery state: the lease that makes one replica at a
/// time deliver an endpoint's events, where it stands in the change feed,
/// its dead letters and its counts.
#[async_trait]
pub trait Webhooks: Send + Sync + 'static {
    /// Takes the endpoint's delivery lease for `holder`, or extends it if
    /// `holder` has it, for `ttl_ms`; false when another holder has it.
    async fn webhook_lease(&self, endpoint: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError>;

    /// Gives the lease up, if `holder` has it.
    async fn release_webhook_lease(&self, endpoint: &str, holder: &str) -> Result<(), StoreError>;

    /// `None` before the endpoint's first start.
    async fn webhook_position(&self, endpoint: &str) -> Result<Option<WebhookPosition>, StoreError>;

    async fn set_webhook_position(&self, endpoint: &str, position: &WebhookPosition) -> Result<(), StoreError>;

    /// Makes events dead letters (a replayed one leaves the replay line).
    async fn park_webhook_letters(&self, endpoint: &str, letters: &[WebhookLetter]) -> Result<(), StoreError>;

    /// A line's letters, oldest first.
    async fn webhook_letters(
        &self,
        endpoint: &str,
        line: LetterLine,
        limit: usize,
    ) -> Result<Vec<WebhookLetter>, StoreError>;

    /// How many letters each line holds: (dead, replay).
    async fn webhook_letter_counts(&self, endpoint: &str) -> Result<(u64, u64), StoreError>;

    /// Moves dead letters to the replay line; returns how many were dead
    /// letters. Unknown ids are ignored.
    async fn replay_webhook_letters(&self, endpoint: &str, event_ids: &[String]) -> Result<u64, StoreError>;

    /// Forgets replayed letters once delivered.
    async fn drop_webhook_letters(&self, endpoint: &str, event_ids: &[String]) -> Result<(), StoreError>;

    /// Deletes every letter (dead or replayed) of these leads or erased
    /// leads' references; returns how many.
    async fn forget_webhook_letters(&self, endpoint: &str, lead_ids: &[String]) -> Result<u64, StoreError>;

    /// Adds `delta`'s counts; its newest failure and success replace the
    /// stored ones when set.
    async fn add_webhook_counters(&self, endpoint: &str, delta: &WebhookCounters) -> Result<(), StoreError>;

    async fn webhook_counters(&self, endpoint: &str) -> Result<WebhookCounters, StoreError>;
}

/// A page of the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// Oldest first, each with its id (a cursor to resume after it).
    pub events: Vec<(String, crate::domain::audit::AuditEvent)>,
    /// Where the next page starts; the request's cursor when empty.
    pub next_cursor: String,
}

/// The append-only audit trail.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Appends events; drops those from before `keep_after_ms` (unix ms).
    async fn append_audit(
        &self,
        events: &[crate::domain::audit::AuditEvent],
        keep_after_ms: i64,
    ) -> Result<(), StoreError>;

    /// Events after `cursor` (empty: from the oldest kept), at most `limit`.
    async fn list_audit(&self, cursor: &str, limit: usize) -> Result<AuditPage, StoreError>;

    /// Deletes every event that mentions one of `ids`
    /// (`AuditEvent::mentions`); returns how many.
    async fn forget_audit(&self, ids: &[String]) -> Result<u64, StoreError>;
}

/// A whole store: every role. Implemented for anything that plays them all.
pub trait LeadStore:
    Leads + ChangeFeed + TriggerQueue + Aggregates + Accounts + RuleSetVersions + Spend + Webhooks + AuditLog
{
}

impl<T> LeadStore for T where
    T: Leads + ChangeFeed + TriggerQueue + Aggregates + Accounts + RuleSetVersions + Spend + Webhooks + AuditLog
{
}
