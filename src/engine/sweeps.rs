//! The sweeps over the due indexes: `inactive(…)` triggers, and follow-up
//! deadlines that pass without a sales decision.

use super::*;
use crate::domain::state::Due;
use crate::transition::Step;

/// Leads looked at per store round trip by a sweep.
const SWEEP_PAGE: usize = 200;

/// What one round of the sweeps did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// `inactive(…)` triggers fired.
    pub inactivity_triggers: u64,
    /// Hand-overs whose deadline passed without a decision.
    pub breaches: u64,
}

/// Fires the `inactive(…)` triggers due now, and counts (and fires the
/// `sla_breached` triggers of) the hand-overs whose deadline has passed,
/// from the indexes every change maintains (never a scan of all leads).
/// Safe to run on several replicas at once: each trigger fires once per
/// quiet spell, each breach counts once.
pub async fn sweep_due(state: &Core) -> Result<Swept, StoreError> {
    let rules = state.rules();
    let settings = settings(state);
    let now = state.clock.now();
    let mut swept = Swept::default();
    for (def, quiet_ms) in rules.inactivity_triggers() {
        let due = Due::Inactivity(def.id.clone());
        swept.inactivity_triggers += sweep(state, &due, now.plus_millis(-quiet_ms), |stored| {
            transition::inactivity(&rules, &settings, now, stored, def, quiet_ms)
        })
        .await?;
    }
    if let Some(agreement) = &rules.sla {
        // A decision at the deadline is in time: breached only after it.
        swept.breaches += sweep(state, &Due::Deadline, now.plus_millis(-1), |stored| {
            transition::breach(&rules, &settings, agreement, now, stored)
        })
        .await?;
    }
    Ok(swept)
}

/// Walks every partition's index `due` up to `before`, writing each listed
/// lead's step; returns how many written steps answered `true`.
async fn sweep(
    state: &Core,
    due: &Due,
    before: Timestamp,
    step: impl Fn(LeadState) -> Option<Step<bool>>,
) -> Result<u64, StoreError> {
    let store = state.store.as_ref();
    let mut counted = 0;
    for partition in 0..store.partitions() {
        let mut previous_first = None;
        loop {
            let listed = store.due_leads(due, partition, before, SWEEP_PAGE).await?;
            let ids: Vec<LeadId> = listed.into_iter().map(|(id, _)| id).collect();
            // A page that did not move (entries the sweep cannot clear): stop.
            if ids.is_empty() || previous_first.as_ref() == ids.first() {
                break;
            }
            previous_first = ids.first().cloned();
            let steps: Vec<_> = store.load(&ids).await?.into_iter().flatten().filter_map(&step).collect();
            let changes: Vec<LeadChange> = steps.iter().map(|s| s.change.clone()).collect();
            // A lead that changed meanwhile is left to the next sweep.
            let written = write(state, &changes).await?;
            counted += steps.iter().zip(written).filter(|(s, ok)| *ok && s.answer).count() as u64;
            if ids.len() < SWEEP_PAGE {
                break;
            }
        }
    }
    Ok(counted)
}
