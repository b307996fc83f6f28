//! Applying the qualification rules to stored leads: after every score or
//! profile change, in the same request.
//!
//! The lead is updated first (one round trip); the rules run on what the
//! store returned; a move, when one is due, is written with a
//! compare-and-set on the stage (a second round trip, only then). Two
//! requests racing on one lead both see the old stage, both compute the
//! move, and only the first write lands: the other finds the stage changed,
//! re-reads the lead and re-evaluates from the new stage. So each move is
//! made, and fed to the CRM, exactly once.
//!
//! - `rescore`    — rebuilding tallies from raw history; simulate; rescore
//! - `ingest`     — the read-compute-commit ingest path; identifying visitors
//! - `inactivity` — the sweep that fires `inactive(…)` triggers

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};

use crate::api::jobs::{JobState, RescoreJob};
use crate::api::{ActiveRules, AppState};
use crate::domain::ledger::HistoryEntry;
use crate::domain::{
    Cause, EventId, FiredTrigger, IngestPolicy, LeadId, LeadLedger, LeadSnapshot, ScoreSnapshot, ScoredSignal,
    SignalStatus, Stage, StageChange, Timestamp, TriggerFire, VisitorId,
};
use crate::rules::RuleSet;
use crate::rules::triggers::TriggerDefinition;
use crate::store::{CommitPlan, IdentifyMark, LeadBatch, LeadOutcome, LeadStore, StageUpdate, StoreError};

pub mod accounts;
mod inactivity;
mod ingest;
mod rescore;

pub use inactivity::{inactivity_watch, sweep_inactivity};
pub use ingest::{Identified, commit_ingest, identify, record_batches};
pub use rescore::{RescoreProgress, RuleErrors, Simulation, Transition, rebuild, rescore, simulate, start_rescore};

/// Attempts before giving up on a lead that keeps changing under us.
const MAX_ATTEMPTS: usize = 5;

/// The rule moves for `lead`, as stage changes stamped with the score.
pub fn rule_changes(rules: &ActiveRules, lead: &LeadSnapshot, now: Timestamp) -> Vec<StageChange> {
    let moves =
        tracing::info_span!("rules.evaluate", rule_set = %rules.set.version).in_scope(|| rules.qualify(lead, now));
    if moves.is_empty() {
        return Vec::new();
    }
    let score = ScoreSnapshot::of(&rules.primary().score(lead, now));
    let mut from = lead.stage;
    moves
        .into_iter()
        .map(|m| {
            let reason =
                rules.qualification.iter().find(|r| r.id == m.rule_id).map(|r| r.when.clone()).unwrap_or_default();
            let change = StageChange {
                from,
                to: m.to,
                cause: Cause::Rule { rule_id: m.rule_id },
                reason,
                rule_set_version: rules.version.clone(),
                score: score.clone(),
                at: now,
                deal_amount: None,
            };
            from = m.to;
            change
        })
        .collect()
}

/// A trigger of `def` for `lead`, fired at `at`.
fn fire(
    def: &TriggerDefinition,
    lead: &LeadSnapshot,
    at: Timestamp,
    reason: String,
    score: ScoreSnapshot,
    stage: Stage,
) -> TriggerFire {
    TriggerFire {
        cooldown_ms: def.cooldown_ms,
        trigger: FiredTrigger {
            definition_id: def.id.clone(),
            program: def.program.clone(),
            lead_id: lead.lead_id.as_str().to_owned(),
            fired_at: at,
            reason,
            score,
            stage,
        },
    }
}

/// The nurture triggers each change fires: the `stage_entered` definitions
/// of the stage it enters whose condition holds for the lead in that stage.
pub fn trigger_fires(rules: &ActiveRules, lead: &LeadSnapshot, changes: &[StageChange]) -> Vec<Vec<TriggerFire>> {
    changes
        .iter()
        .map(|change| {
            rules
                .stage_entered_triggers(lead, change.to, change.at)
                .into_iter()
                .map(|def| {
                    let reason = match &change.cause {
                        Cause::Rule { rule_id } => format!("entered {} by rule {rule_id}", change.to),
                        Cause::Manual { actor } => format!("entered {} set by {actor}", change.to),
                    };
                    fire(def, lead, change.at, reason, change.score.clone(), change.to)
                })
                .collect()
        })
        .collect()
}

/// Applies whatever moves the rules make to `lead`; returns the lead as it
/// is afterwards.
pub async fn requalify(
    state: &AppState,
    rules: &ActiveRules,
    mut lead: LeadSnapshot,
) -> Result<LeadSnapshot, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let now = state.clock.now();
        let changes = rule_changes(rules, &lead, now);
        let Some(last) = changes.last() else { return Ok(lead) };
        let fires = trigger_fires(rules, &lead, &changes);
        match state.store.change_stage(&lead.lead_id, lead.stage, &changes, &fires, &state.feed).await? {
            StageUpdate::Applied { changes: applied, .. } => {
                state.metrics.stage_changes(&changes);
                for c in &applied {
                    tracing::info!(lead_id = %c.lead_id, from = %c.change.from, to = %c.change.to, cause = ?c.change.cause, "stage changed");
                }
                lead.stage = last.to;
                lead.stage_since = last.at;
                return Ok(lead);
            }
            StageUpdate::Conflict { .. } => {
                // Someone else moved the lead: start again from what is stored.
                match state.store.load_leads(std::slice::from_ref(&lead.lead_id)).await?.pop().flatten() {
                    Some(fresh) => lead = fresh,
                    None => return Ok(lead),
                }
            }
            StageUpdate::NotFound => return Ok(lead),
        }
    }
    tracing::warn!(lead_id = %lead.lead_id, "lead kept changing during qualification; left for its next change");
    Ok(lead)
}
