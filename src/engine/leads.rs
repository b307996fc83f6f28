//! Profile upserts (the CRM), sales decisions (`SetStage`) and customers'
//! expansion deals.

use super::*;
use crate::domain::LeadProfile;
use crate::domain::expansion;
use crate::transition::{ExpansionRefusal, StageRefusal, StageRequest};

/// A lead's whole state; `None` for a lead never seen.
pub async fn load(state: &Core, lead_id: &LeadId) -> Result<Option<LeadState>, StoreError> {
    Ok(state.store.load(std::slice::from_ref(lead_id)).await?.pop().flatten())
}

/// The leads, in order; `None` where a lead was never seen.
pub async fn snapshots(state: &Core, ids: &[LeadId]) -> Result<Vec<Option<LeadSnapshot>>, StoreError> {
    state.store.load_leads(ids).await
}

/// The lead that is scored for `lead_id`: an identified visitor's score is
/// its lead's. `Err(id)` names the lead never seen.
pub async fn scored(state: &Core, lead_id: LeadId) -> Result<Result<LeadSnapshot, LeadId>, StoreError> {
    let Some(lead) = snapshots(state, std::slice::from_ref(&lead_id)).await?.pop().flatten() else {
        return Ok(Err(lead_id));
    };
    let Some(owner) = lead.merged_into.clone() else { return Ok(Ok(lead)) };
    Ok(snapshots(state, std::slice::from_ref(&owner)).await?.pop().flatten().ok_or(owner))
}

/// Creates the lead or replaces its profile, and applies the qualification
/// rules, in one write. Returns the lead afterwards.
/// What an upsert did: the lead as written, whether it was new, and the
/// names of the attributes it added, removed or changed (for the audit
/// trail: names, never values).
pub struct Upserted {
    pub lead: LeadSnapshot,
    pub created: bool,
    pub attributes_changed: Vec<String>,
    pub account_changed: bool,
}

pub async fn upsert_lead(state: &Core, rules: &RuleSet, profile: LeadProfile) -> Result<Upserted, StoreError> {
    let settings = settings(state);
    let lead_id = profile.lead_id.clone();
    change_one(state, &lead_id, |stored, now| {
        let before = stored.as_ref().map(|s| (s.lead.attributes.clone(), s.lead.account_id.clone()));
        let change = transition::upsert_profile(rules, &settings, now, stored, profile.clone());
        let lead = change.state.lead.clone();
        let (attributes, account) = before.clone().unwrap_or_default();
        let upserted = Upserted {
            created: before.is_none(),
            attributes_changed: crate::domain::audit::changed_attributes(&attributes, &lead.attributes),
            account_changed: account != lead.account_id,
            lead,
        };
        Ok((Some(change), upserted))
    })
    .await
}

#[derive(Debug, thiserror::Error)]
pub enum SetStageError {
    #[error("{0:?}")]
    Refused(StageRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Moves a lead by a sales decision, if the rule set allows it. Without an
/// expected stage, the stage first read is expected: a lead moved by
/// someone else meanwhile is reported, not moved again.
pub async fn set_stage(
    state: &Core,
    rules: &RuleSet,
    lead_id: &LeadId,
    mut request: StageRequest,
) -> Result<(LeadSnapshot, crate::domain::StageChange), SetStageError> {
    let settings = settings(state);
    let outcome = change_one(state, lead_id, |stored, now| {
        if request.expected.is_none() {
            request.expected = stored.as_ref().map(|s| s.lead.stage);
        }
        match transition::set_stage(rules, &settings, now, stored, request.clone()) {
            Ok(change) => {
                let lead = change.state.lead.clone();
                let moved = change.feed.first().cloned();
                Ok((Some(change), Ok((lead, moved))))
            }
            Err(refusal) => Ok((None, Err(refusal))),
        }
    })
    .await?;
    match outcome {
        Ok((lead, Some(change))) => Ok((lead, change)),
        Ok((_, None)) => Err(StoreError::Internal("a stage change wrote no change".into()).into()),
        Err(refusal) => Err(SetStageError::Refused(refusal)),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExpansionError {
    #[error("{0:?}")]
    Refused(ExpansionRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Records a customer's expansion deal update; answers the deal as kept and
/// whether the update changed anything (not when sent again).
pub async fn record_expansion(
    state: &Core,
    rules: &RuleSet,
    lead_id: &LeadId,
    update: expansion::Update,
) -> Result<(expansion::Deal, bool), ExpansionError> {
    let settings = settings(state);
    let outcome = change_one(state, lead_id, |stored, now| {
        match transition::record_expansion(rules, &settings, now, stored, update.clone()) {
            Ok((change, deal)) => {
                let changed = change.is_some();
                Ok((change, Ok((deal, changed))))
            }
            Err(refusal) => Ok((None, Err(refusal))),
        }
    })
    .await?;
    outcome.map_err(ExpansionError::Refused)
}
