//! Recording signals that may fire score-dependent triggers, and merging
//! identified visitors.

use super::*;

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
    state: &AppState,
    rules: &ActiveRules,
    visitor: &VisitorId,
    lead_id: &LeadId,
) -> Result<Identified, StoreError> {
    let subject = LeadId::for_visitor(visitor);
    match state.store.mark_identified(&subject, lead_id).await? {
        IdentifyMark::Marked => {}
        IdentifyMark::NotFound => return Ok(Identified::UnknownVisitor),
        IdentifyMark::AlreadyIdentified(other) => return Ok(Identified::AlreadyIdentified(other)),
    }
    let now = state.clock.now();
    let oldest = now.plus_millis(-state.policy.retention_ms);
    let history = state.store.signal_histories(std::slice::from_ref(&subject)).await?.pop().unwrap_or_default();
    let signals: Vec<ScoredSignal> = history
        .iter()
        .rev()
        .filter(|e| e.occurred_at_ms >= oldest.millis())
        .filter_map(|e| {
            let def = rules.signal_type(&e.signal_type)?;
            Some(ScoredSignal {
                event_id: EventId::parse(e.event_id.clone()).ok()?,
                signal_type: e.signal_type.clone(),
                occurred_at: Timestamp::from_millis(e.occurred_at_ms),
                daily_cap: def.daily_cap,
                weights: rules.weigh(&e.signal_type, &e.properties),
                properties: e.properties.clone(),
            })
        })
        .collect();
    let batch = LeadBatch { initial_stage: Stage::Anonymous, ..LeadBatch::new(lead_id.clone(), signals) }
        .watching(inactivity_watch(rules));
    let Some(outcome) = record_batches(state, rules, vec![batch]).await?.pop() else {
        return Err(StoreError::Internal("recording a visitor's history returned nothing".into()));
    };
    let merged_signals = outcome.statuses.iter().filter(|s| **s != SignalStatus::Duplicate).count() as u32;
    let mut lead = outcome.lead;
    if lead.stage == Stage::Anonymous {
        let change = StageChange {
            from: Stage::Anonymous,
            to: Stage::Lead,
            cause: Cause::Manual { actor: "identify_visitor".into() },
            reason: format!("visitor {visitor} identified"),
            rule_set_version: rules.version.clone(),
            score: ScoreSnapshot::of(&rules.primary().score(&lead, now)),
            at: now,
            deal_amount: None,
        };
        let fires = trigger_fires(rules, &lead, std::slice::from_ref(&change));
        if let StageUpdate::Applied { .. } = state
            .store
            .change_stage(lead_id, Stage::Anonymous, std::slice::from_ref(&change), &fires, &state.feed)
            .await?
        {
            state.metrics.stage_changes(std::slice::from_ref(&change));
            lead.stage = Stage::Lead;
            lead.stage_since = now;
        }
    }
    let lead = requalify(state, rules, lead).await?;
    Ok(Identified::Merged { lead, merged_signals })
}

/// Records a batch that may fire triggers computed from the score (signal,
/// score threshold, re-engagement): the lead is read, everything the batch
/// does — tallies, triggers, stage changes and their triggers — is
/// computed here and written in one atomic step if the lead is unchanged
/// meanwhile (else read again). Two round trips instead of one, only for
/// such batches.
pub async fn commit_ingest(state: &AppState, rules: &ActiveRules, batch: LeadBatch) -> Result<LeadOutcome, StoreError> {
    let store = state.store.as_ref();
    let event_ids: Vec<String> = batch.signals.iter().map(|s| s.event_id.as_str().to_owned()).collect();
    let stripe = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        batch.lead_id.hash(&mut h);
        (h.finish() % state.commit_locks.len() as u64) as usize
    };
    let _serialised = state.commit_locks[stripe].lock().await;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            // Another replica wrote the lead meanwhile: back off a little.
            tokio::time::sleep(std::time::Duration::from_millis(2 << attempt)).await;
        }
        let now = state.clock.now();
        let read =
            store.read_for_commit(&batch.lead_id, &event_ids, now.plus_millis(-state.policy.dedupe_window_ms)).await?;
        if let Some(owner) = read.lead.as_ref().and_then(|l| l.merged_into.clone()) {
            let lead = read.lead.unwrap_or_else(|| LeadSnapshot::new(batch.lead_id.clone(), now));
            return Ok(LeadOutcome { statuses: Vec::new(), lead, merged_into: Some(owner) });
        }
        let expected = read.lead.as_ref().map(|l| (l.recorded, l.stage));
        let before = read.lead.unwrap_or_else(|| {
            let mut lead = LeadSnapshot::new(batch.lead_id.clone(), now);
            lead.stage = batch.initial_stage;
            lead
        });
        let mut after = before.clone();
        let mut ledger = LeadLedger::with_seen(read.seen);
        let policy = IngestPolicy { history_limit: batch.signals.len(), ..state.policy };
        let statuses: Vec<SignalStatus> =
            batch.signals.iter().map(|s| ledger.record(&mut after, s, now, &policy)).collect();
        let counted: std::collections::BTreeSet<String> = batch
            .signals
            .iter()
            .zip(&statuses)
            .filter(|(_, st)| **st == SignalStatus::Accepted)
            .map(|(s, _)| s.signal_type.clone())
            .collect();
        let score = ScoreSnapshot::of(&rules.primary().score(&after, now));
        let fires = rules
            .ingest_triggers(&before, &after, &counted, now)
            .into_iter()
            .map(|def| {
                let reason = format!("{} after {}", def.on, counted.iter().cloned().collect::<Vec<_>>().join(", "));
                fire(def, &after, now, reason, score.clone(), after.stage)
            })
            .collect();
        let changes = rule_changes(rules, &after, now);
        let change_fires = trigger_fires(rules, &after, &changes);
        let plan = CommitPlan {
            expected,
            initial_stage: batch.initial_stage,
            history: ledger.recorded_oldest_first(),
            engaged: !counted.is_empty(),
            watch_inactivity: batch.watch_inactivity.clone(),
            fires,
            changes,
            change_fires,
            now,
            score_cause: (!counted.is_empty())
                .then(|| crate::domain::profiles::signals_cause(counted.iter().map(String::as_str))),
            lead: after,
        };
        if store.commit(&plan, &state.policy, &state.feed).await? {
            state.metrics.stage_changes(&plan.changes);
            let mut lead = plan.lead;
            if let Some(last) = plan.changes.last() {
                lead.stage = last.to;
                lead.stage_since = last.at;
            }
            return Ok(LeadOutcome { statuses, lead, merged_into: None });
        }
    }
    Err(StoreError::Unavailable(format!("lead {} kept changing while its signals were recorded; retry", batch.lead_id)))
}

/// Records batches: in one pipelined round trip, except those that may fire
/// score-dependent triggers, which take `commit_ingest`. Outcomes in order.
pub async fn record_batches(
    state: &AppState,
    rules: &ActiveRules,
    batches: Vec<LeadBatch>,
) -> Result<Vec<LeadOutcome>, StoreError> {
    let now = state.clock.now();
    let (careful, plain): (Vec<_>, Vec<_>) = batches
        .into_iter()
        .enumerate()
        .partition(|(_, b)| rules.ingest_may_fire(b.signals.iter().map(|s| s.signal_type.as_str())));
    let (plain_places, plain): (Vec<usize>, Vec<LeadBatch>) = plain.into_iter().unzip();
    let plain_outcomes =
        if plain.is_empty() { Vec::new() } else { state.store.record_signals(plain, now, &state.policy).await? };
    let careful_places: Vec<usize> = careful.iter().map(|(i, _)| *i).collect();
    let careful_outcomes =
        futures::future::try_join_all(careful.into_iter().map(|(_, b)| commit_ingest(state, rules, b))).await?;
    let mut outcomes: Vec<(usize, LeadOutcome)> =
        plain_places.into_iter().zip(plain_outcomes).chain(careful_places.into_iter().zip(careful_outcomes)).collect();
    outcomes.sort_by_key(|(i, _)| *i);
    Ok(outcomes.into_iter().map(|(_, o)| o).collect())
}
