//! Webhook endpoints' status, dead letters and replays. Delivery itself is
//! `crate::webhook`'s.

use super::*;
use crate::domain::webhook::EndpointSpec;
use crate::store::{LetterLine, WebhookCounters, WebhookLetter};

/// Changes looked at, at most, to count an endpoint's backlog (one page of
/// the feed: a status is read at every metrics scrape).
pub const BACKLOG_CAP: usize = 500;

/// An endpoint's delivery status, across replicas.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub counters: WebhookCounters,
    pub dead_letters: u64,
    pub replaying: u64,
    /// Replays, changes after the endpoint's position that it takes, and
    /// triggers of its group not yet accepted.
    pub backlog: u64,
    /// More changes wait than were counted.
    pub backlog_capped: bool,
    /// When the oldest waiting change or replay happened.
    pub oldest_pending: Option<Timestamp>,
}

pub async fn status(state: &Core, spec: &EndpointSpec) -> Result<Status, StoreError> {
    let store = &state.store;
    let counters = store.webhook_counters(&spec.name).await?;
    let (dead_letters, replaying) = store.webhook_letter_counts(&spec.name).await?;
    let mut status = Status { counters, dead_letters, replaying, backlog: replaying, ..Status::default() };
    let oldest = |at: Timestamp, status: &mut Status| {
        if status.oldest_pending.is_none_or(|o| at < o) {
            status.oldest_pending = Some(at);
        }
    };
    if let Some(first) = store.webhook_letters(&spec.name, LetterLine::Replay, 1).await?.first() {
        oldest(Timestamp::from_millis(first.occurred_at_ms), &mut status);
    }
    if spec.filter.wants_changes()
        && let Some(position) = store.webhook_position(&spec.name).await?
    {
        let page = store.list_changes(&position.cursor, BACKLOG_CAP).await?;
        for c in page.changes.iter().filter(|c| spec.filter.takes_feed(&c.event)) {
            status.backlog += 1;
            oldest(c.at(), &mut status);
        }
        status.backlog_capped = page.changes.len() >= BACKLOG_CAP;
    }
    if spec.filter.wants_triggers() {
        let stats = store.trigger_stats(&spec.trigger_group()).await?;
        status.backlog += stats.fired.saturating_sub(stats.delivered) + stats.pending;
    }
    Ok(status)
}

/// The endpoint's dead letters, oldest first.
pub async fn dead_letters(state: &Core, endpoint: &str, limit: usize) -> Result<Vec<WebhookLetter>, StoreError> {
    state.store.webhook_letters(endpoint, LetterLine::Dead, limit).await
}

/// Puts dead letters back in line; returns how many were dead letters.
pub async fn replay(state: &Core, endpoint: &str, event_ids: &[String]) -> Result<u64, StoreError> {
    let replayed = state.store.replay_webhook_letters(endpoint, event_ids).await?;
    tracing::info!(endpoint, replayed, "webhook dead letters replayed");
    Ok(replayed)
}
