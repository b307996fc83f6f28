//! Score profiles, cohort profiles and the funnel: read from what the
//! scoring core keeps at write time.

use super::*;
use crate::domain::ScoreSnapshot;
use crate::domain::profiles::{CohortProfile, CohortQuery, FunnelCounters, NO_VALUE, ScoreHistoryEntry};
use crate::domain::sla::{Agreement, Handover, Pending, SlaClock};
use crate::domain::state::Due;

/// A lead with its recent score history and stage changes.
pub struct ScoreProfile {
    pub lead: LeadSnapshot,
    /// Newest first, at most the asked-for count, none older than the
    /// configured history age.
    pub history: Vec<ScoreHistoryEntry>,
    /// Newest first, at most the asked-for count.
    pub stages: Vec<crate::domain::StageChange>,
    /// The newest signals of its raw history, at most the asked-for count.
    pub signals: Vec<crate::domain::ledger::HistoryEntry>,
}

/// `None` for a lead never seen.
pub async fn score_profile(
    state: &Core,
    lead_id: &LeadId,
    limit: usize,
    signal_limit: usize,
) -> Result<Option<ScoreProfile>, StoreError> {
    let Some(stored) = state.store.load(std::slice::from_ref(lead_id)).await?.pop().flatten() else {
        return Ok(None);
    };
    let oldest = state.clock.now().millis() - state.profiles.history_age_ms;
    let history = stored.score_history.iter().filter(|e| e.at.millis() >= oldest).take(limit).cloned().collect();
    let stages = stored.stages.iter().take(limit).cloned().collect();
    let signals = stored.ledger.history().take(signal_limit).cloned().collect();
    Ok(Some(ScoreProfile { lead: stored.lead, history, stages, signals }))
}

/// Everything stored about a lead: its state, and its fired triggers still
/// kept for delivery.
pub struct Export {
    pub state: crate::domain::state::LeadState,
    pub triggers: Vec<crate::domain::Delivery>,
}

/// Triggers looked at, at most, for an export (the newest of the lead's
/// partition).
pub const EXPORT_TRIGGER_SCAN: usize = 10_000;

/// `None` for a lead never seen.
pub async fn export(state: &Core, lead_id: &LeadId) -> Result<Option<Export>, StoreError> {
    let Some(stored) = state.store.load(std::slice::from_ref(lead_id)).await?.pop().flatten() else {
        return Ok(None);
    };
    let triggers = state.store.lead_triggers(lead_id, EXPORT_TRIGGER_SCAN).await?;
    Ok(Some(Export { state: stored, triggers }))
}

/// A cohort's score distribution and stages: a few small reads, whatever
/// the cohort's size.
pub async fn cohort(state: &Core, query: &CohortQuery) -> Result<CohortProfile, StoreError> {
    state.store.cohort_profile(query).await
}

/// The funnel counters of the UTC days `from_day..to_day`.
pub async fn funnel(state: &Core, from_day: i64, to_day: i64) -> Result<FunnelCounters, StoreError> {
    state.store.funnel(from_day, to_day).await
}

/// A lead on sales' desk: handed over and not decided on yet.
#[derive(Debug, Clone, PartialEq)]
pub struct DeskEntry {
    pub lead: LeadSnapshot,
    pub pending: Pending,
    /// Counted time waited so far (under the agreement's clock).
    pub age_ms: i64,
    pub overdue: bool,
    pub owner: String,
    pub score: ScoreSnapshot,
    /// First-touch source (`NO_VALUE` if none).
    pub source: String,
}

/// What sales has on its desk.
#[derive(Debug, Clone, PartialEq)]
pub struct Desk {
    /// Every lead waiting, all partitions.
    pub waiting: u64,
    /// The longest waiting first.
    pub entries: Vec<DeskEntry>,
    pub agreement: Option<Agreement>,
}

/// The hand-overs waiting for sales, longest waiting first (at most
/// `limit`), from the partitions' waiting indexes: two small reads per
/// partition and one load of the leads shown.
pub async fn desk(state: &Core, limit: usize) -> Result<Desk, StoreError> {
    let store = state.store.as_ref();
    let rules = state.rules();
    let now = state.clock.now();
    let mut waiting = 0;
    let mut listed = Vec::new();
    for partition in 0..store.partitions() {
        let count = store.due_count(&Due::Waiting, partition).await?;
        waiting += count;
        if count > 0 {
            listed.extend(store.due_leads(&Due::Waiting, partition, Timestamp::from_millis(i64::MAX), limit).await?);
        }
    }
    listed.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    listed.truncate(limit);
    let ids: Vec<LeadId> = listed.into_iter().map(|(id, _)| id).collect();
    // Without an agreement in force, ages count every hour.
    let every_hour = Agreement { clock: SlaClock::Always, within_ms: 0, owner_attribute: "owner".to_owned() };
    let agreement = rules.sla.as_ref().unwrap_or(&every_hour);
    let entries = store
        .load(&ids)
        .await?
        .into_iter()
        .flatten()
        .filter_map(|stored| {
            let pending = stored.handover?;
            let Handover::Waiting { age, overdue, .. } = agreement.stands(pending, None, now) else { return None };
            let score = ScoreSnapshot::of(&rules.primary().score(&stored.lead, now));
            let owner = stored.lead.attributes.get(&agreement.owner_attribute).cloned().unwrap_or_default();
            let source = stored.first_touch.map_or_else(|| NO_VALUE.to_owned(), |t| t.values[0].clone());
            Some(DeskEntry { lead: stored.lead, pending, age_ms: age, overdue, owner, score, source })
        })
        .collect();
    Ok(Desk { waiting, entries, agreement: rules.sla.clone() })
}
