//! The application layer: one module per use case. Each reads the leads it
//! touches (one round trip), lets the scoring core (`crate::transition`)
//! compute every change, and writes them (one round trip per request: the
//! store groups them by partition). A write lands only if the lead is still
//! at the version it was read at; otherwise the lead is read again and the
//! step computed again (bounded, with jittered back-off). So a stage move
//! is written with the score change that caused it, and fed to the CRM,
//! exactly once.
//!
//! - `ingest`     — recording signals; identifying visitors
//! - `leads`      — reading leads; profile upserts and sales decisions
//! - `rescore`    — simulate and rescore under a rule set
//! - `sweeps`     — firing `inactive(…)` triggers, counting passed follow-up
//!   deadlines (and firing `sla_breached` triggers)
//! - `accounts`   — account upserts, scores and qualification
//! - `profiles`   — score profiles, cohort profiles, the funnel
//! - `spend`      — marketing spend and the campaign report
//! - `feed`       — reading the qualification change feed
//! - `triggers`   — delivering, acknowledging and replaying triggers
//! - `webhooks`   — webhook endpoints' status, dead letters and replays
//! - `audit`      — the audit trail of changes made by hand
//!
//! The API layer reaches the store only through these.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};

use crate::domain::state::{LeadChange, LeadState};
use crate::domain::{LeadId, LeadSnapshot, Stage, Timestamp};
use crate::rules::RuleSet;
use crate::store::Applied;
use crate::transition::{self, Settings};

pub mod accounts;
pub mod audit;
pub mod erasure;
pub mod feed;
mod ingest;
pub mod jobs;
pub mod leads;
pub mod profiles;
mod rescore;
pub mod spend;
mod state;
mod sweeps;
pub mod triggers;
pub mod webhooks;

use jobs::{JobState, RescoreJob};
pub use state::{ActiveRules, Core, ProfileLimits};

/// Why a use case failed: the store could not read or write.
pub use crate::store::StoreError;
pub use ingest::{Identified, LeadBatch, LeadOutcome, identify, record_batches};
pub use leads::{ExpansionError, SetStageError, Upserted, record_expansion, set_stage, upsert_lead};
pub use rescore::{
    RescoreProgress, RuleErrors, Simulation, Transition, rescore, simulate, simulate_now, start_rescore, version_clash,
};
pub use sweeps::{Swept, sweep_due};

/// Attempts before giving up on a lead that keeps changing under us.
const MAX_ATTEMPTS: u32 = 8;

/// What a lead keeps, from the service's configuration.
pub fn settings(state: &Core) -> Settings {
    Settings {
        ingest: state.policy,
        stage_history: state.feed.history_limit,
        score_history: state.profiles.history_limit,
        score_history_age_ms: state.profiles.history_age_ms,
        funnel_retention_ms: state.profiles.funnel_retention_ms,
    }
}

/// Waits a little before attempt `attempt` (1, 2, …): another writer won
/// the lead; a random share of a growing delay keeps retries apart.
async fn back_off(attempt: u32) {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let ceiling_us = 500u64 << attempt.min(8);
    tokio::time::sleep(std::time::Duration::from_micros(h.finish() % ceiling_us + 100)).await;
}

/// Serialises the writes of leads within this replica (striped by lead id),
/// so that concurrent requests on one lead queue instead of retrying. The
/// stripes are taken in ascending order: no deadlock.
async fn lock_leads<'a>(
    state: &'a Core,
    ids: impl IntoIterator<Item = &'a LeadId>,
) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
    use std::hash::{Hash, Hasher};
    let mut stripes: Vec<usize> = ids
        .into_iter()
        .map(|id| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut h);
            (h.finish() % state.commit_locks.len() as u64) as usize
        })
        .collect();
    stripes.sort_unstable();
    stripes.dedup();
    let mut guards = Vec::with_capacity(stripes.len());
    for stripe in stripes {
        guards.push(state.commit_locks[stripe].lock().await);
    }
    guards
}

/// Writes changes; counts the stage changes of those written. Returns which
/// were written.
async fn write(state: &Core, changes: &[LeadChange]) -> Result<Vec<bool>, StoreError> {
    let applied = state.store.apply(changes, &state.feed).await?;
    let fed = changes.iter().zip(&applied).any(|(c, a)| {
        matches!(a, Applied::Written { .. }) && (!c.feed.is_empty() || !c.triggers.is_empty() || c.erase.is_some())
    });
    if fed {
        // Wakes this replica's webhook workers at once (others poll).
        state.fed.send_modify(|n| *n = n.wrapping_add(1));
    }
    Ok(changes
        .iter()
        .zip(applied)
        .map(|(change, applied)| match applied {
            Applied::Written { .. } => {
                state.metrics.stage_changes(&change.feed);
                for c in &change.feed {
                    let by = match &c.cause {
                        crate::domain::Cause::Rule { rule_id } => format!("rule {rule_id}"),
                        crate::domain::Cause::Manual { actor } => format!("{actor} (SetStage)"),
                    };
                    tracing::info!(lead_id = %change.state.lead.lead_id, from = %c.from, to = %c.to, %by, "stage changed");
                }
                true
            }
            Applied::Conflict => false,
        })
        .collect())
}

/// Reads one lead, computes its change with `step` and writes it, until it
/// lands. `step` answers `Ok(None)` when there is nothing to write.
async fn change_one<T>(
    state: &Core,
    lead_id: &LeadId,
    mut step: impl FnMut(Option<LeadState>, Timestamp) -> Result<(Option<LeadChange>, T), StoreError>,
) -> Result<T, StoreError> {
    let _serialised = lock_leads(state, [lead_id]).await;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            back_off(attempt).await;
        }
        let stored = state.store.load(std::slice::from_ref(lead_id)).await?.pop().flatten();
        let (change, answer) = step(stored, state.clock.now())?;
        let Some(change) = change else { return Ok(answer) };
        if write(state, std::slice::from_ref(&change)).await?[0] {
            return Ok(answer);
        }
    }
    Err(kept_changing(lead_id))
}

fn kept_changing(lead_id: &LeadId) -> StoreError {
    StoreError::Unavailable(format!("lead {lead_id} kept changing while it was written; retry"))
}

/// A lead's stage history, newest first.
pub async fn stage_history(
    state: &Core,
    lead_id: &LeadId,
    limit: usize,
) -> Result<Vec<crate::domain::StageChange>, StoreError> {
    let stored = state.store.load(std::slice::from_ref(lead_id)).await?.pop().flatten();
    Ok(stored.map(|s| s.stages.into_iter().take(limit).collect()).unwrap_or_default())
}
