//! The scoring core: every rule of a lead's life, written once.
//!
//! From a lead's stored state, one input (signals, a profile, a sales
//! decision, an identified visitor, a rescore, an inactivity check), the
//! rule set and `now`, each function here computes the lead's new state and
//! everything the step does: qualification changes for the feed, fired
//! triggers, and the deltas of every aggregate (funnel, cohorts, score
//! history, lead and inactivity indexes, account lists). Pure: no I/O, no
//! clock. The stores write a `LeadChange` atomically if the lead is still
//! at the version it was read at; the engine reads, calls this, writes, and
//! retries on a conflict.
//!
//! Rules kept here: dedupe, caps and decay (through `LeadLedger` and
//! `TypeTally`), fit and scores, first touch, funnel entries (passed stages,
//! time to stage, reopened leads, won deals), cohort places, score history,
//! qualification with chaining, forward-only rule moves, allowed manual
//! moves, trigger conditions and cooldowns, inactivity, visitor merges.

use std::collections::BTreeSet;

use crate::domain::attribution::{self, Journey, Touch};
use crate::domain::expansion;
use crate::domain::ledger::fingerprint;
use crate::domain::profiles::{
    self, CohortCounter, FunnelCounter, FunnelEntry, ModelScore, Month, QUALIFIED_STAGES, ScoreBucket,
    ScoreHistoryEntry, funnel_groups,
};
use crate::domain::sla::{Agreement, Pending};
use crate::domain::state::{
    AggregateDelta, CohortPlace, Due, FirstTouch, LeadChange, LeadState, MAX_VISITORS, day_expires,
};
use crate::domain::{
    Breach, Cause, EventId, FiredTrigger, IngestPolicy, LeadId, LeadLedger, LeadProfile, LeadSnapshot, ScoreSnapshot,
    ScoredSignal, SignalStatus, Stage, StageChange, Timestamp, TriggerFire,
};
use crate::rules::RuleSet;
use crate::rules::triggers::TriggerDefinition;

/// How much a lead keeps, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub ingest: IngestPolicy,
    /// Stage changes kept per lead.
    pub stage_history: usize,
    /// Score history entries kept per lead; 0 keeps none.
    pub score_history: usize,
    pub score_history_age_ms: i64,
    /// How long funnel counters are kept after their day.
    pub funnel_retention_ms: i64,
}

impl Settings {
    pub fn new(ingest: IngestPolicy) -> Self {
        const DAY: i64 = 86_400_000;
        Self {
            ingest,
            stage_history: 100,
            score_history: 50,
            score_history_age_ms: 180 * DAY,
            funnel_retention_ms: 800 * DAY,
        }
    }
}

/// A step's result: the change to write and what the step answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<T> {
    pub change: LeadChange,
    pub answer: T,
}

/// Why a `SetStage` is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum StageRefusal {
    NotFound,
    /// The lead is not in the stage the caller expected.
    Changed {
        expected: Stage,
        current: Stage,
    },
    /// The rule set does not allow the move.
    NotAllowed {
        from: Stage,
        to: Stage,
        allowed: Vec<Stage>,
    },
}

/// A sales decision (`SetStage`).
#[derive(Debug, Clone, PartialEq)]
pub struct StageRequest {
    pub to: Stage,
    /// The stage the caller saw (compare-and-set), if it said.
    pub expected: Option<Stage>,
    pub actor: String,
    pub reason: String,
    pub deal_amount: Option<f64>,
}

/// Why identifying a visitor did nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum IdentifyRefusal {
    UnknownVisitor,
    AlreadyIdentified(LeadId),
}

/// How a lead a step creates starts.
struct New {
    stage: Stage,
    /// When the CRM created it (default: now).
    created_at: Option<Timestamp>,
    touch: Option<FirstTouch>,
}

impl New {
    fn in_stage(stage: Stage) -> Self {
        Self { stage, created_at: None, touch: None }
    }
}

/// A change being built.
struct Builder<'r> {
    rules: &'r RuleSet,
    settings: &'r Settings,
    now: Timestamp,
    state: LeadState,
    change: LeadChange,
    /// The journey as stored, kept once this step changes it: its credit
    /// deltas are computed when the step finishes.
    journey_before: Option<Journey>,
}

impl<'r> Builder<'r> {
    /// From the stored state, or a new lead created now in `initial_stage`
    /// (its creation counted in the funnel at `created_at`, now if unknown,
    /// under `touch` if known).
    fn begin(
        rules: &'r RuleSet,
        settings: &'r Settings,
        now: Timestamp,
        stored: Option<LeadState>,
        lead_id: &LeadId,
        new: New,
    ) -> Self {
        let New { stage: initial_stage, created_at, touch } = new;
        let (state, created) = match stored {
            Some(state) => (state, false),
            None => {
                let mut lead = LeadSnapshot::new(lead_id.clone(), now);
                lead.stage = initial_stage;
                (LeadState::new(lead), true)
            }
        };
        let change = LeadChange {
            expected_version: state.version,
            // Filled in by `finish` (a copy here would cost a whole record).
            state: LeadState::new(LeadSnapshot::new(lead_id.clone(), now)),
            feed: Vec::new(),
            triggers: Vec::new(),
            aggregates: Vec::new(),
            indexed_at: None,
            due: Vec::new(),
            account: None,
            erase: None,
        };
        let mut b = Self { rules, settings, now, state, change, journey_before: None };
        if created {
            let at = created_at.unwrap_or(now);
            b.state.first_touch = touch;
            let entry = creation_entry(initial_stage);
            for stage in &entry.passed {
                b.journey().reach(*stage, at);
            }
            let groups = funnel_groups(b.state.first_touch.as_ref().map(|t| &t.values));
            b.count(&groups, &entry, at, 1.0);
            b.state.funnel_reached = profiles::funnel_rank(initial_stage);
            if b.state.first_touch.is_none() {
                b.state.untouched_creation = Some((at, initial_stage));
            }
            b.change.indexed_at = Some(b.state.lead.created_at);
        }
        b
    }

    /// The journey, to change: the stored one is kept first.
    fn journey(&mut self) -> &mut Journey {
        if self.journey_before.is_none() {
            self.journey_before = Some(self.state.journey.clone());
            self.state.journey.half_life_ms = self.rules.attribution_half_life_ms;
        }
        &mut self.state.journey
    }

    /// Adds a touch to the journey (if it changes what is kept).
    fn add_touch(&mut self, touch: Touch) {
        if self.state.journey.would_add(&touch) {
            self.journey().add_touch(touch);
        }
    }

    fn created(&self) -> bool {
        self.change.expected_version == 0
    }

    /// Adds (`sign` 1) or takes back (-1) a funnel entry's counters for
    /// some groups on the day of `at`.
    fn count(&mut self, groups: &[String], entry: &FunnelEntry, at: Timestamp, sign: f64) {
        let increments: Vec<_> = entry.increments().into_iter().map(|(counter, by)| (counter, sign * by)).collect();
        self.count_counters(groups, &increments, at);
    }

    /// Adds funnel counter increments for some groups on the day of `at`.
    fn count_counters(&mut self, groups: &[String], increments: &[(FunnelCounter, f64)], at: Timestamp) {
        let day = at.utc_day();
        let expires = day_expires(day, self.settings.funnel_retention_ms);
        for group in groups {
            for &(counter, by) in increments {
                let group = group.clone();
                self.change.aggregates.push(AggregateDelta::Funnel { day, group, counter, by, expires });
            }
        }
    }

    /// Takes the candidate as the lead's first touch if it is earlier,
    /// moving a creation entry counted before any touch under it.
    fn earlier_touch(&mut self, candidate: Option<FirstTouch>) {
        let Some(candidate) = candidate else { return };
        if self.state.first_touch.as_ref().is_some_and(|t| (candidate.at, &candidate.values) >= (t.at, &t.values)) {
            return;
        }
        let first = self.state.first_touch.is_none();
        self.state.first_touch = Some(candidate);
        if let (true, Some((at, stage))) = (first, self.state.untouched_creation.take()) {
            // The all-leads group stays; the first-touch groups move.
            let entry = creation_entry(stage);
            let untouched = funnel_groups(None);
            let touched = funnel_groups(self.state.first_touch.as_ref().map(|t| &t.values));
            self.count(&untouched[1..], &entry, at, -1.0);
            self.count(&touched[1..], &entry, at, 1.0);
        }
    }

    /// Counts the lead entering a stage in the funnel.
    fn enter(&mut self, change: &StageChange) {
        if QUALIFIED_STAGES.contains(&change.to) {
            self.state.reached_mql = true;
        }
        let passed = profiles::newly_passed(self.state.funnel_reached, change.to);
        for stage in &passed {
            if attribution::CREDITED_STAGES.contains(stage) && !self.state.journey.has_reached(*stage) {
                self.journey().reach(*stage, change.at);
            }
        }
        if let Some(amount) = change.deal_amount
            && change.to == Stage::Customer
        {
            self.journey().won(change.at, attribution::micros(amount), false);
        }
        self.state.funnel_reached = self.state.funnel_reached.max(profiles::funnel_rank(change.to));
        let entry = FunnelEntry {
            passed,
            stage: change.to,
            since_created_ms: change.at.millis() - self.state.lead.created_at.millis(),
            reopened: change.from == Stage::Recycled && matches!(change.cause, Cause::Rule { .. }),
            deal_amount: change.deal_amount,
        };
        let groups = funnel_groups(self.state.first_touch.as_ref().map(|t| &t.values));
        self.count(&groups, &entry, change.at, 1.0);
    }

    /// The follow-up agreement: a lead leaving MQL by `SetStage` is sales'
    /// decision on its hand-over (counted in time or late, with its speed
    /// to lead; by a rule, the hand-over ends uncounted); a lead entering
    /// MQL under an agreement is handed over, with a deadline.
    fn follow_up(&mut self, change: &StageChange) {
        if change.from == Stage::Mql {
            if let Some(pending) = self.state.handover.take() {
                let groups = funnel_groups(self.state.first_touch.as_ref().map(|t| &t.values));
                // A deadline passed that the sweep had not got to yet: its
                // breach counts now (no trigger: the lead has moved on).
                if change.at > pending.due && !pending.breached {
                    self.count_counters(&groups, &[(FunnelCounter::Breached, 1.0)], pending.due);
                }
                // A rule moving the lead on (a hand-raiser to SQL, a
                // disqualifier) ends the hand-over without a sales decision.
                if matches!(change.cause, Cause::Manual { .. }) {
                    let on_time = change.at <= pending.due;
                    let waited = change.at.millis().saturating_sub(pending.handed_at.millis());
                    self.count_counters(&groups, &profiles::decision_increments(on_time, waited), change.at);
                }
            }
            // Off the desk, even a lead whose hand-over an older release
            // dropped (see docs/storage.md).
            self.change.due.push((Due::Waiting, None));
            self.change.due.push((Due::Deadline, None));
        }
        if change.to == Stage::Mql
            && let Some(agreement) = &self.rules.sla
        {
            let pending = Pending { handed_at: change.at, due: agreement.due(change.at), breached: false };
            self.state.handover = Some(pending);
            self.change.due.push((Due::Waiting, Some(pending.handed_at)));
            self.change.due.push((Due::Deadline, Some(pending.due)));
        }
    }

    /// Fires `fire` unless its cooldown for the lead still runs at `at`.
    fn fire(&mut self, fire: TriggerFire, at: Timestamp) -> bool {
        let last = self.state.lead.trigger_fired.get(&fire.trigger.definition_id);
        if last.is_some_and(|last| at.millis() - last.millis() < fire.cooldown_ms) {
            return false;
        }
        self.state.lead.trigger_fired.insert(fire.trigger.definition_id.clone(), at);
        self.change.triggers.push(fire.trigger);
        true
    }

    /// Moves the lead through `changes`, firing each one's triggers.
    fn apply_changes(&mut self, changes: Vec<StageChange>, fires: Vec<Vec<TriggerFire>>) {
        let mut fires = fires.into_iter();
        for change in changes {
            for fire in fires.next().unwrap_or_default() {
                self.fire(fire, change.at);
            }
            self.state.lead.stage = change.to;
            self.state.lead.stage_since = change.at;
            self.follow_up(&change);
            self.enter(&change);
            self.state.stages.push_front(change.clone());
            self.change.feed.push(change);
        }
        self.state.stages.truncate(self.settings.stage_history.max(1));
    }

    /// Whatever moves the qualification rules make now, each with the
    /// triggers of the stage it enters.
    fn qualify(&mut self) {
        let changes = rule_changes(self.rules, &self.state.lead, self.now);
        if changes.is_empty() {
            return;
        }
        let fires = trigger_fires(self.rules, &self.state.lead, &changes);
        self.apply_changes(changes, fires);
    }

    /// Records signals (in order); returns their statuses and the types
    /// that counted. Fires the triggers the signals fire.
    /// `prints[i]` is the fingerprint of `signals[i]`'s event id.
    fn record(&mut self, signals: &[ScoredSignal], prints: &[u64]) -> (Vec<SignalStatus>, BTreeSet<String>) {
        let may_fire = self.rules.ingest_may_fire(signals.iter().map(|s| s.signal_type.as_str()));
        let before = may_fire.then(|| self.state.lead.clone());
        let statuses: Vec<SignalStatus> = signals
            .iter()
            .zip(prints)
            .map(|(s, print)| {
                self.state.ledger.record_print(&mut self.state.lead, *print, s, self.now, &self.settings.ingest)
            })
            .collect();
        let recorded = signals.iter().zip(&statuses).filter(|(_, st)| **st != SignalStatus::Duplicate);
        self.earlier_touch(earliest_touch(recorded.clone().map(|(s, _)| s)));
        for (s, _) in recorded {
            self.add_touch(Touch { at: s.occurred_at, values: profiles::first_touch(&s.properties) });
        }
        let counted: BTreeSet<String> = signals
            .iter()
            .zip(&statuses)
            .filter(|(_, st)| **st == SignalStatus::Accepted)
            .map(|(s, _)| s.signal_type.clone())
            .collect();
        let fired = match &before {
            Some(before) => self.rules.ingest_triggers(before, &self.state.lead, &counted, self.now),
            None => Vec::new(),
        };
        if !fired.is_empty() {
            let score = ScoreSnapshot::of(&self.rules.primary().score(&self.state.lead, self.now));
            let reasons = counted.iter().cloned().collect::<Vec<_>>().join(", ");
            for def in fired {
                let reason = format!("{} after {reasons}", def.on);
                let fire = fire(def, &self.state.lead, self.now, reason, score.clone(), self.state.lead.stage);
                self.fire(fire, self.now);
            }
        }
        if !counted.is_empty() {
            for (def, _) in self.rules.inactivity_triggers() {
                self.change.due.push((Due::Inactivity(def.id.clone()), Some(self.now)));
            }
        }
        (statuses, counted)
    }

    /// Brings the lead's cohort place up to date, and adds a score history
    /// entry for `cause` (with `dedupe`, not when the scores equal the
    /// newest entry's).
    fn touch(&mut self, cause: Option<String>, dedupe: bool) {
        let scores = model_scores(self.rules, &self.state.lead, self.now);
        let place = self.place(&scores);
        self.move_place(place);
        let Some(cause) = cause else { return };
        self.add_history(cause, scores, dedupe);
    }

    /// Moves the lead's counts in the cohort aggregates to `place` (none:
    /// it no longer counts).
    fn move_place(&mut self, place: Option<CohortPlace>) {
        let old = self.state.cohort.take();
        if let Some(old) = &old
            && place.as_ref().is_none_or(|new| !new.same_counters(old))
        {
            for group in &old.groups {
                self.cohort_count(old.month, group, CohortCounter::InStage(old.stage), -1);
                if old.reached_mql {
                    self.cohort_count(old.month, group, CohortCounter::ReachedMql, -1);
                }
                for s in &old.scores {
                    self.cohort_score(old.month, &s.model, group, ScoreBucket::of(s.total()), -1);
                }
            }
        }
        if let Some(new) = &place {
            let moved = old.as_ref().is_none_or(|old| !new.same_counters(old));
            for group in &new.groups {
                if moved {
                    self.cohort_count(new.month, group, CohortCounter::InStage(new.stage), 1);
                    if new.reached_mql {
                        self.cohort_count(new.month, group, CohortCounter::ReachedMql, 1);
                    }
                }
                for (i, s) in new.scores.iter().enumerate() {
                    let bucket = ScoreBucket::of(s.total());
                    // Same counters: the old place is still counted, so only
                    // a score that changed bucket moves.
                    let was = old.as_ref().filter(|_| !moved).and_then(|o| o.scores.get(i));
                    let was = was.map(|o| ScoreBucket::of(o.total()));
                    if was != Some(bucket) {
                        if let Some(was) = was {
                            self.cohort_score(new.month, &s.model, group, was, -1);
                        }
                        self.cohort_score(new.month, &s.model, group, bucket, 1);
                    }
                }
            }
        }
        self.state.cohort = place;
    }

    /// A score history entry for `cause` (with `dedupe`, not when the
    /// scores equal the newest entry's).
    fn add_history(&mut self, cause: String, scores: Vec<ModelScore>, dedupe: bool) {
        if self.settings.score_history == 0 {
            return;
        }
        // Kept to the hundredth of a point, as the API reports them.
        let scores: Vec<ModelScore> = scores
            .into_iter()
            .map(|s| ModelScore { model: s.model, behavior: hundredths(s.behavior), fit: hundredths(s.fit) })
            .collect();
        let history = &mut self.state.score_history;
        if dedupe && history.front().is_some_and(|newest| newest.scores == scores) {
            return;
        }
        history.push_front(ScoreHistoryEntry { at: self.now, cause, scores });
        history.truncate(self.settings.score_history);
        let oldest = self.now.millis() - self.settings.score_history_age_ms;
        while history.back().is_some_and(|e| e.at.millis() < oldest) {
            history.pop_back();
        }
    }

    fn cohort_count(&mut self, month: Month, group: &str, counter: CohortCounter, by: i64) {
        self.change.aggregates.push(AggregateDelta::CohortCount { month, group: group.to_owned(), counter, by });
    }

    fn cohort_score(&mut self, month: Month, model: &str, group: &str, bucket: ScoreBucket, by: i64) {
        let (model, group) = (model.to_owned(), group.to_owned());
        self.change.aggregates.push(AggregateDelta::CohortScore { month, model, group, bucket, by });
    }

    /// Where the lead counts in cohorts: visitors (identified or not) do not.
    fn place(&self, scores: &[ModelScore]) -> Option<CohortPlace> {
        let lead = &self.state.lead;
        if lead.lead_id.visitor().is_some() || lead.merged_into.is_some() {
            return None;
        }
        let mut groups = vec![String::new()];
        for name in &self.rules.cohort_attributes {
            if let Some(value) = lead.attributes.get(name) {
                groups.push(format!("{name}={value}"));
            }
        }
        Some(CohortPlace {
            month: Month::of(lead.created_at),
            stage: lead.stage,
            reached_mql: self.state.reached_mql,
            groups,
            scores: scores.to_vec(),
        })
    }

    fn finish(mut self) -> LeadChange {
        if self.state.journey.settled && !self.state.contributions.credits_kept {
            // From now on the journey's credit stays as given, no longer a
            // recount of it: its shares are kept, from what it gave so far.
            let before = self.journey_before.as_ref().unwrap_or(&self.state.journey);
            for d in attribution::credits_of(before) {
                self.state.contributions.credits_kept = true;
                self.state.contributions.add(&AggregateDelta::Credit {
                    day: d.day,
                    model: d.model,
                    group: attribution::credit_group(d.group_by, &d.value),
                    counter: d.counter,
                    by: d.by,
                    expires: day_expires(d.day, self.settings.funnel_retention_ms),
                });
            }
            self.state.contributions.credits_kept = true;
        }
        if let Some(before) = self.journey_before.take() {
            for d in attribution::credit_changes(&before, &self.state.journey) {
                let expires = day_expires(d.day, self.settings.funnel_retention_ms);
                self.change.aggregates.push(AggregateDelta::Credit {
                    day: d.day,
                    model: d.model,
                    group: attribution::credit_group(d.group_by, &d.value),
                    counter: d.counter,
                    by: d.by,
                    expires,
                });
            }
        }
        for delta in &self.change.aggregates {
            self.state.contributions.add(delta);
        }
        self.state.contributions.prune(self.now, self.settings.funnel_retention_ms);
        self.state.version = self.change.expected_version + 1;
        self.change.state = self.state;
        self.change
    }
}

/// Points to the hundredth.
fn hundredths(points: f64) -> f64 {
    let r = (points * 100.0).round() / 100.0;
    if r == 0.0 { 0.0 } else { r }
}

/// Every model's score of the lead at `now`, primary first, then by name.
pub fn model_scores(rules: &RuleSet, lead: &LeadSnapshot, now: Timestamp) -> Vec<ModelScore> {
    let primary = rules.primary();
    std::iter::once(primary)
        .chain(rules.models.values().filter(|m| m.name != primary.name))
        .map(|m| {
            let s = m.score(lead, now);
            ModelScore { model: s.model, behavior: s.behavior, fit: s.fit }
        })
        .collect()
}

fn creation_entry(stage: Stage) -> FunnelEntry {
    FunnelEntry {
        passed: profiles::newly_passed(0, stage),
        stage,
        since_created_ms: 0,
        reopened: false,
        deal_amount: None,
    }
}

/// The earliest of some signals as a first touch.
fn earliest_touch<'a>(signals: impl IntoIterator<Item = &'a ScoredSignal>) -> Option<FirstTouch> {
    profiles::earliest_touch(signals.into_iter().map(|s| (s.occurred_at, &s.properties)))
        .map(|(at, values)| FirstTouch { at, values })
}

/// The first touch of a lead created by a batch: the earliest of the
/// signals it will record, i.e. the first with each fingerprint (a new
/// lead remembers nothing else).
fn creation_touch(signals: &[ScoredSignal], prints: &[u64]) -> Option<FirstTouch> {
    let mut seen = BTreeSet::new();
    earliest_touch(signals.iter().zip(prints).filter(|(_, p)| seen.insert(**p)).map(|(s, _)| s))
}

/// The rule moves for `lead`, as stage changes stamped with the score.
pub fn rule_changes(rules: &RuleSet, lead: &LeadSnapshot, now: Timestamp) -> Vec<StageChange> {
    let moves = tracing::info_span!("rules.evaluate", rule_set = %rules.version).in_scope(|| rules.qualify(lead, now));
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
                deal_amount: None,
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
            breach: None,
        },
    }
}

/// The nurture triggers each change fires: the `stage_entered` definitions
/// of the stage it enters whose condition holds for the lead in that stage.
pub fn trigger_fires(rules: &RuleSet, lead: &LeadSnapshot, changes: &[StageChange]) -> Vec<Vec<TriggerFire>> {
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

/// What recording signals on one lead does.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// `None` when nothing changed (every signal a duplicate): nothing to
    /// write.
    pub change: Option<LeadChange>,
    /// One per signal, in order.
    pub statuses: Vec<SignalStatus>,
    /// The lead afterwards.
    pub lead: LeadSnapshot,
}

/// Records signals on a lead (created in `initial_stage` if new), then
/// applies the qualification rules.
pub fn record_signals(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: Option<LeadState>,
    lead_id: &LeadId,
    initial_stage: Stage,
    signals: &[ScoredSignal],
) -> Recorded {
    let prints: Vec<u64> = signals.iter().map(|s| fingerprint(s.event_id.as_str())).collect();
    let touch = creation_touch(signals, &prints);
    let mut b =
        Builder::begin(rules, settings, now, stored, lead_id, New { stage: initial_stage, created_at: None, touch });
    let (statuses, counted) = b.record(signals, &prints);
    b.qualify();
    let nothing = !b.created()
        && statuses.iter().all(|s| *s == SignalStatus::Duplicate)
        && b.change.feed.is_empty()
        && b.change.triggers.is_empty();
    if nothing {
        return Recorded { change: None, statuses, lead: b.state.lead };
    }
    let cause = (!counted.is_empty()).then(|| profiles::signals_cause(counted.iter().map(String::as_str)));
    b.touch(cause, false);
    let change = b.finish();
    Recorded { lead: change.state.lead.clone(), change: Some(change), statuses }
}

/// Creates the lead or replaces its profile (attributes as a whole,
/// `created_at` when sent), then applies the qualification rules.
pub fn upsert_profile(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: Option<LeadState>,
    profile: LeadProfile,
) -> LeadChange {
    let lead_id = profile.lead_id.clone();
    let mut b = Builder::begin(
        rules,
        settings,
        now,
        stored,
        &lead_id,
        New { stage: Stage::Lead, created_at: profile.created_at, touch: None },
    );
    let previous = b.state.lead.account_id.clone();
    b.state.lead.apply_profile(profile);
    b.change.indexed_at = Some(b.state.lead.created_at);
    if previous.is_some() || b.state.lead.account_id.is_some() {
        b.change.account = Some((previous, b.state.lead.account_id.clone()));
    }
    b.qualify();
    b.touch(Some("profile".into()), true);
    b.finish()
}

/// A sales decision: moves the lead if the rule set allows it (and it is
/// in the stage the caller expected), firing the stage's triggers.
pub fn set_stage(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: Option<LeadState>,
    request: StageRequest,
) -> Result<LeadChange, StageRefusal> {
    let Some(stored) = stored else { return Err(StageRefusal::NotFound) };
    let from = stored.lead.stage;
    if let Some(expected) = request.expected
        && expected != from
    {
        return Err(StageRefusal::Changed { expected, current: from });
    }
    let allowed = rules.manual_targets(from);
    if !allowed.contains(&request.to) {
        return Err(StageRefusal::NotAllowed { from, to: request.to, allowed: allowed.to_vec() });
    }
    let lead_id = stored.lead.lead_id.clone();
    let mut b = Builder::begin(rules, settings, now, Some(stored), &lead_id, New::in_stage(from));
    let change = StageChange {
        from,
        to: request.to,
        cause: Cause::Manual { actor: request.actor },
        reason: request.reason,
        rule_set_version: rules.version.clone(),
        score: ScoreSnapshot::of(&rules.primary().score(&b.state.lead, now)),
        at: now,
        deal_amount: request.deal_amount,
    };
    let fires = trigger_fires(rules, &b.state.lead, std::slice::from_ref(&change));
    b.apply_changes(vec![change], fires);
    b.touch(None, false);
    Ok(b.finish())
}

/// Why an expansion deal update is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpansionRefusal {
    NotFound,
    Refused(expansion::Refusal),
}

/// A customer's expansion deal (upsell, cross-sell) as the CRM reports it:
/// counted in the funnel under the lead's first touch, on the day it is
/// reported, apart from new business; a won deal's revenue is shared among
/// the lead's touches like new-business revenue. Answers the change (none
/// for an update sent again) and the deal as kept.
pub fn record_expansion(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: Option<LeadState>,
    update: expansion::Update,
) -> Result<(Option<LeadChange>, expansion::Deal), ExpansionRefusal> {
    let Some(mut stored) = stored else { return Err(ExpansionRefusal::NotFound) };
    let id = update.id.clone();
    let events =
        expansion::apply(&mut stored.expansion, stored.lead.stage, update, now).map_err(ExpansionRefusal::Refused)?;
    // `apply` keeps the deal it accepts an update of.
    let deal = stored.expansion.iter().find(|d| d.id == id).cloned().ok_or(ExpansionRefusal::NotFound)?;
    if events.is_empty() {
        return Ok((None, deal));
    }
    let lead_id = stored.lead.lead_id.clone();
    let stage = stored.lead.stage;
    let mut b = Builder::begin(rules, settings, now, Some(stored), &lead_id, New::in_stage(stage));
    let groups = funnel_groups(b.state.first_touch.as_ref().map(|t| &t.values));
    for event in &events {
        b.count_counters(&groups, &profiles::expansion_increments(*event), now);
        if let expansion::Event::Won { micros, .. } = event {
            b.journey().won(now, *micros, true);
        }
    }
    Ok((Some(b.finish()), deal))
}

/// Marks a visitor as identified as `lead_id`: its later signals go there.
/// `Ok(None)`: already marked as this lead.
pub fn mark_identified(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    visitor: Option<LeadState>,
    lead_id: &LeadId,
) -> Result<Option<LeadChange>, IdentifyRefusal> {
    let Some(visitor) = visitor else { return Err(IdentifyRefusal::UnknownVisitor) };
    match &visitor.lead.merged_into {
        Some(owner) if owner == lead_id => return Ok(None),
        Some(owner) => return Err(IdentifyRefusal::AlreadyIdentified(owner.clone())),
        None => {}
    }
    let id = visitor.lead.lead_id.clone();
    let stage = visitor.lead.stage;
    let mut b = Builder::begin(rules, settings, now, Some(visitor), &id, New::in_stage(stage));
    b.state.lead.merged_into = Some(lead_id.clone());
    b.touch(None, false);
    Ok(Some(b.finish()))
}

/// Records an identified visitor's raw history on the lead (duplicates
/// counted once, however often this runs); a lead this creates starts
/// `ANONYMOUS` and moves to `LEAD`. Answers how many signals were new.
pub fn merge_visitor(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: Option<LeadState>,
    lead_id: &LeadId,
    visitor: &LeadState,
    visitor_name: &str,
) -> Step<u32> {
    let oldest = now.plus_millis(-settings.ingest.retention_ms);
    let (prints, signals): (Vec<u64>, Vec<ScoredSignal>) = visitor
        .ledger
        .history()
        .rev()
        .filter(|e| e.occurred_at_ms >= oldest.millis())
        .filter_map(|e| Some((e.print, replay_signal(rules, e)?)))
        .unzip();
    let touch = creation_touch(&signals, &prints);
    let mut b =
        Builder::begin(rules, settings, now, stored, lead_id, New { stage: Stage::Anonymous, created_at: None, touch });
    let (statuses, counted) = b.record(&signals, &prints);
    let visitor_id = &visitor.lead.lead_id;
    if !b.state.visitors.contains(visitor_id) {
        b.state.visitors.insert(0, visitor_id.clone());
        b.state.visitors.truncate(MAX_VISITORS);
    }
    if b.state.lead.stage == Stage::Anonymous {
        let change = StageChange {
            from: Stage::Anonymous,
            to: Stage::Lead,
            cause: Cause::Manual { actor: "identify_visitor".into() },
            reason: format!("visitor {visitor_name} identified"),
            rule_set_version: rules.version.clone(),
            score: ScoreSnapshot::of(&rules.primary().score(&b.state.lead, now)),
            at: now,
            deal_amount: None,
        };
        let fires = trigger_fires(rules, &b.state.lead, std::slice::from_ref(&change));
        b.apply_changes(vec![change], fires);
    }
    b.qualify();
    let cause = (!counted.is_empty()).then(|| profiles::signals_cause(counted.iter().map(String::as_str)));
    b.touch(cause, false);
    let merged = statuses.iter().filter(|s| **s != SignalStatus::Duplicate).count() as u32;
    Step { change: b.finish(), answer: merged }
}

/// What erasing a lead removed, for its receipt.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forgotten {
    pub attributes: usize,
    /// Raw signal history entries.
    pub signals: usize,
    /// Event-id fingerprints remembered for de-duplication.
    pub event_ids: usize,
    pub stage_changes: usize,
    pub score_history: usize,
    pub touches: usize,
    pub expansion_deals: usize,
    /// Aggregate counters the lead's share was taken out of.
    pub aggregate_counters: usize,
    /// Every share the lead ever had in the aggregates was known (not for
    /// a lead an older release first wrote).
    pub exact: bool,
    /// Identified visitors merged into the lead (erased with it).
    pub visitors: Vec<LeadId>,
}

/// The retention policy `erase_unqualified_after`: a lead (or anonymous
/// visitor) that never reached MQL and has been quiet — no counted signal,
/// no stage change, not created — for `quiet_ms` by `now` is to be
/// erased. Identified visitors go with their lead, never on their own.
pub fn retention_expired(state: &LeadState, now: Timestamp, quiet_ms: i64) -> bool {
    let lead = &state.lead;
    let last = [Some(lead.created_at), Some(lead.stage_since), lead.last_engaged_at].into_iter().flatten().max();
    !state.reached_mql
        && lead.merged_into.is_none()
        && !QUALIFIED_STAGES.contains(&lead.stage)
        && last.is_some_and(|at| at.millis() <= now.millis() - quiet_ms)
}

/// Erases a lead: its record goes, its share of every aggregate is taken
/// back (its cohort place, and its funnel and credit contributions of the
/// days still kept), it leaves every index and its account, its feed and
/// trigger entries are deleted, and a tombstone is appended to the feed.
/// `None` for a lead never stored (nothing to erase).
pub fn forget(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: Option<LeadState>,
) -> Option<Step<Forgotten>> {
    let stored = stored?;
    let lead_id = stored.lead.lead_id.clone();
    let stage = stored.lead.stage;
    let answer = Forgotten {
        attributes: stored.lead.attributes.len(),
        signals: stored.ledger.history().count(),
        event_ids: stored.ledger.seen().len(),
        stage_changes: stored.stages.len(),
        score_history: stored.score_history.len(),
        touches: stored.journey.touches.len(),
        expansion_deals: stored.expansion.len(),
        aggregate_counters: 0,
        exact: stored.contributions.complete,
        visitors: stored.visitors.clone(),
    };
    let mut b = Builder::begin(rules, settings, now, Some(stored), &lead_id, New::in_stage(stage));
    b.move_place(None);
    let reversal = b.state.contributions.reversal(&b.state.journey, now, settings.funnel_retention_ms);
    b.change.aggregates.extend(reversal);
    for (def, _) in rules.inactivity_triggers() {
        b.change.due.push((Due::Inactivity(def.id.clone()), None));
    }
    b.change.due.push((Due::Waiting, None));
    b.change.due.push((Due::Deadline, None));
    if let Some(account) = b.state.lead.account_id.clone() {
        b.change.account = Some((Some(account), None));
    }
    b.change.erase = Some(crate::domain::Tombstone::new(&lead_id, now));
    let aggregate_counters = b.change.aggregates.len();
    let mut change = b.finish();
    change.state.contributions = Default::default();
    Some(Step { change, answer: Forgotten { aggregate_counters, ..answer } })
}

/// A raw history entry as a signal weighed by `rules`; `None` for a type
/// the rule set does not declare. Its event id is not kept: record it with
/// the entry's fingerprint (`LeadLedger::record_print`).
fn replay_signal(rules: &RuleSet, e: &crate::domain::ledger::HistoryEntry) -> Option<ScoredSignal> {
    let def = rules.signal_type(&e.signal_type)?;
    Some(ScoredSignal {
        event_id: replayed_id().clone(),
        signal_type: e.signal_type.clone(),
        occurred_at: Timestamp::from_millis(e.occurred_at_ms),
        daily_cap: def.daily_cap,
        weights: rules.weigh(&e.signal_type, &e.properties),
        properties: e.properties.clone(),
    })
}

/// The event id of replayed signals (never used: they are recorded by
/// fingerprint).
fn replayed_id() -> &'static EventId {
    static ID: std::sync::OnceLock<EventId> = std::sync::OnceLock::new();
    ID.get_or_init(|| EventId::parse("replayed").expect("a valid event id"))
}

/// The lead's tallies recomputed under `rules` by replaying its raw history
/// in arrival order — when the history holds every signal the lead ever
/// recorded. `None` when it does not: the stored tallies then stand.
pub fn rebuild(rules: &RuleSet, state: &LeadState, policy: &IngestPolicy) -> Option<LeadSnapshot> {
    let lead = &state.lead;
    if state.ledger.history().count() as u64 != lead.recorded {
        return None;
    }
    let mut fresh = lead.clone();
    fresh.tallies.clear();
    fresh.daily.clear();
    fresh.recorded = 0;
    fresh.last_engaged_at = None;
    let mut ledger = LeadLedger::default();
    let replay = IngestPolicy { history_limit: 0, ..*policy };
    for entry in state.ledger.history().rev() {
        match replay_signal(rules, entry) {
            Some(signal) => {
                let arrived = Timestamp::from_millis(entry.arrived_at_ms);
                ledger.record_print(&mut fresh, entry.print, &signal, arrived, &replay);
            }
            // A type the rule set no longer declares counts nothing.
            None => fresh.recorded += 1,
        }
    }
    Some(fresh)
}

/// Whether two leads hold the same tallies, sums compared to within
/// floating point noise.
fn same_tallies(a: &LeadSnapshot, b: &LeadSnapshot) -> bool {
    a.daily == b.daily
        && a.last_engaged_at == b.last_engaged_at
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

/// What a rescore did to one lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rescored {
    /// Tallies rebuilt from a complete raw history, and different.
    pub rebuilt: bool,
    pub stage_changed: bool,
}

/// Brings a lead up to `rules`: tallies rebuilt from its raw history when
/// complete, fit and cohort place refreshed, qualification applied. `None`
/// when the lead is already up to date (nothing to write).
pub fn rescore(rules: &RuleSet, settings: &Settings, now: Timestamp, stored: LeadState) -> Option<Step<Rescored>> {
    let lead_id = stored.lead.lead_id.clone();
    let stage = stored.lead.stage;
    let rebuilt = rebuild(rules, &stored, &settings.ingest).filter(|r| !same_tallies(r, &stored.lead));
    let mut b = Builder::begin(rules, settings, now, Some(stored), &lead_id, New::in_stage(stage));
    let mut answer = Rescored::default();
    if let Some(rebuilt) = rebuilt {
        b.state.lead.tallies = rebuilt.tallies;
        b.state.lead.daily = rebuilt.daily;
        b.state.lead.last_engaged_at = rebuilt.last_engaged_at;
        answer.rebuilt = true;
    }
    let scores = model_scores(rules, &b.state.lead, now);
    let fits_changed = b.state.cohort.as_ref().is_some_and(|c| {
        c.scores.len() != scores.len()
            || c.scores.iter().zip(&scores).any(|(old, new)| old.model != new.model || old.fit != new.fit)
    });
    // A score that decayed into another whole point moves the lead in its
    // cohort's distribution: a rescore brings cohorts up to date too.
    let place_changed = match (&b.state.cohort, b.place(&scores)) {
        (None, None) => false,
        (Some(old), Some(new)) => {
            !old.same_counters(&new)
                || old
                    .scores
                    .iter()
                    .zip(&new.scores)
                    .any(|(o, n)| ScoreBucket::of(o.total()) != ScoreBucket::of(n.total()))
        }
        _ => true,
    };
    // Credit shared under another half-life is shared again.
    // (A journey that dropped touches keeps the credit it gave.)
    let half_life_changed = b.state.journey.credited()
        && !b.state.journey.settled
        && b.state.journey.half_life() != rules.attribution_half_life_ms;
    if half_life_changed {
        b.journey();
    }
    b.qualify();
    answer.stage_changed = !b.change.feed.is_empty();
    if !(answer.rebuilt || fits_changed || place_changed || answer.stage_changed || half_life_changed) {
        return None;
    }
    let cause = (answer.rebuilt || fits_changed).then(|| format!("rescore:{}", rules.version));
    b.touch(cause, true);
    Some(Step { change: b.finish(), answer })
}

/// The inactivity check of one lead listed under `definition` (quiet for
/// `quiet_ms` by `now`): it leaves the index, and the trigger fires if its
/// condition holds, it has not fired in this quiet spell and its cooldown
/// is over. `None`: the lead engaged since it was listed (the ingest listed
/// it again) — nothing to write. Answers whether the trigger fired.
pub fn inactivity(
    rules: &RuleSet,
    settings: &Settings,
    now: Timestamp,
    stored: LeadState,
    definition: &TriggerDefinition,
    quiet_ms: i64,
) -> Option<Step<bool>> {
    let engaged_at = stored.lead.last_engaged_at;
    if engaged_at.is_some_and(|at| at.millis() > now.millis() - quiet_ms) {
        return None;
    }
    let lead_id = stored.lead.lead_id.clone();
    let stage = stored.lead.stage;
    let mut b = Builder::begin(rules, settings, now, Some(stored), &lead_id, New::in_stage(stage));
    b.change.due.push((Due::Inactivity(definition.id.clone()), None));
    let mut fired = false;
    if let Some(engaged_at) = engaged_at
        && rules.trigger_condition_holds(definition, &b.state.lead, now)
    {
        let spell_fired = b.state.lead.trigger_fired.get(&definition.id).is_some_and(|last| *last >= engaged_at);
        if !spell_fired {
            let quiet = crate::rules::format_duration(now.millis() - engaged_at.millis());
            let score = ScoreSnapshot::of(&rules.primary().score(&b.state.lead, now));
            let f = fire(definition, &b.state.lead, now, format!("no counted signal for {quiet}"), score, stage);
            fired = b.fire(f, now);
        }
    }
    Some(Step { change: b.finish(), answer: fired })
}

/// The follow-up check of one lead listed by its deadline: if the deadline
/// has passed without a decision, the breach is counted (on the deadline's
/// day) and the `sla_breached` triggers whose condition holds fire, with
/// the owner and how late. The lead leaves the deadline index either way;
/// it stays on the desk (`Due::Waiting`) until sales decides. `None` while
/// the deadline is ahead.
pub fn breach(
    rules: &RuleSet,
    settings: &Settings,
    agreement: &Agreement,
    now: Timestamp,
    stored: LeadState,
) -> Option<Step<bool>> {
    if stored.handover.is_some_and(|p| p.due >= now) {
        return None;
    }
    let lead_id = stored.lead.lead_id.clone();
    let stage = stored.lead.stage;
    let mut b = Builder::begin(rules, settings, now, Some(stored), &lead_id, New::in_stage(stage));
    b.change.due.push((Due::Deadline, None));
    let Some(pending) = b.state.handover.filter(|p| !p.breached) else {
        return Some(Step { change: b.finish(), answer: false });
    };
    b.state.handover = Some(Pending { breached: true, ..pending });
    let groups = funnel_groups(b.state.first_touch.as_ref().map(|t| &t.values));
    b.count_counters(&groups, &[(FunnelCounter::Breached, 1.0)], pending.due);
    let owner = b.state.lead.attributes.get(&agreement.owner_attribute).cloned().unwrap_or_default();
    let late_by_ms = now.millis().saturating_sub(pending.due.millis());
    let score = ScoreSnapshot::of(&rules.primary().score(&b.state.lead, now));
    let reason = format!("no sales decision by {} (handed over {})", pending.due, pending.handed_at);
    for def in rules.breach_triggers() {
        if rules.trigger_condition_holds(def, &b.state.lead, now) {
            let mut f = fire(def, &b.state.lead, now, reason.clone(), score.clone(), stage);
            f.trigger.breach =
                Some(Breach { owner: owner.clone(), handed_at: pending.handed_at, due: pending.due, late_by_ms });
            b.fire(f, now);
        }
    }
    Some(Step { change: b.finish(), answer: true })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::state::AggregateDelta;

    const DAY: i64 = 86_400_000;
    const NOW: Timestamp = Timestamp::from_millis(20_000 * DAY + 12 * 3_600_000);
    /// Types without a daily cap: which signal a cap refuses depends on
    /// arrival order, so order independence holds for these.
    const UNCAPPED: [&str; 6] = [
        "webinar_registered",
        "webinar_attended",
        "event_attended",
        "demo_requested",
        "meeting_scheduled",
        "email_bounce",
    ];

    fn rules() -> RuleSet {
        RuleSet::parse(crate::DEFAULT_RULES).unwrap()
    }

    fn settings() -> Settings {
        Settings::new(IngestPolicy { dedupe_window_ms: 7 * DAY, retention_ms: 90 * DAY, history_limit: 100 })
    }

    fn id(s: &str) -> LeadId {
        LeadId::parse(s).unwrap()
    }

    fn signal(rules: &RuleSet, event: &str, ty: &str, at: Timestamp) -> ScoredSignal {
        // Three campaigns, by the event id: leads touched by several.
        let campaign = ["spring", "fall", "brand"][event.bytes().map(usize::from).sum::<usize>() % 3];
        let properties =
            BTreeMap::from([("source".to_owned(), "ads".to_owned()), ("campaign".to_owned(), campaign.to_owned())]);
        ScoredSignal {
            event_id: EventId::parse(event).unwrap(),
            signal_type: ty.into(),
            occurred_at: at,
            daily_cap: rules.signal_type(ty).unwrap().daily_cap,
            weights: rules.weigh(ty, &properties),
            properties,
        }
    }

    use std::collections::BTreeMap;

    type Counts = HashMap<(Month, String, CohortCounter), i64>;
    type Credits = HashMap<(i64, attribution::Model, String, attribution::CreditCounter), i64>;
    type Scores = HashMap<(Month, String, String, ScoreBucket), i64>;
    type FunnelThousandths = Vec<((String, profiles::FunnelCounter), i64)>;

    /// What a store keeps, kept the simplest way: the properties read it.
    #[derive(Default)]
    struct Sim {
        leads: HashMap<LeadId, LeadState>,
        counts: Counts,
        scores: Scores,
        funnel: HashMap<(String, profiles::FunnelCounter), f64>,
        credits: Credits,
        feed: Vec<StageChange>,
        triggers: Vec<FiredTrigger>,
        created: u64,
    }

    impl Sim {
        fn load(&self, lead: &LeadId) -> Option<LeadState> {
            self.leads.get(lead).cloned()
        }

        fn apply(&mut self, change: LeadChange) {
            let id = change.state.lead.lead_id.clone();
            assert_eq!(self.leads.get(&id).map_or(0, |l| l.version), change.expected_version);
            assert_eq!(change.state.version, change.expected_version + 1);
            if change.expected_version == 0 {
                self.created += 1;
            }
            for delta in change.aggregates {
                match delta {
                    AggregateDelta::Funnel { group, counter, by, .. } => {
                        *self.funnel.entry((group, counter)).or_default() += by
                    }
                    AggregateDelta::CohortCount { month, group, counter, by } => {
                        *self.counts.entry((month, group, counter)).or_default() += by
                    }
                    AggregateDelta::Credit { day, model, group, counter, by, .. } => {
                        let n = self.credits.entry((day, model, group, counter)).or_default();
                        *n += by;
                        assert!(*n >= 0, "a credit went below zero");
                    }
                    AggregateDelta::CohortScore { month, model, group, bucket, by } => {
                        let key = (month, model, group, bucket);
                        let n = self.scores.get(&key).copied().unwrap_or(0) + by;
                        assert!(n >= 0, "a bucket went below zero");
                        if n == 0 {
                            self.scores.remove(&key)
                        } else {
                            self.scores.insert(key, n)
                        };
                    }
                }
            }
            self.feed.extend(change.feed);
            self.triggers.extend(change.triggers);
            if change.erase.is_some() {
                self.leads.remove(&id);
            } else {
                self.leads.insert(id, change.state);
            }
        }

        /// The aggregates as kept, zeros dropped (as the stores do).
        fn figures(&self) -> (Counts, Scores, Credits, FunnelThousandths) {
            let counts = self.counts.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.clone(), *n)).collect();
            let credits = self.credits.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.clone(), *n)).collect();
            // Funnel sums in thousandths (deal amounts are floats).
            let mut funnel: Vec<_> = self
                .funnel
                .iter()
                .map(|(k, v)| (k.clone(), (v * 1000.0).round() as i64))
                .filter(|(_, v)| *v != 0)
                .collect();
            funnel.sort();
            (counts, self.scores.clone(), credits, funnel)
        }

        fn record(&mut self, rules: &RuleSet, lead: &LeadId, signals: &[ScoredSignal], now: Timestamp) -> Recorded {
            let recorded = record_signals(rules, &settings(), now, self.load(lead), lead, Stage::Lead, signals);
            if let Some(change) = recorded.change.clone() {
                self.apply(change);
            }
            recorded
        }

        /// The credits recounted from every lead's journey.
        fn recount_credits(&self) -> Credits {
            let mut credits = Credits::new();
            for state in self.leads.values() {
                let none = Journey { half_life_ms: state.journey.half_life_ms, ..Journey::default() };
                let all = attribution::credit_changes(&none, &state.journey);
                for d in all {
                    let group = attribution::credit_group(d.group_by, &d.value);
                    *credits.entry((d.day, d.model, group, d.counter)).or_default() += d.by;
                }
            }
            credits
        }

        /// The cohort aggregates recounted from every lead's place.
        fn recount(&self) -> (Counts, Scores) {
            let (mut counts, mut scores) = (HashMap::new(), HashMap::new());
            for state in self.leads.values() {
                let Some(place) = &state.cohort else { continue };
                for group in &place.groups {
                    *counts.entry((place.month, group.clone(), CohortCounter::InStage(place.stage))).or_default() += 1;
                    if place.reached_mql {
                        *counts.entry((place.month, group.clone(), CohortCounter::ReachedMql)).or_default() += 1;
                    }
                }
                for (model, group, bucket) in place.score_buckets() {
                    *scores.entry((place.month, model.to_owned(), group.to_owned(), bucket)).or_default() += 1;
                }
            }
            (counts, scores)
        }
    }

    fn signals_from(rules: &RuleSet, raw: &[(usize, i64)]) -> Vec<ScoredSignal> {
        raw.iter()
            .enumerate()
            .map(|(i, (ty, minutes))| {
                signal(rules, &format!("e{i}"), UNCAPPED[ty % UNCAPPED.len()], NOW.plus_millis(-minutes * 60_000))
            })
            .collect()
    }

    fn behavior(state: &LeadState, rules: &RuleSet) -> f64 {
        rules.primary().score(&state.lead, NOW).behavior
    }

    /// One random operation on a lead: a signal, a profile upsert, a sales
    /// decision or a rescore.
    fn play(sim: &mut Sim, rules: &RuleSet, settings: &Settings, n: usize, op: (usize, usize, usize, i64)) {
        let (kind, lead, x, minutes) = op;
        let lead = id(&format!("lead-{lead}"));
        let now = NOW.plus_millis(n as i64 * 60_000);
        match kind {
            0 => {
                let ty = [
                    "demo_requested",
                    "webinar_attended",
                    "form_fill",
                    "page_view",
                    "unsubscribe",
                    "pricing_page_view",
                    "email_click",
                    "meeting_scheduled",
                ][x];
                let s = signal(rules, &format!("e{n}"), ty, now.plus_millis(-minutes * 60_000));
                sim.record(rules, &lead, &[s], now);
            }
            1 => {
                let attributes = BTreeMap::from([
                    ("seniority".to_owned(), ["vp", "director", "manager", "intern"][x % 4].to_owned()),
                    ("company_size".to_owned(), ["1-10", "51-200", "1000+", "11-50"][x / 2].to_owned()),
                ]);
                let profile = LeadProfile { lead_id: lead.clone(), account_id: None, attributes, created_at: None };
                sim.apply(upsert_profile(rules, settings, now, sim.load(&lead), profile));
            }
            2 => {
                let Some(stored) = sim.load(&lead) else { return };
                let targets = rules.manual_targets(stored.lead.stage);
                let Some(to) = targets.get(x % targets.len().max(1)).copied() else { return };
                let request = StageRequest {
                    to,
                    expected: None,
                    actor: "rep".into(),
                    reason: String::new(),
                    deal_amount: (to == Stage::Customer).then_some(1000.0),
                };
                sim.apply(set_stage(rules, settings, now, Some(stored), request).unwrap());
            }
            _ => {
                let Some(stored) = sim.load(&lead) else { return };
                if let Some(step) = rescore(rules, settings, now, stored) {
                    sim.apply(step.change);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// One batch, many small batches or one signal at a time in reverse:
        /// the same score, counts and stage.
        #[test]
        fn order_and_batching_do_not_change_the_outcome(
            raw in proptest::collection::vec((0usize..6, 0i64..60 * 24 * 40), 1..30),
            chunk in 1usize..7,
        ) {
            let rules = rules();
            let signals = signals_from(&rules, &raw);
            let (one, many, reversed) = (id("one"), id("many"), id("rev"));
            let mut sim = Sim::default();
            sim.record(&rules, &one, &signals, NOW);
            for part in signals.chunks(chunk) {
                sim.record(&rules, &many, part, NOW);
            }
            for s in signals.iter().rev() {
                sim.record(&rules, &reversed, std::slice::from_ref(s), NOW);
            }
            let (a, b, c) = (sim.load(&one).unwrap(), sim.load(&many).unwrap(), sim.load(&reversed).unwrap());
            for other in [&b, &c] {
                prop_assert!((behavior(&a, &rules) - behavior(other, &rules)).abs() < 1e-9);
                prop_assert_eq!(a.lead.recorded, other.lead.recorded);
                prop_assert_eq!(a.lead.stage, other.lead.stage);
                prop_assert_eq!(&a.first_touch, &other.first_touch);
                prop_assert_eq!(&a.journey.touches, &other.journey.touches);
            }
        }

        /// A batch sent again changes nothing and writes nothing.
        #[test]
        fn replaying_a_batch_changes_nothing(raw in proptest::collection::vec((0usize..6, 0i64..60 * 24 * 40), 1..20)) {
            let rules = rules();
            let signals = signals_from(&rules, &raw);
            let mut sim = Sim::default();
            sim.record(&rules, &id("l"), &signals, NOW);
            let before = sim.load(&id("l")).unwrap();
            let again = sim.record(&rules, &id("l"), &signals, NOW.plus_millis(60_000));
            prop_assert!(again.change.is_none());
            prop_assert!(again.statuses.iter().all(|s| *s == SignalStatus::Duplicate));
            prop_assert_eq!(sim.load(&id("l")).unwrap(), before);
        }

        /// Whatever happens to a few leads — signals in any order, profile
        /// upserts, sales decisions, rescores — rule moves only go forward,
        /// every step is a new version, and the aggregates kept from the
        /// deltas equal a recount from the leads.
        #[test]
        fn rule_moves_go_forward_and_aggregates_equal_a_recount(
            ops in proptest::collection::vec((0usize..4, 0usize..3, 0usize..8, 0i64..60 * 24 * 20), 1..40),
        ) {
            let rules = rules();
            let settings = settings();
            let mut sim = Sim::default();
            for (n, op) in ops.into_iter().enumerate() {
                play(&mut sim, &rules, &settings, n, op);
            }
            for change in &sim.feed {
                if matches!(change.cause, Cause::Rule { .. }) {
                    prop_assert!(change.from.is_forward(change.to), "{change:?}");
                }
            }
            let (counts, scores) = sim.recount();
            let kept: HashMap<_, _> = sim.counts.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.clone(), *n)).collect();
            prop_assert_eq!(kept, counts);
            // Credits: equal to a recount from the journeys, and under each
            // model and grouping one whole lead per lead that reached a stage.
            let credits: Credits = sim.credits.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.clone(), *n)).collect();
            if sim.leads.values().all(|l| !l.journey.settled) {
                prop_assert_eq!(&credits, &sim.recount_credits());
            }
            for stage in attribution::CREDITED_STAGES {
                let reached = sim.leads.values().filter(|l| l.journey.reached.iter().flatten().count() > 0
                    && l.journey.reached[attribution::CREDITED_STAGES.iter().position(|s| *s == stage).unwrap()].is_some()).count() as i64;
                for model in attribution::Model::ALL {
                    let credited: i64 = credits
                        .iter()
                        .filter(|((_, m, g, c), _)| *m == model && g.starts_with("campaign=") && *c == attribution::CreditCounter::Reached(stage))
                        .map(|(_, n)| n)
                        .sum();
                    prop_assert_eq!(credited, reached * attribution::WHOLE);
                }
            }
            let passed_lead = sim.funnel.get(&("*".to_owned(), profiles::FunnelCounter::Passed(Stage::Lead))).copied().unwrap_or(0.0);
            let reached_lead = sim.leads.values().filter(|l| l.journey.reached[0].is_some()).count();
            prop_assert_eq!(passed_lead as usize, reached_lead, "the funnel and the credits count the same leads");
            prop_assert_eq!(&sim.scores, &scores);
            // Every lead entered a first stage, and every change one more.
            let entered: f64 = sim
                .funnel
                .iter()
                .filter(|((group, counter), _)| group == "*" && matches!(counter, profiles::FunnelCounter::Entered(_)))
                .map(|(_, n)| n)
                .sum();
            prop_assert_eq!(entered as u64, sim.created + sim.feed.len() as u64);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever a lead went through, erasing it leaves every aggregate
        /// as if it had never been: equal to a twin that never saw it.
        #[test]
        fn erasing_a_lead_leaves_the_aggregates_of_a_world_without_it(
            ops in proptest::collection::vec((0usize..4, 0usize..3, 0usize..8, 0i64..60 * 24 * 20), 1..40),
        ) {
            let rules = rules();
            let settings = settings();
            let (mut sim, mut twin) = (Sim::default(), Sim::default());
            for (n, op) in ops.into_iter().enumerate() {
                play(&mut sim, &rules, &settings, n, op);
                if op.1 != 0 {
                    play(&mut twin, &rules, &settings, n, op);
                }
            }
            let erased = id("lead-0");
            let now = NOW.plus_millis(50 * 60_000);
            let stored = sim.load(&erased);
            let step = forget(&rules, &settings, now, stored.clone());
            prop_assert_eq!(step.is_some(), stored.is_some());
            if let Some(step) = step {
                prop_assert!(step.answer.exact);
                prop_assert!(step.change.erase.is_some() && step.change.feed.is_empty() && step.change.triggers.is_empty());
                sim.apply(step.change);
            }
            prop_assert!(sim.load(&erased).is_none());
            prop_assert_eq!(sim.figures(), twin.figures());
            prop_assert!(forget(&rules, &settings, now, None).is_none(), "nothing left to erase");
        }
    }

    /// A journey that dropped touches keeps the credit it gave: its lead
    /// keeps its credit shares from then on, and erasing it takes exactly
    /// those back.
    #[test]
    fn erasing_a_lead_whose_journey_settled_takes_back_the_credit_it_gave() {
        let rules = rules();
        let settings = settings();
        let (mut sim, mut twin) = (Sim::default(), Sim::default());
        let touch = |lead: &str, i: usize| {
            let mut s = signal(&rules, &format!("{lead}-t{i}"), "webinar_attended", NOW.plus_millis(-(i as i64) * DAY));
            s.properties.insert("campaign".into(), format!("c{i}"));
            s
        };
        for i in 0..attribution::MAX_TOUCHES + 8 {
            sim.record(&rules, &id("kept"), &[touch("kept", i)], NOW);
            twin.record(&rules, &id("kept"), &[touch("kept", i)], NOW);
            sim.record(&rules, &id("gone"), &[touch("gone", i)], NOW);
        }
        let gone = sim.load(&id("gone")).unwrap();
        assert!(gone.journey.settled && gone.contributions.credits_kept);
        let step = forget(&rules, &settings, NOW, Some(gone)).unwrap();
        sim.apply(step.change);
        assert_eq!(sim.figures(), twin.figures());
    }

    #[test]
    fn contributions_forget_the_days_whose_counters_are_dropped() {
        let mut c = crate::domain::state::Contributions::default();
        let retention = 10 * DAY;
        let delta = |day: i64, by: f64| AggregateDelta::Funnel {
            day,
            group: "*".into(),
            counter: profiles::FunnelCounter::Won,
            by,
            expires: crate::domain::state::day_expires(day, retention),
        };
        c.add(&delta(100, 1.0));
        c.add(&delta(105, 2.0));
        c.add(&delta(105, -2.0));
        assert_eq!(c.len(), 1, "a share back at zero is no share");
        // Day 100's counters go at the end of day 110.
        let day_110_end = Timestamp::from_millis(111 * DAY);
        assert_eq!(c.reversal(&Journey::default(), day_110_end.plus_millis(-1), retention).len(), 1);
        assert!(
            c.reversal(&Journey::default(), day_110_end, retention).is_empty(),
            "an expired day is not taken back (it would come back)"
        );
        c.prune(day_110_end, retention);
        assert!(c.is_empty());
    }

    #[test]
    fn quiet_unqualified_leads_are_due_for_erasure() {
        let quiet = 30 * DAY;
        let mut state = LeadState::new(LeadSnapshot::new(id("q"), NOW));
        assert!(!retention_expired(&state, NOW.plus_millis(quiet - 1), quiet));
        assert!(retention_expired(&state, NOW.plus_millis(quiet), quiet));
        state.lead.last_engaged_at = Some(NOW.plus_millis(DAY));
        assert!(!retention_expired(&state, NOW.plus_millis(quiet), quiet), "engaged since");
        state.lead.last_engaged_at = None;
        state.reached_mql = true;
        assert!(!retention_expired(&state, NOW.plus_millis(quiet), quiet), "once an MQL, kept");
        state.reached_mql = false;
        state.lead.merged_into = Some(id("owner"));
        assert!(!retention_expired(&state, NOW.plus_millis(quiet), quiet), "goes with its lead");
    }

    #[test]
    fn a_new_leads_first_touch_ignores_a_repeated_event_in_its_batch() {
        let rules = rules();
        let mut sim = Sim::default();
        let lead = id("t");
        let first = signal(&rules, "a", "webinar_attended", NOW);
        let mut again = signal(&rules, "a", "webinar_attended", NOW.plus_millis(-DAY));
        again.properties.insert("campaign".into(), "other".into());
        let recorded = sim.record(&rules, &lead, &[first.clone(), again], NOW);
        assert_eq!(recorded.statuses[1], SignalStatus::Duplicate);
        let state = sim.load(&lead).unwrap();
        let touch = state.first_touch.unwrap();
        assert_eq!(touch.at, NOW, "the repeated event is not recorded, so it is not the first touch");
        assert_eq!(touch.values, state.journey.touches[0].values, "the funnel and the journey agree");
        let grouped: Vec<_> = sim.funnel.keys().map(|(g, _)| g.as_str()).filter(|g| g.contains("other")).collect();
        assert!(grouped.is_empty(), "{grouped:?}");
    }

    #[test]
    fn a_rescore_moves_decayed_scores_in_their_cohort() {
        let rules = rules();
        let settings = settings();
        let mut sim = Sim::default();
        let lead = id("d");
        sim.record(&rules, &lead, &[signal(&rules, "a", "webinar_attended", NOW)], NOW);
        let bucket = |sim: &Sim| ScoreBucket::of(sim.load(&lead).unwrap().cohort.unwrap().scores[0].total());
        let before = bucket(&sim);
        // Within the same whole point: nothing to write.
        assert!(rescore(&rules, &settings, NOW.plus_millis(60_000), sim.load(&lead).unwrap()).is_none());
        // A half-life later the score has halved: the lead moves down.
        let later = NOW.plus_millis(30 * DAY);
        let step = rescore(&rules, &settings, later, sim.load(&lead).unwrap()).expect("a move to write");
        sim.apply(step.change);
        assert!(bucket(&sim) < before, "{:?} < {before:?}", bucket(&sim));
        assert!(rescore(&rules, &settings, later, sim.load(&lead).unwrap()).is_none(), "up to date");
        assert_eq!(sim.recount().1, sim.scores);
    }

    #[test]
    fn a_new_half_life_shares_time_decay_credit_again_on_rescore() {
        let rules = rules();
        let settings = settings();
        let mut sim = Sim::default();
        let lead = id("h");
        let early = signal(&rules, "e1", "page_view", NOW.plus_millis(-10 * DAY));
        sim.record(&rules, &lead, &[early, signal(&rules, "e2", "webinar_attended", NOW)], NOW);
        let request = StageRequest {
            to: Stage::Mql,
            expected: None,
            actor: "rep".into(),
            reason: String::new(),
            deal_amount: None,
        };
        sim.apply(set_stage(&rules, &settings, NOW, sim.load(&lead), request).unwrap());
        let decayed = |sim: &Sim| -> Vec<i64> {
            let mut v: Vec<i64> = sim
                .credits
                .iter()
                .filter(|((_, m, g, c), n)| {
                    *m == attribution::Model::TimeDecay
                        && g.starts_with("campaign=")
                        && *c == attribution::CreditCounter::Reached(Stage::Mql)
                        && **n != 0
                })
                .map(|(_, n)| *n)
                .collect();
            v.sort();
            v
        };
        let before = decayed(&sim);
        assert_eq!(before.len(), 2, "two campaigns share the MQL: {before:?}");
        let source =
            crate::DEFAULT_RULES.replace("[attribution]\nhalf_life = \"7d\"", "[attribution]\nhalf_life = \"1d\"");
        assert_ne!(source, crate::DEFAULT_RULES);
        let shorter = RuleSet::parse(&source).unwrap();
        let step = rescore(&shorter, &settings, NOW, sim.load(&lead).unwrap()).expect("credit to share again");
        sim.apply(step.change);
        let after = decayed(&sim);
        assert!(after[0] < before[0], "the older touch weighs less under a shorter half-life: {before:?} {after:?}");
        assert_eq!(after.iter().sum::<i64>(), attribution::WHOLE);
        assert_eq!(
            sim.credits.iter().filter(|(_, n)| **n != 0).map(|(k, n)| (k.clone(), *n)).collect::<Credits>(),
            sim.recount_credits()
        );
        assert!(rescore(&shorter, &settings, NOW, sim.load(&lead).unwrap()).is_none(), "up to date");
    }

    #[test]
    fn stage_triggers_respect_their_cooldown() {
        let rules = rules();
        let settings = settings();
        let mut sim = Sim::default();
        let lead = id("t");
        sim.record(&rules, &lead, &[signal(&rules, "a", "webinar_attended", NOW)], NOW);
        let mut now = NOW;
        let mut set = |sim: &mut Sim, to: Stage, minutes: i64| {
            now = now.plus_millis(minutes * 60_000);
            let request =
                StageRequest { to, expected: None, actor: "rep".into(), reason: String::new(), deal_amount: None };
            sim.apply(set_stage(&rules, &settings, now, sim.load(&lead), request).unwrap());
        };
        set(&mut sim, Stage::Mql, 1);
        assert_eq!(sim.triggers.iter().filter(|t| t.stage == Stage::Mql).count(), 1);
        // Recycled and back within the 7-day cooldown: moved, not fired again.
        set(&mut sim, Stage::Recycled, 60);
        set(&mut sim, Stage::Mql, 60);
        assert_eq!(sim.triggers.iter().filter(|t| t.stage == Stage::Mql).count(), 1);
        assert_eq!(sim.load(&lead).unwrap().lead.stage, Stage::Mql);
        // After it, fired again.
        set(&mut sim, Stage::Recycled, 60);
        set(&mut sim, Stage::Mql, 8 * 24 * 60);
        assert_eq!(sim.triggers.iter().filter(|t| t.stage == Stage::Mql).count(), 2);
    }

    #[test]
    fn sales_decisions_are_checked_against_the_rules_and_the_stage_seen() {
        let rules = rules();
        let settings = settings();
        let mut sim = Sim::default();
        let lead = id("s");
        let request =
            |to, expected| StageRequest { to, expected, actor: "rep".into(), reason: String::new(), deal_amount: None };
        assert_eq!(set_stage(&rules, &settings, NOW, None, request(Stage::Mql, None)), Err(StageRefusal::NotFound));
        sim.record(&rules, &lead, &[signal(&rules, "a", "webinar_attended", NOW)], NOW);
        let stored = sim.load(&lead);
        assert_eq!(
            set_stage(&rules, &settings, NOW, stored.clone(), request(Stage::Mql, Some(Stage::Sql))),
            Err(StageRefusal::Changed { expected: Stage::Sql, current: Stage::Lead })
        );
        let Err(StageRefusal::NotAllowed { from, allowed, .. }) =
            set_stage(&rules, &settings, NOW, stored, request(Stage::Anonymous, None))
        else {
            panic!("allowed")
        };
        assert_eq!((from, allowed.as_slice()), (Stage::Lead, rules.manual_targets(Stage::Lead)));
    }

    #[test]
    fn an_inactivity_trigger_fires_once_per_quiet_spell() {
        let rules = rules();
        let settings = settings();
        let (def, quiet) = rules.inactivity_triggers().next().unwrap();
        let mut sim = Sim::default();
        let lead = id("quiet");
        let r = sim.record(&rules, &lead, &[signal(&rules, "a", "webinar_attended", NOW)], NOW);
        assert_eq!(r.change.unwrap().due, [(Due::Inactivity(def.id.clone()), Some(NOW))]);
        // Not quiet long enough: nothing to write.
        assert!(
            inactivity(&rules, &settings, NOW.plus_millis(quiet - 1), sim.load(&lead).unwrap(), def, quiet).is_none()
        );
        let later = NOW.plus_millis(quiet + 1);
        let step = inactivity(&rules, &settings, later, sim.load(&lead).unwrap(), def, quiet).unwrap();
        assert!(step.answer);
        assert_eq!(step.change.due, [(Due::Inactivity(def.id.clone()), None)]);
        sim.apply(step.change);
        // Listed again by mistake, the same spell does not fire twice.
        let again = inactivity(&rules, &settings, later.plus_millis(1), sim.load(&lead).unwrap(), def, quiet).unwrap();
        assert!(!again.answer);
    }

    /// The default rules without their follow-up agreement.
    fn rules_without_sla() -> RuleSet {
        let source = crate::DEFAULT_RULES
            .replace("[sla]\nwithin = \"24h\"\nowner_attribute = \"owner\"\n", "")
            .replace("on = \"sla_breached\"", "on = \"stage_entered(SAL)\"");
        let rules = RuleSet::parse(&source).unwrap();
        assert!(rules.sla.is_none());
        rules
    }

    #[test]
    fn a_handover_is_decided_in_time_or_late_and_a_passed_deadline_breaches_once() {
        // The default rules: 24 hours, and an escalation on breaches.
        let rules = rules();
        let settings = settings();
        let mut sim = Sim::default();
        let to =
            |to| StageRequest { to, expected: None, actor: "rep".into(), reason: String::new(), deal_amount: None };
        let counted = |sim: &Sim, group: &str, c| sim.funnel.get(&(group.to_owned(), c)).copied().unwrap_or(0.0);
        let due = NOW.plus_millis(DAY);
        for name in ["prompt", "slow", "never"] {
            let lead = id(name);
            sim.record(&rules, &lead, &[signal(&rules, &format!("{name}-1"), "page_view", NOW)], NOW);
            let change = set_stage(&rules, &settings, NOW, sim.load(&lead), to(Stage::Mql)).unwrap();
            assert_eq!(change.state.handover, Some(Pending { handed_at: NOW, due, breached: false }));
            assert!(
                change.due.contains(&(Due::Waiting, Some(NOW))) && change.due.contains(&(Due::Deadline, Some(due)))
            );
            sim.apply(change);
        }
        // Accepted after two hours: in time.
        let change = set_stage(&rules, &settings, NOW.plus_millis(7_200_000), sim.load(&id("prompt")), to(Stage::Sal));
        let change = change.unwrap();
        assert_eq!(change.state.handover, None);
        assert!(change.due.contains(&(Due::Waiting, None)) && change.due.contains(&(Due::Deadline, None)));
        sim.apply(change);
        assert_eq!(counted(&sim, "*", FunnelCounter::Decided { on_time: true }), 1.0);
        assert_eq!(counted(&sim, "source=ads", FunnelCounter::Decided { on_time: true }), 1.0);
        let two_hours = profiles::duration_bucket(7_200_000);
        assert_eq!(counted(&sim, "*", FunnelCounter::SpeedToLead(two_hours)), 1.0);
        // Before the deadline the sweep has nothing to do.
        let agreement = rules.sla.as_ref().unwrap();
        assert!(breach(&rules, &settings, agreement, due, sim.load(&id("slow")).unwrap()).is_none());
        // After it: one breach, counted on the deadline's day, and the
        // escalation fires with the owner and how late.
        let mut slow = sim.load(&id("slow")).unwrap();
        slow.lead.attributes.insert("owner".into(), "jane@crm".into());
        sim.leads.insert(id("slow"), slow);
        let later = due.plus_millis(30_000);
        let step = breach(&rules, &settings, agreement, later, sim.load(&id("slow")).unwrap()).unwrap();
        assert!(step.answer);
        assert_eq!(step.change.due, [(Due::Deadline, None)], "still on the desk");
        let [trigger] = step.change.triggers.as_slice() else { panic!("{:?}", step.change.triggers) };
        assert_eq!((trigger.definition_id.as_str(), trigger.program.as_str()), ("sla_escalation", "sales-escalation"));
        let expected = Breach { owner: "jane@crm".into(), handed_at: NOW, due, late_by_ms: 30_000 };
        assert_eq!(trigger.breach, Some(expected));
        let days: Vec<i64> = step
            .change
            .aggregates
            .iter()
            .filter_map(|a| match a {
                AggregateDelta::Funnel { day, counter: FunnelCounter::Breached, group, .. } if group == "*" => {
                    Some(*day)
                }
                _ => None,
            })
            .collect();
        assert_eq!(days, [due.utc_day()]);
        sim.apply(step.change);
        // Listed again by mistake: not counted twice.
        let again = breach(&rules, &settings, agreement, later.plus_millis(1), sim.load(&id("slow")).unwrap()).unwrap();
        assert!(!again.answer && again.change.triggers.is_empty());
        sim.apply(again.change);
        assert_eq!(counted(&sim, "*", FunnelCounter::Breached), 1.0);
        // Recycled the next day: late.
        let next_day = NOW.plus_millis(2 * DAY);
        sim.apply(set_stage(&rules, &settings, next_day, sim.load(&id("slow")), to(Stage::Recycled)).unwrap());
        assert_eq!(counted(&sim, "*", FunnelCounter::Decided { on_time: false }), 1.0);
        assert_eq!(counted(&sim, "*", FunnelCounter::SpeedToLead(profiles::duration_bucket(2 * DAY))), 1.0);
        // A lead decided on before the sweep got to it leaves the index.
        sim.apply(set_stage(&rules, &settings, later, sim.load(&id("never")), to(Stage::Disqualified)).unwrap());
        assert_eq!(counted(&sim, "*", FunnelCounter::Breached), 2.0, "decided late before the sweep found it");
        let stale = breach(&rules, &settings, agreement, later, sim.load(&id("never")).unwrap()).unwrap();
        assert!(!stale.answer);
        assert_eq!(stale.change.due, [(Due::Deadline, None)]);
        // A rule moving an MQL on is no sales decision: the hand-over ends
        // uncounted.
        let raiser = id("raiser");
        sim.record(&rules, &raiser, &[signal(&rules, "r-1", "page_view", NOW)], NOW);
        sim.apply(set_stage(&rules, &settings, NOW, sim.load(&raiser), to(Stage::Mql)).unwrap());
        let r = sim.record(&rules, &raiser, &[signal(&rules, "r-2", "demo_requested", NOW)], NOW);
        let change = r.change.unwrap();
        assert_eq!((change.state.lead.stage, change.state.handover), (Stage::Sql, None));
        assert!(change.due.contains(&(Due::Waiting, None)));
        let decided = |sim: &Sim| {
            counted(sim, "*", FunnelCounter::Decided { on_time: true })
                + counted(sim, "*", FunnelCounter::Decided { on_time: false })
        };
        assert_eq!(decided(&sim), 3.0, "prompt, slow and never; not raiser");
        // Without an agreement, becoming an MQL hands nothing over.
        let plain =
            set_stage(&rules_without_sla(), &settings, NOW, sim.load(&id("prompt")), to(Stage::Recycled)).unwrap();
        sim.apply(plain);
        let back = set_stage(&rules_without_sla(), &settings, NOW, sim.load(&id("prompt")), to(Stage::Mql)).unwrap();
        assert_eq!(back.state.handover, None);
    }
}
