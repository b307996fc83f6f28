//! The inactivity sweep.

use super::*;

/// The `inactive(…)` definitions whose index counted signals maintain.
pub fn inactivity_watch(rules: &RuleSet) -> Arc<[String]> {
    rules.inactivity_triggers().map(|(def, _)| def.id.clone()).collect()
}

/// Leads looked at per store round trip by the inactivity sweep.
const SWEEP_PAGE: usize = 200;

/// Fires the `inactive(…)` triggers due now, from the indexes the ingest
/// maintains (never a scan of all leads). Safe to run on several replicas at
/// once: each trigger fires once per quiet spell. Returns how many fired.
pub async fn sweep_inactivity(state: &AppState) -> Result<u64, StoreError> {
    let rules = state.rules();
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
                let leads = store.load_leads(&ids).await?;
                for (id, lead) in ids.iter().zip(leads) {
                    // Gone, or never engaged: nothing to fire.
                    let Some(lead) = lead else { continue };
                    let Some(engaged_at) = lead.last_engaged_at else { continue };
                    let fire = rules.trigger_condition_holds(def, &lead, now).then(|| {
                        let quiet = crate::rules::format_duration(now.millis() - engaged_at.millis());
                        let score = ScoreSnapshot::of(&rules.primary().score(&lead, now));
                        fire(def, &lead, now, format!("no counted signal for {quiet}"), score, lead.stage)
                    });
                    if store.fire_inactivity(id, engaged_at, &def.id, fire.as_ref(), &state.feed).await? {
                        fired += 1;
                    }
                }
                if ids.len() < SWEEP_PAGE {
                    break;
                }
            }
        }
    }
    Ok(fired)
}
