//! The inactivity sweep.

use super::*;

/// Leads looked at per store round trip by the inactivity sweep.
const SWEEP_PAGE: usize = 200;

/// Fires the `inactive(…)` triggers due now, from the indexes the ingest
/// maintains (never a scan of all leads). Safe to run on several replicas at
/// once: each trigger fires once per quiet spell. Returns how many fired.
pub async fn sweep_inactivity(state: &Core) -> Result<u64, StoreError> {
    let rules = state.rules();
    let settings = settings(state);
    let now = state.clock.now();
    let store = state.store.as_ref();
    let mut fired = 0;
    for (def, quiet_ms) in rules.inactivity_triggers() {
        let before = now.plus_millis(-quiet_ms);
        for partition in 0..store.partitions() {
            let mut previous_first = None;
            loop {
                let ids = store.inactive_leads(&def.id, partition, before, SWEEP_PAGE).await?;
                // A page that did not move (entries the sweep cannot clear): stop.
                if ids.is_empty() || previous_first.as_ref() == ids.first() {
                    break;
                }
                previous_first = ids.first().cloned();
                let steps: Vec<_> = store
                    .load(&ids)
                    .await?
                    .into_iter()
                    .flatten()
                    .filter_map(|stored| transition::inactivity(&rules, &settings, now, stored, def, quiet_ms))
                    .collect();
                let changes: Vec<LeadChange> = steps.iter().map(|s| s.change.clone()).collect();
                // A lead that changed meanwhile is left to the next sweep.
                let written = write(state, &changes).await?;
                fired += steps.iter().zip(written).filter(|(s, ok)| *ok && s.answer).count() as u64;
                if ids.len() < SWEEP_PAGE {
                    break;
                }
            }
        }
    }
    Ok(fired)
}
