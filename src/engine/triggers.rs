//! Delivering fired nurture triggers to consumer groups, at least once.

use super::*;
use crate::domain::Delivery;

/// What the next delivery to a consumer holds.
pub struct Deliveries {
    pub triggers: Vec<Delivery>,
    /// The consumer already holds `max_in_flight` unacknowledged triggers:
    /// nothing is delivered until it acknowledges some.
    pub full: bool,
}

/// Delivers to `consumer` of `group` as many triggers as it has room for
/// (new ones, or ones another consumer held past the visibility timeout).
pub async fn deliver(state: &Core, group: &str, consumer: &str, max_in_flight: u64) -> Result<Deliveries, StoreError> {
    let in_flight = state.store.triggers_in_flight(group, consumer).await?;
    let room = max_in_flight.saturating_sub(in_flight) as usize;
    if room == 0 {
        return Ok(Deliveries { triggers: Vec::new(), full: true });
    }
    let now = state.clock.now();
    let triggers = state.store.deliver_triggers(group, consumer, room, &state.delivery, now).await?;
    Ok(Deliveries { triggers, full: false })
}

/// Triggers delivered to `consumer` and not yet acknowledged.
pub async fn in_flight(state: &Core, group: &str, consumer: &str) -> Result<u64, StoreError> {
    state.store.triggers_in_flight(group, consumer).await
}

/// Acknowledges handled triggers; returns how many were pending.
pub async fn ack(state: &Core, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
    state.store.ack_triggers(group, trigger_ids).await
}

/// Triggers given up on after `max_deliveries`, oldest first.
pub async fn dead_letters(state: &Core, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
    state.store.dead_letters(group, limit).await
}

/// Delivers dead letters again; returns how many were dead letters.
pub async fn replay(state: &Core, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
    let replayed = state.store.replay_dead_letters(group, trigger_ids).await?;
    tracing::info!(group, replayed, "dead letters replayed");
    Ok(replayed)
}

/// A mark of every partition's newest trigger: it changes when a trigger
/// is fired anywhere.
pub async fn heads(state: &Core) -> Result<Vec<String>, StoreError> {
    state.store.trigger_heads().await
}
