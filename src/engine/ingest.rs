//! Recording signals, and merging identified visitors.

use super::*;
use crate::domain::{ScoredSignal, SignalStatus, VisitorId};
use crate::transition::IdentifyRefusal;

/// Signals for one lead, in arrival order.
#[derive(Debug, Clone)]
pub struct LeadBatch {
    pub lead_id: LeadId,
    pub signals: Vec<ScoredSignal>,
    /// The stage the lead gets if this batch creates it.
    pub initial_stage: Stage,
}

impl LeadBatch {
    /// A batch for `lead_id`, which starts as `ANONYMOUS` if it is a visitor
    /// and as `LEAD` otherwise.
    pub fn new(lead_id: LeadId, signals: Vec<ScoredSignal>) -> Self {
        let initial_stage = if lead_id.visitor().is_some() { Stage::Anonymous } else { Stage::Lead };
        Self { lead_id, signals, initial_stage }
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

/// Records batches (one per lead): every lead read in one round trip,
/// every change — tallies, triggers, stage moves and aggregates — written
/// in one more, atomically per lead. Leads that changed meanwhile are read
/// and computed again. Outcomes in order.
pub async fn record_batches(
    state: &Core,
    rules: &RuleSet,
    batches: Vec<LeadBatch>,
) -> Result<Vec<LeadOutcome>, StoreError> {
    let settings = settings(state);
    let _serialised = lock_leads(state, batches.iter().map(|b| &b.lead_id)).await;
    let mut outcomes: Vec<Option<LeadOutcome>> = vec![None; batches.len()];
    let mut pending: Vec<usize> = (0..batches.len()).collect();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            back_off(attempt).await;
        }
        let ids: Vec<LeadId> = pending.iter().map(|&i| batches[i].lead_id.clone()).collect();
        let stored = state.store.load(&ids).await?;
        let now = state.clock.now();
        let mut changes = Vec::new();
        let mut waiting = Vec::new();
        for (&i, stored) in pending.iter().zip(stored) {
            let batch = &batches[i];
            if let Some(owner) = stored.as_ref().and_then(|s| s.lead.merged_into.clone()) {
                let lead = stored.map(|s| s.lead).unwrap_or_else(|| LeadSnapshot::new(batch.lead_id.clone(), now));
                outcomes[i] = Some(LeadOutcome { statuses: Vec::new(), lead, merged_into: Some(owner) });
                continue;
            }
            let recorded = transition::record_signals(
                rules,
                &settings,
                now,
                stored,
                &batch.lead_id,
                batch.initial_stage,
                &batch.signals,
            );
            let outcome = LeadOutcome { statuses: recorded.statuses, lead: recorded.lead, merged_into: None };
            match recorded.change {
                Some(change) => {
                    changes.push(change);
                    waiting.push((i, outcome));
                }
                None => outcomes[i] = Some(outcome),
            }
        }
        let written = write(state, &changes).await?;
        pending.clear();
        for ((i, outcome), ok) in waiting.into_iter().zip(written) {
            if ok {
                outcomes[i] = Some(outcome);
            } else {
                pending.push(i);
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    if let Some(&i) = pending.first() {
        return Err(kept_changing(&batches[i].lead_id));
    }
    Ok(outcomes.into_iter().flatten().collect())
}

/// What identifying a visitor did.
#[derive(Debug)]
pub enum Identified {
    Merged { lead: LeadSnapshot, merged_signals: u32 },
    UnknownVisitor,
    AlreadyIdentified(LeadId),
}

/// Links an anonymous visitor to a lead. The visitor is marked first (its
/// later signals then go to the lead), then its raw history is recorded on
/// the lead — de-duplicated by event id, so calling this again, or after a
/// crash half-way, counts nothing twice. A lead this creates starts
/// `ANONYMOUS` and moves to `LEAD`, recorded in the change feed.
pub async fn identify(
    state: &Core,
    rules: &RuleSet,
    visitor: &VisitorId,
    lead_id: &LeadId,
) -> Result<Identified, StoreError> {
    let settings = settings(state);
    let subject = LeadId::for_visitor(visitor);
    let marked = change_one(state, &subject, |stored, now| {
        match transition::mark_identified(rules, &settings, now, stored.clone(), lead_id) {
            Ok(change) => Ok((change, Ok(stored))),
            Err(refusal) => Ok((None, Err(refusal))),
        }
    })
    .await?;
    let visitor_state = match marked {
        Ok(Some(visitor_state)) => visitor_state,
        Ok(None) | Err(IdentifyRefusal::UnknownVisitor) => return Ok(Identified::UnknownVisitor),
        Err(IdentifyRefusal::AlreadyIdentified(other)) => return Ok(Identified::AlreadyIdentified(other)),
    };
    let name = visitor.to_string();
    let (lead, merged_signals) = change_one(state, lead_id, |stored, now| {
        let step = transition::merge_visitor(rules, &settings, now, stored, lead_id, &visitor_state, &name);
        let lead = step.change.state.lead.clone();
        Ok((Some(step.change), (lead, step.answer)))
    })
    .await?;
    Ok(Identified::Merged { lead, merged_signals })
}
