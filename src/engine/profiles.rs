//! Score profiles, cohort profiles and the funnel: read from what the
//! scoring core keeps at write time.

use super::*;
use crate::domain::profiles::{CohortProfile, CohortQuery, FunnelCounters, ScoreHistoryEntry};

/// A lead with its recent score history and stage changes.
pub struct ScoreProfile {
    pub lead: LeadSnapshot,
    /// Newest first, at most the asked-for count, none older than the
    /// configured history age.
    pub history: Vec<ScoreHistoryEntry>,
    /// Newest first, at most the asked-for count.
    pub stages: Vec<crate::domain::StageChange>,
}

/// `None` for a lead never seen.
pub async fn score_profile(state: &Core, lead_id: &LeadId, limit: usize) -> Result<Option<ScoreProfile>, StoreError> {
    let Some(stored) = state.store.load(std::slice::from_ref(lead_id)).await?.pop().flatten() else {
        return Ok(None);
    };
    let oldest = state.clock.now().millis() - state.profiles.history_age_ms;
    let history = stored.score_history.iter().filter(|e| e.at.millis() >= oldest).take(limit).cloned().collect();
    let stages = stored.stages.iter().take(limit).cloned().collect();
    Ok(Some(ScoreProfile { lead: stored.lead, history, stages }))
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
