//! Simulating a rule set over every stored lead, and rescoring under one.

use super::*;

/// Leads read per store round trip when walking all leads.
const CHUNK: usize = 500;

/// Calls `visit` with every stored lead, partition by partition, chunk by
/// chunk (bounded memory), until it answers `false` (then returns `false`).
/// The next chunk of a partition is read while `visit` works on one, so the
/// store and the service work at the same time.
async fn for_each_lead<F, Fut>(store: &dyn crate::store::Leads, mut visit: F) -> Result<bool, StoreError>
where
    F: FnMut(Vec<LeadState>) -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    for partition in 0..store.partitions() {
        let ids = store.lead_ids(partition).await?;
        let mut chunks = ids.chunks(CHUNK);
        let Some(first) = chunks.next() else { continue };
        let mut loaded = store.load(first).await?;
        loop {
            let next = chunks.next();
            let read_next = async {
                match next {
                    Some(chunk) => store.load(chunk).await.map(Some),
                    None => Ok(None),
                }
            };
            let (go_on, next_loaded) =
                futures::future::join(visit(loaded.into_iter().flatten().collect()), read_next).await;
            if !go_on? {
                return Ok(false);
            }
            match next_loaded? {
                Some(next_loaded) => loaded = next_loaded,
                None => break,
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

/// What `candidate` would do to every stored lead now (see `simulate`).
pub async fn simulate_now(state: &Core, candidate: &RuleSet, sample_limit: usize) -> Result<Simulation, StoreError> {
    simulate(state.store.as_ref(), candidate, &state.policy, state.clock.now(), sample_limit).await
}

/// The digest the store holds for a rule-set version, where it differs
/// from `rules`' own: that version was used for other content, and
/// activating `rules` would be refused.
pub async fn version_clash(state: &Core, rules: &RuleSet) -> Result<Option<String>, StoreError> {
    Ok(state.store.rule_set_version_digest(&rules.version).await?.filter(|known| *known != rules.digest))
}

/// What `candidate` would do to every stored lead now, writing nothing: each
/// lead's score is recomputed under the candidate (from its raw history when
/// complete) and its rules run from the lead's current stage. A lead is
/// counted once, from its stage to where the candidate's rules would leave it.
pub async fn simulate(
    store: &dyn crate::store::Leads,
    candidate: &RuleSet,
    policy: &crate::domain::IngestPolicy,
    now: Timestamp,
    sample_limit: usize,
) -> Result<Simulation, StoreError> {
    let mut result = Simulation::default();
    let mut moves: std::collections::BTreeMap<(Stage, Stage), Transition> = std::collections::BTreeMap::new();
    let mut errors: std::collections::BTreeMap<String, RuleErrors> = std::collections::BTreeMap::new();
    for_each_lead(store, |batch| {
        for stored in batch {
            result.leads_evaluated += 1;
            let lead = match transition::rebuild(candidate, &stored, policy) {
                Some(rebuilt) => {
                    result.leads_rebuilt += 1;
                    rebuilt
                }
                None => stored.lead,
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
    /// Leads written: their score, cohort place or stage moved (the rest
    /// were up to date).
    pub rewritten: AtomicU64,
}

/// Recomputes every stored lead under `rules`: tallies from complete raw
/// histories, fit, cohort place and qualification, in one write per lead
/// (compare-and-set against signals arriving meanwhile), a chunk of leads
/// per round trip. Safe to run again: an up-to-date lead is neither
/// rewritten nor moved. Stops between chunks once `stop` says so (a newer
/// rule set's rescore took over); returns whether it went through.
pub async fn rescore(
    state: &Core,
    rules: Arc<ActiveRules>,
    progress: &RescoreProgress,
    stop: impl Fn() -> bool,
) -> Result<bool, StoreError> {
    let store = state.store.as_ref();
    let settings = settings(state);
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
            let now = state.clock.now();
            let mut steps = Vec::new();
            let mut retry = Vec::new();
            for stored in batch {
                match transition::rescore(&rules, &settings, now, stored) {
                    Some(step) => steps.push(step),
                    None => {
                        progress.processed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let changes: Vec<LeadChange> = steps.iter().map(|s| s.change.clone()).collect();
            let written = write(state, &changes).await?;
            for (step, ok) in steps.into_iter().zip(written) {
                if ok {
                    count(progress, step.answer, true);
                } else {
                    retry.push(step.change.state.lead.lead_id);
                }
            }
            // Leads that changed meanwhile: one at a time, read again.
            let work = retry.into_iter().map(|lead_id| {
                let rules = rules.clone();
                async move {
                    let (answer, wrote) = change_one(state, &lead_id, |stored, now| {
                        Ok(match stored.and_then(|s| transition::rescore(&rules, &settings, now, s)) {
                            Some(step) => (Some(step.change), (step.answer, true)),
                            None => (None, (transition::Rescored::default(), false)),
                        })
                    })
                    .await?;
                    count(progress, answer, wrote);
                    Ok::<_, StoreError>(())
                }
            });
            futures::stream::iter(work).buffer_unordered(16).try_collect::<Vec<()>>().await.map(|_| true)
        }
    })
    .await
}

fn count(progress: &RescoreProgress, answer: transition::Rescored, wrote: bool) {
    if wrote {
        progress.rewritten.fetch_add(1, Ordering::Relaxed);
    }
    if answer.rebuilt {
        progress.rebuilt.fetch_add(1, Ordering::Relaxed);
    }
    if answer.stage_changed {
        progress.stage_changes.fetch_add(1, Ordering::Relaxed);
    }
    progress.processed.fetch_add(1, Ordering::Relaxed);
}

/// Starts a background rescore under the active rule set, unless one is
/// running under it (then returns that one, and `false`). One running
/// under an older rule set is superseded: it stops at its next chunk.
pub fn start_rescore(state: Arc<Core>) -> (Arc<RescoreJob>, bool) {
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
                        rewritten = p.rewritten.load(Ordering::Relaxed),
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
