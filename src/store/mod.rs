//! Where leads live. One trait, two stores: Redis (the store of record) and
//! an embedded in-memory store for trying the service without setup. Both
//! pass the same contract tests (`tests/it/contract.rs`).

mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryStore;

use crate::domain::{IngestPolicy, LeadId, LeadProfile, LeadSnapshot, ScoredSignal, SignalStatus, Timestamp};

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
    #[error("store error: {0}")]
    Internal(String),
}

/// Signals for one lead, in arrival order.
#[derive(Debug, Clone)]
pub struct LeadBatch {
    pub lead_id: LeadId,
    pub signals: Vec<ScoredSignal>,
}

/// What recording a `LeadBatch` did, and the lead afterwards.
#[derive(Debug, Clone)]
pub struct LeadOutcome {
    /// One per signal of the batch, in order.
    pub statuses: Vec<SignalStatus>,
    pub lead: LeadSnapshot,
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
}
