//! Rebuilding tallies from raw histories: simulation and rescoring.

use super::*;

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

/// Calls `visit` with every stored lead and its raw history, chunk by
/// chunk, until it answers `false` (then returns `false`).
async fn for_each_lead<F, Fut>(store: &dyn LeadStore, mut visit: F) -> Result<bool, StoreError>
where
    F: FnMut(Vec<(LeadSnapshot, Vec<HistoryEntry>)>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    for partition in 0..store.partitions() {
        let ids = store.lead_ids(partition).await?;
        for chunk in ids.chunks(CHUNK) {
            let (leads, histories) = futures::try_join!(store.load_leads(chunk), store.signal_histories(chunk))?;
            let batch = leads.into_iter().zip(histories).filter_map(|(lead, h)| lead.map(|l| (l, h))).collect();
            if !visit(batch).await? {
                return Ok(false);
            }
        }
    }
    Ok(true)
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
    /// Conditions that failed to evaluate, by rule id.
    pub rule_errors: Vec<RuleErrors>,
}

/// The leads on which one rule's condition failed to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors {
    pub rule_id: String,
    pub leads: u64,
    pub examples: Vec<LeadId>,
    /// The first failure's description.
    pub error: String,
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
    let mut errors: std::collections::BTreeMap<String, RuleErrors> = std::collections::BTreeMap::new();
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
            let (rule_moves, failures) = candidate.qualify_reporting(&lead, now);
            let mut seen = std::collections::BTreeSet::new();
            for failure in failures {
                if !seen.insert(failure.rule_id.clone()) {
                    continue;
                }
                let e = errors.entry(failure.rule_id.clone()).or_insert_with(|| RuleErrors {
                    rule_id: failure.rule_id,
                    leads: 0,
                    examples: Vec::new(),
                    error: failure.error,
                });
                e.leads += 1;
                if e.examples.len() < sample_limit {
                    e.examples.push(lead.lead_id.clone());
                }
            }
            if let Some(last) = rule_moves.last() {
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
        std::future::ready(Ok(true))
    })
    .await?;
    result.transitions = moves.into_values().collect();
    result.rule_errors = errors.into_values().collect();
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

/// Recomputes every stored lead under `rules`: tallies from complete raw
/// histories (compare-and-set against signals arriving meanwhile), then
/// qualification. Safe to run again: an up-to-date lead is neither
/// rewritten nor moved. Stops between chunks once `stop` says so (a newer
/// rule set's rescore took over); returns whether it went through.
pub async fn rescore(
    state: &AppState,
    rules: Arc<ActiveRules>,
    progress: &RescoreProgress,
    stop: impl Fn() -> bool,
) -> Result<bool, StoreError> {
    let store = state.store.as_ref();
    let mut total = 0;
    for partition in 0..store.partitions() {
        total += store.lead_ids(partition).await?.len() as u64;
    }
    progress.total.store(total, Ordering::Relaxed);
    for_each_lead(store, |batch| {
        let rules = rules.clone();
        let stopped = stop();
        async move {
            if stopped {
                return Ok(false);
            }
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
            futures::stream::iter(work).buffer_unordered(16).try_collect::<Vec<()>>().await.map(|_| true)
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
        let now = state.clock.now();
        let unchanged = match rebuild(rules, &lead, &history, &state.policy) {
            None => true,
            Some(rebuilt) if same_tallies(&rebuilt, &lead) => true,
            Some(rebuilt) => {
                if state.store.replace_tallies(&rebuilt, now).await? {
                    progress.rebuilt.fetch_add(1, Ordering::Relaxed);
                    return Ok(rebuilt);
                }
                false
            }
        };
        if unchanged {
            state.store.refresh_fit(&lead, now).await?;
            return Ok(lead);
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

/// Starts a background rescore under the active rule set, unless one is
/// running under it (then returns that one, and `false`). One running
/// under an older rule set is superseded: it stops at its next chunk.
pub fn start_rescore(state: Arc<AppState>) -> (Arc<RescoreJob>, bool) {
    let rules = state.rules();
    let (job, started) = state.jobs.start(&rules.version, state.clock.now());
    if started {
        let job = job.clone();
        tokio::spawn(async move {
            // Should the task end without finishing the job (a panic), the
            // job fails rather than holding every later rescore back.
            let _unfinished = Unfinished(job.clone(), state.clock.clone());
            if let Some(previous) = job.take_previous() {
                previous.wait_finished().await;
            }
            tracing::info!(job_id = %job.id, version = %job.rule_set_version, "rescore started");
            let outcome = rescore(&state, rules, &job.progress, || job.superseded_by().is_some()).await;
            let now = state.clock.now();
            match outcome {
                Ok(false) => {
                    let by = job.superseded_by().unwrap_or_default();
                    tracing::info!(job_id = %job.id, superseded_by = %by, "rescore superseded by a newer rule set's");
                    job.finish(JobState::Superseded(by), now);
                }
                Ok(true) => {
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

/// Finishes a job still running when dropped, as failed.
struct Unfinished(Arc<RescoreJob>, Arc<dyn crate::domain::Clock>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.0.state().0 == JobState::Running {
            tracing::error!(job_id = %self.0.id, "rescore stopped unexpectedly");
            self.0.finish(JobState::Failed("the rescore stopped unexpectedly".into()), self.1.now());
        }
    }
}
