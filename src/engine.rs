//! Applying the qualification rules to stored leads: after every score or
//! profile change, in the same request.
//!
//! The lead is updated first (one round trip); the rules run on what the
//! store returned; a move, when one is due, is written with a
//! compare-and-set on the stage (a second round trip, only then). Two
//! requests racing on one lead both see the old stage, both compute the
//! move, and only the first write lands: the other finds the stage changed,
//! re-reads the lead and re-evaluates from the new stage. So each move is
//! made, and fed to the CRM, exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};

use crate::api::jobs::{JobState, RescoreJob};
use crate::api::{ActiveRules, AppState};
use crate::domain::ledger::HistoryEntry;
use crate::domain::{
    Cause, EventId, FiredTrigger, IngestPolicy, LeadId, LeadLedger, LeadSnapshot, ScoreSnapshot, ScoredSignal,
    SignalStatus, Stage, StageChange, Timestamp, TriggerFire, VisitorId,
};
use crate::rules::RuleSet;
use crate::rules::triggers::TriggerDefinition;
use crate::store::{CommitPlan, IdentifyMark, LeadBatch, LeadOutcome, LeadStore, StageUpdate, StoreError};

/// Attempts before giving up on a lead that keeps changing under us.
const MAX_ATTEMPTS: usize = 5;

/// The rule moves for `lead`, as stage changes stamped with the score.
pub fn rule_changes(rules: &ActiveRules, lead: &LeadSnapshot, now: Timestamp) -> Vec<StageChange> {
    let moves = rules.qualify(lead, now);
    if moves.is_empty() {
        return Vec::new();
    }
    let score = ScoreSnapshot::of(&rules.primary().score(lead, now));
    let mut from = lead.stage;
    moves
        .into_iter()
        .map(|m| {
            let reason =
                rules.qualification.iter().find(|r| r.id == m.rule_id).map(|r| r.when.clone()).unwrap_or_default();
            let change = StageChange {
                from,
                to: m.to,
                cause: Cause::Rule { rule_id: m.rule_id },
                reason,
                rule_set_version: rules.version.clone(),
                score: score.clone(),
                at: now,
            };
            from = m.to;
            change
        })
        .collect()
}

/// A trigger of `def` for `lead`, fired at `at`.
fn fire(
    def: &TriggerDefinition,
    lead: &LeadSnapshot,
    at: Timestamp,
    reason: String,
    score: ScoreSnapshot,
    stage: Stage,
) -> TriggerFire {
    TriggerFire {
        cooldown_ms: def.cooldown_ms,
        trigger: FiredTrigger {
            definition_id: def.id.clone(),
            program: def.program.clone(),
            lead_id: lead.lead_id.as_str().to_owned(),
            fired_at: at,
            reason,
            score,
            stage,
        },
    }
}

/// The nurture triggers each change fires: the `stage_entered` definitions
/// of the stage it enters whose condition holds for the lead in that stage.
pub fn trigger_fires(rules: &ActiveRules, lead: &LeadSnapshot, changes: &[StageChange]) -> Vec<Vec<TriggerFire>> {
    changes
        .iter()
        .map(|change| {
            rules
                .stage_entered_triggers(lead, change.to, change.at)
                .into_iter()
                .map(|def| {
                    let reason = match &change.cause {
                        Cause::Rule { rule_id } => format!("entered {} by rule {rule_id}", change.to),
                        Cause::Manual { actor } => format!("entered {} set by {actor}", change.to),
                    };
                    fire(def, lead, change.at, reason, change.score.clone(), change.to)
                })
                .collect()
        })
        .collect()
}

/// Applies whatever moves the rules make to `lead`; returns the lead as it
/// is afterwards.
pub async fn requalify(
    state: &AppState,
    rules: &ActiveRules,
    mut lead: LeadSnapshot,
) -> Result<LeadSnapshot, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let now = state.clock.now();
        let changes = rule_changes(rules, &lead, now);
        let Some(last) = changes.last() else { return Ok(lead) };
        let fires = trigger_fires(rules, &lead, &changes);
        match state.store.change_stage(&lead.lead_id, lead.stage, &changes, &fires, &state.feed).await? {
            StageUpdate::Applied { changes: applied, .. } => {
                for c in &applied {
                    tracing::info!(lead_id = %c.lead_id, from = %c.change.from, to = %c.change.to, cause = ?c.change.cause, "stage changed");
                }
                lead.stage = last.to;
                lead.stage_since = last.at;
                return Ok(lead);
            }
            StageUpdate::Conflict { .. } => {
                // Someone else moved the lead: start again from what is stored.
                match state.store.load_leads(std::slice::from_ref(&lead.lead_id)).await?.pop().flatten() {
                    Some(fresh) => lead = fresh,
                    None => return Ok(lead),
                }
            }
            StageUpdate::NotFound => return Ok(lead),
        }
    }
    tracing::warn!(lead_id = %lead.lead_id, "lead kept changing during qualification; left for its next change");
    Ok(lead)
}

/// The lead's tallies recomputed under `rules` by replaying its raw history
/// in arrival order — when the history holds every signal the lead ever
/// recorded (`history_limit` and `signal_retention` bound it). `None` when
/// it does not: the stored tallies then stay as they were computed.
pub fn rebuild(
    rules: &RuleSet,
    lead: &LeadSnapshot,
    history: &[HistoryEntry],
    policy: &IngestPolicy,
) -> Option<LeadSnapshot> {
    if history.len() as u64 != lead.recorded {
        return None;
    }
    let mut fresh = lead.clone();
    fresh.tallies.clear();
    fresh.daily.clear();
    fresh.recorded = 0;
    fresh.last_engaged_at = None;
    let mut ledger = LeadLedger::default();
    let replay = IngestPolicy { history_limit: 0, ..*policy };
    for entry in history.iter().rev() {
        let (Ok(event_id), Some(def)) = (EventId::parse(entry.event_id.clone()), rules.signal_type(&entry.signal_type))
        else {
            // A type the rule set no longer declares counts nothing.
            fresh.recorded += 1;
            continue;
        };
        let signal = ScoredSignal {
            event_id,
            signal_type: entry.signal_type.clone(),
            occurred_at: Timestamp::from_millis(entry.occurred_at_ms),
            daily_cap: def.daily_cap,
            weights: rules.weigh(&entry.signal_type, &entry.properties),
            properties: entry.properties.clone(),
        };
        ledger.record(&mut fresh, &signal, Timestamp::from_millis(entry.arrived_at_ms), &replay);
    }
    Some(fresh)
}

/// Leads read per store round trip when walking all leads.
const CHUNK: usize = 200;

/// Calls `visit` with every stored lead and its raw history, chunk by chunk.
async fn for_each_lead<F, Fut>(store: &dyn LeadStore, mut visit: F) -> Result<(), StoreError>
where
    F: FnMut(Vec<(LeadSnapshot, Vec<HistoryEntry>)>) -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    for partition in 0..store.partitions() {
        let ids = store.lead_ids(partition).await?;
        for chunk in ids.chunks(CHUNK) {
            let (leads, histories) = futures::try_join!(store.load_leads(chunk), store.signal_histories(chunk))?;
            let batch = leads.into_iter().zip(histories).filter_map(|(lead, h)| lead.map(|l| (l, h))).collect();
            visit(batch).await?;
        }
    }
    Ok(())
}

/// How many leads would move from one stage to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: Stage,
    pub to: Stage,
    pub count: u64,
    pub examples: Vec<LeadId>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simulation {
    pub leads_evaluated: u64,
    /// Leads whose scores were recomputed from a complete raw history.
    pub leads_rebuilt: u64,
    /// Ordered by (from, to).
    pub transitions: Vec<Transition>,
}

/// What `candidate` would do to every stored lead now, writing nothing: each
/// lead's score is recomputed under the candidate (from its raw history when
/// complete) and its rules run from the lead's current stage. A lead is
/// counted once, from its stage to where the candidate's rules would leave it.
pub async fn simulate(
    store: &dyn LeadStore,
    candidate: &RuleSet,
    policy: &IngestPolicy,
    now: Timestamp,
    sample_limit: usize,
) -> Result<Simulation, StoreError> {
    let mut result = Simulation::default();
    let mut moves: std::collections::BTreeMap<(Stage, Stage), Transition> = std::collections::BTreeMap::new();
    for_each_lead(store, |batch| {
        for (lead, history) in batch {
            result.leads_evaluated += 1;
            let lead = match rebuild(candidate, &lead, &history, policy) {
                Some(rebuilt) => {
                    result.leads_rebuilt += 1;
                    rebuilt
                }
                None => lead,
            };
            if let Some(last) = candidate.qualify(&lead, now).last() {
                let t = moves.entry((lead.stage, last.to)).or_insert_with(|| Transition {
                    from: lead.stage,
                    to: last.to,
                    count: 0,
                    examples: Vec::new(),
                });
                t.count += 1;
                if t.examples.len() < sample_limit {
                    t.examples.push(lead.lead_id.clone());
                }
            }
        }
        std::future::ready(Ok(()))
    })
    .await?;
    result.transitions = moves.into_values().collect();
    Ok(result)
}

/// Progress of a rescore, readable while it runs.
#[derive(Debug, Default)]
pub struct RescoreProgress {
    pub total: AtomicU64,
    pub processed: AtomicU64,
    pub rebuilt: AtomicU64,
    pub stage_changes: AtomicU64,
}

/// Recomputes every stored lead under the active rule set: tallies from
/// complete raw histories (compare-and-set against signals arriving
/// meanwhile), then qualification. Safe to run again: an up-to-date lead is
/// neither rewritten nor moved.
pub async fn rescore(state: &AppState, progress: &RescoreProgress) -> Result<(), StoreError> {
    let store = state.store.as_ref();
    let mut total = 0;
    for partition in 0..store.partitions() {
        total += store.lead_ids(partition).await?.len() as u64;
    }
    progress.total.store(total, Ordering::Relaxed);
    let rules = state.rules();
    for_each_lead(store, |batch| {
        let rules = rules.clone();
        async move {
            let work = batch.into_iter().map(|(lead, history)| {
                let rules = rules.clone();
                async move {
                    let lead = rescore_lead(state, &rules, lead, history, progress).await?;
                    let before = lead.stage;
                    let after = requalify(state, &rules, lead).await?;
                    if after.stage != before {
                        progress.stage_changes.fetch_add(1, Ordering::Relaxed);
                    }
                    progress.processed.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, StoreError>(())
                }
            });
            futures::stream::iter(work).buffer_unordered(16).try_collect::<Vec<()>>().await.map(|_| ())
        }
    })
    .await
}

/// Whether two leads hold the same tallies, sums compared to within floating
/// point noise (Redis' Lua and Rust may round `2^x` differently in the last
/// bit).
fn same_tallies(a: &LeadSnapshot, b: &LeadSnapshot) -> bool {
    a.daily == b.daily
        && a.tallies.len() == b.tallies.len()
        && a.tallies.iter().zip(&b.tallies).all(|((ta, x), (tb, y))| {
            ta == tb
                && x.counted == y.counted
                && x.last_at == y.last_at
                && x.sums.len() == y.sums.len()
                && x.sums
                    .iter()
                    .zip(&y.sums)
                    .all(|((ma, sa), (mb, sb))| ma == mb && (sa - sb).abs() <= 1e-9 * (1.0 + sa.abs().max(sb.abs())))
        })
}

/// Rewrites one lead's tallies if its history rebuilds them differently.
async fn rescore_lead(
    state: &AppState,
    rules: &ActiveRules,
    mut lead: LeadSnapshot,
    mut history: Vec<HistoryEntry>,
    progress: &RescoreProgress,
) -> Result<LeadSnapshot, StoreError> {
    for _ in 0..MAX_ATTEMPTS {
        let Some(rebuilt) = rebuild(rules, &lead, &history, &state.policy) else { return Ok(lead) };
        if same_tallies(&rebuilt, &lead) {
            return Ok(lead);
        }
        if state.store.replace_tallies(&rebuilt).await? {
            progress.rebuilt.fetch_add(1, Ordering::Relaxed);
            return Ok(rebuilt);
        }
        // A signal arrived meanwhile: read again.
        let ids = std::slice::from_ref(&lead.lead_id);
        let (mut leads, mut histories) =
            futures::try_join!(state.store.load_leads(ids), state.store.signal_histories(ids))?;
        match (leads.pop().flatten(), histories.pop()) {
            (Some(l), Some(h)) => (lead, history) = (l, h),
            _ => return Ok(lead),
        }
    }
    Ok(lead)
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
        };
        let fires = trigger_fires(rules, &lead, std::slice::from_ref(&change));
        if let StageUpdate::Applied { .. } = state
            .store
            .change_stage(lead_id, Stage::Anonymous, std::slice::from_ref(&change), &fires, &state.feed)
            .await?
        {
            lead.stage = Stage::Lead;
            lead.stage_since = now;
        }
    }
    let lead = requalify(state, rules, lead).await?;
    Ok(Identified::Merged { lead, merged_signals })
}

/// Starts a background rescore under the active rule set, unless one is
/// running (then returns that one, and `false`).
pub fn start_rescore(state: Arc<AppState>) -> (Arc<RescoreJob>, bool) {
    let version = state.rules().version.clone();
    let (job, started) = state.jobs.start(&version, state.clock.now());
    if started {
        let job = job.clone();
        tokio::spawn(async move {
            tracing::info!(job_id = %job.id, version = %job.rule_set_version, "rescore started");
            let outcome = rescore(&state, &job.progress).await;
            let now = state.clock.now();
            match outcome {
                Ok(()) => {
                    let p = &job.progress;
                    tracing::info!(
                        job_id = %job.id,
                        processed = p.processed.load(Ordering::Relaxed),
                        rebuilt = p.rebuilt.load(Ordering::Relaxed),
                        stage_changes = p.stage_changes.load(Ordering::Relaxed),
                        "rescore done"
                    );
                    job.finish(JobState::Done, now);
                }
                Err(e) => {
                    tracing::error!(job_id = %job.id, error = %e, "rescore failed");
                    job.finish(JobState::Failed(e.to_string()), now);
                }
            }
        });
    }
    (job, started)
}

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
            lead: after,
        };
        if store.commit(&plan, &state.policy, &state.feed).await? {
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
