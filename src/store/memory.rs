//! Embedded store: everything in process memory, lost on exit.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    CommitPlan, CommitRead, DeliveryPolicy, FeedPage, FeedPolicy, IdentifyMark, LeadBatch, LeadOutcome, LeadStore,
    ProfileSpec, StageUpdate, StoreError, StoredAccount, TriggerStats,
};
use crate::domain::account::AccountProfile;
use crate::domain::ledger::HistoryEntry;
use crate::domain::profiles::{
    self, CohortProfile, CohortQuery, FunnelCounters, FunnelEntry, ModelScore, ScoreHistoryEntry,
};
use crate::domain::{AccountId, Cause, SignalStatus};
use crate::domain::{
    Delivery, FiredTrigger, IngestPolicy, LeadId, LeadLedger, LeadProfile, LeadSnapshot, QualificationChange, Stage,
    StageChange, Timestamp, TriggerFire,
};

#[derive(Debug)]
struct StoredLead {
    snapshot: LeadSnapshot,
    ledger: LeadLedger,
    /// Newest first.
    stages: VecDeque<StageChange>,
    /// Inactivity definition → the engagement time it was last swept at.
    swept: HashMap<String, Timestamp>,
    /// Scores as of the lead's last change (what cohorts read).
    scores: Vec<ModelScore>,
    /// Ever reached MQL or a later sales stage.
    reached_mql: bool,
    /// The earliest signal's `occurred_at` and its source, channel, campaign.
    first_touch: Option<(Timestamp, [String; 3])>,
    /// The furthest funnel stage reached (`profiles::funnel_rank`).
    funnel_reached: usize,
    /// The creation entry, counted before any first touch was known: moved
    /// under the first touch when it arrives.
    untouched_creation: Option<(Timestamp, Stage)>,
    /// Newest first.
    score_history: VecDeque<ScoreHistoryEntry>,
}

impl StoredLead {
    fn new(snapshot: LeadSnapshot) -> Self {
        Self {
            snapshot,
            ledger: LeadLedger::default(),
            stages: VecDeque::new(),
            swept: HashMap::new(),
            scores: Vec::new(),
            reached_mql: false,
            first_touch: None,
            funnel_reached: 0,
            untouched_creation: None,
            score_history: VecDeque::new(),
        }
    }

    /// After every change: the scores as of `now`, and a history entry when
    /// the change was to the score (`cause`); with `dedupe`, not when the
    /// scores equal the newest entry's.
    fn touch(&mut self, spec: &ProfileSpec, now: Timestamp, cause: Option<String>, dedupe: bool) {
        self.scores = spec.scores(&self.snapshot, now);
        let Some(cause) = cause else { return };
        if spec.history_limit == 0 || (dedupe && self.score_history.front().is_some_and(|e| e.scores == self.scores)) {
            return;
        }
        self.score_history.push_front(ScoreHistoryEntry { at: now, cause, scores: self.scores.clone() });
        self.score_history.truncate(spec.history_limit);
        while self.score_history.back().is_some_and(|e| e.at.millis() < now.millis() - spec.history_age_ms) {
            self.score_history.pop_back();
        }
    }

    /// The funnel entry of the lead entering `stage` at `at`.
    fn enter(&mut self, funnel: &mut BTreeMap<i64, HashMap<String, f64>>, change: &StageChange) {
        if profiles::QUALIFIED_STAGES.contains(&change.to) {
            self.reached_mql = true;
        }
        let passed = profiles::newly_passed(self.funnel_reached, change.to);
        self.funnel_reached = self.funnel_reached.max(profiles::funnel_rank(change.to));
        let entry = FunnelEntry {
            passed,
            stage: change.to,
            since_created_ms: change.at.millis() - self.snapshot.created_at.millis(),
            reopened: change.from == Stage::Recycled && matches!(change.cause, Cause::Rule { .. }),
            deal_amount: change.deal_amount,
        };
        let groups = profiles::funnel_groups(self.first_touch.as_ref().map(|f| &f.1));
        count_entry(funnel, &groups, &entry, change.at, 1.0);
    }
}

/// Adds (`sign` 1) or takes back (-1) an entry's counters for some groups on
/// the day of `at` (profile.lua's `p_count`).
fn count_entry(
    funnel: &mut BTreeMap<i64, HashMap<String, f64>>,
    groups: &[String],
    entry: &FunnelEntry,
    at: Timestamp,
    sign: f64,
) {
    let day = funnel.entry(at.utc_day()).or_default();
    for group in groups {
        for (field, by) in entry.increments(group) {
            *day.entry(field).or_default() += sign * by;
        }
    }
}

#[derive(Debug, Default)]
struct StoredAccountData {
    attributes: Option<BTreeMap<String, String>>,
    leads: BTreeSet<LeadId>,
    qualified: Option<(String, Timestamp)>,
}

#[derive(Debug, Default)]
struct Data {
    leads: HashMap<LeadId, StoredLead>,
    /// The change feed; a cursor is `m<number of changes consumed>`.
    feed: Vec<(LeadId, StageChange)>,
    /// Fired triggers; a trigger's id is `t<index>`.
    triggers: Vec<FiredTrigger>,
    /// Rule-set version → content digest.
    rule_set_versions: HashMap<String, String>,
    /// Consumer groups of the trigger log.
    groups: HashMap<String, Group>,
    /// UTC day → funnel counter fields (see `FunnelEntry::increments`).
    funnel: BTreeMap<i64, HashMap<String, f64>>,
    accounts: HashMap<AccountId, StoredAccountData>,
    spec: Option<Arc<ProfileSpec>>,
}

impl Data {
    fn spec(&self) -> Arc<ProfileSpec> {
        self.spec.clone().unwrap_or_else(|| super::spec::default_spec().clone())
    }
}

/// A trigger held by a consumer (or dead).
#[derive(Debug, Clone)]
struct Pending {
    /// `None`: a dead letter.
    consumer: Option<String>,
    delivered_at: Timestamp,
    deliveries: u64,
}

#[derive(Debug, Default)]
struct Group {
    /// Index of the first trigger never delivered to the group.
    next: usize,
    pending: std::collections::BTreeMap<usize, Pending>,
    acked: u64,
    redelivered: u64,
}

fn trigger_index(id: &str) -> Option<usize> {
    id.strip_prefix('t')?.parse().ok()
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave a lead half-updated in
        // a way later calls could not read, so a poisoned lock is still used.
        self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The lead, created (and counted as entering its first stage at
/// `created_at`, `now` if unknown) if new.
fn entry<'a>(
    leads: &'a mut HashMap<LeadId, StoredLead>,
    funnel: &mut BTreeMap<i64, HashMap<String, f64>>,
    id: &LeadId,
    now: Timestamp,
    initial_stage: Stage,
    first_touch: Option<(Timestamp, [String; 3])>,
    created_at: Option<Timestamp>,
) -> &'a mut StoredLead {
    leads.entry(id.clone()).or_insert_with(|| {
        let mut snapshot = LeadSnapshot::new(id.clone(), now);
        snapshot.stage = initial_stage;
        let mut lead = StoredLead::new(snapshot);
        lead.first_touch = first_touch;
        let at = created_at.unwrap_or(now);
        let groups = profiles::funnel_groups(lead.first_touch.as_ref().map(|f| &f.1));
        count_entry(funnel, &groups, &creation_entry(initial_stage), at, 1.0);
        lead.funnel_reached = profiles::funnel_rank(initial_stage);
        if lead.first_touch.is_none() {
            lead.untouched_creation = Some((at, initial_stage));
        }
        lead
    })
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

/// Takes the candidate as the lead's first touch if it is earlier, moving a
/// creation entry counted before any touch under it.
fn earlier_touch(
    lead: &mut StoredLead,
    funnel: &mut BTreeMap<i64, HashMap<String, f64>>,
    candidate: Option<(Timestamp, [String; 3])>,
) {
    let Some(candidate) = candidate else { return };
    if lead.first_touch.as_ref().is_some_and(|(at, _)| candidate.0 >= *at) {
        return;
    }
    let first = lead.first_touch.is_none();
    lead.first_touch = Some(candidate);
    if let (true, Some((at, stage))) = (first, lead.untouched_creation.take()) {
        // All leads' group ("*", first) stays; the first-touch groups move.
        let entry = creation_entry(stage);
        let untouched = profiles::funnel_groups(None);
        let touched = profiles::funnel_groups(lead.first_touch.as_ref().map(|t| &t.1));
        count_entry(funnel, &untouched[1..], &entry, at, -1.0);
        count_entry(funnel, &touched[1..], &entry, at, 1.0);
    }
}

/// Moves the lead through `changes`, firing their triggers (cooldowns
/// permitting) and recording each change in its history and the feed.
#[allow(clippy::too_many_arguments)]
fn apply_changes(
    lead: &mut StoredLead,
    lead_id: &LeadId,
    feed: &mut Vec<(LeadId, StageChange)>,
    triggers: &mut Vec<FiredTrigger>,
    funnel: &mut BTreeMap<i64, HashMap<String, f64>>,
    changes: &[StageChange],
    fires: &[Vec<TriggerFire>],
    history_limit: usize,
) -> (Vec<QualificationChange>, Vec<String>) {
    let mut applied = Vec::with_capacity(changes.len());
    let mut fired = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        for fire in fires.get(i).map_or(&[][..], Vec::as_slice) {
            fired.extend(fire_unless_cooling(lead, triggers, fire, change.at));
        }
        lead.snapshot.stage = change.to;
        lead.snapshot.stage_since = change.at;
        lead.enter(funnel, change);
        lead.stages.push_front(change.clone());
        feed.push((lead_id.clone(), change.clone()));
        applied.push(QualificationChange {
            lead_id: lead_id.clone(),
            change: change.clone(),
            id: cursor(feed.len()),
            cursor: cursor(feed.len()),
        });
    }
    lead.stages.truncate(history_limit);
    (applied, fired)
}

/// Fires `fire` unless its cooldown for the lead still runs at `at`.
fn fire_unless_cooling(
    lead: &mut StoredLead,
    triggers: &mut Vec<FiredTrigger>,
    fire: &TriggerFire,
    at: Timestamp,
) -> Option<String> {
    let last = lead.snapshot.trigger_fired.get(&fire.trigger.definition_id);
    if last.is_some_and(|last| at.millis() - last.millis() < fire.cooldown_ms) {
        return None;
    }
    lead.snapshot.trigger_fired.insert(fire.trigger.definition_id.clone(), at);
    triggers.push(fire.trigger.clone());
    Some(format!("t{}", triggers.len() - 1))
}

fn cursor(position: usize) -> String {
    format!("m{position}")
}

#[async_trait]
impl LeadStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn upsert_lead(&self, profile: LeadProfile, now: Timestamp) -> Result<LeadSnapshot, StoreError> {
        let mut data = self.data();
        let spec = data.spec();
        let Data { leads, funnel, accounts, .. } = &mut *data;
        let lead = entry(leads, funnel, &profile.lead_id.clone(), now, Stage::Lead, None, profile.created_at);
        let previous = lead.snapshot.account_id.clone();
        lead.snapshot.apply_profile(profile);
        lead.touch(&spec, now, Some("profile".into()), true);
        let lead_id = lead.snapshot.lead_id.clone();
        if let Some(previous) = previous.filter(|p| Some(p) != lead.snapshot.account_id.as_ref())
            && let Some(account) = accounts.get_mut(&previous)
        {
            account.leads.remove(&lead_id);
        }
        if let Some(account) = &lead.snapshot.account_id {
            accounts.entry(account.clone()).or_default().leads.insert(lead_id);
        }
        Ok(lead.snapshot.clone())
    }

    async fn record_signals(
        &self,
        batches: Vec<LeadBatch>,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> Result<Vec<LeadOutcome>, StoreError> {
        let mut data = self.data();
        let spec = data.spec();
        let Data { leads, funnel, .. } = &mut *data;
        Ok(batches
            .into_iter()
            .map(|batch| {
                if let Some(lead) = leads.get(&batch.lead_id)
                    && let Some(owner) = lead.snapshot.merged_into.clone()
                {
                    return LeadOutcome { statuses: Vec::new(), lead: lead.snapshot.clone(), merged_into: Some(owner) };
                }
                let touch = profiles::earliest_touch(batch.signals.iter().map(|s| (s.occurred_at, &s.properties)));
                let lead = entry(leads, funnel, &batch.lead_id, now, batch.initial_stage, touch.clone(), None);
                let statuses: Vec<SignalStatus> =
                    batch.signals.iter().map(|s| lead.ledger.record(&mut lead.snapshot, s, now, policy)).collect();
                let recorded: Vec<(Timestamp, &BTreeMap<String, String>)> = batch
                    .signals
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, st)| **st != SignalStatus::Duplicate)
                    .map(|(s, _)| (s.occurred_at, &s.properties))
                    .collect();
                earlier_touch(lead, funnel, profiles::earliest_touch(recorded));
                let counted: Vec<&str> = batch
                    .signals
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, st)| **st == SignalStatus::Accepted)
                    .map(|(s, _)| s.signal_type.as_str())
                    .collect();
                let cause = (!counted.is_empty()).then(|| profiles::signals_cause(counted));
                lead.touch(&spec, now, cause, false);
                LeadOutcome { statuses, lead: lead.snapshot.clone(), merged_into: None }
            })
            .collect())
    }

    async fn load_leads(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadSnapshot>>, StoreError> {
        let data = self.data();
        Ok(ids.iter().map(|id| data.leads.get(id).map(|l| l.snapshot.clone())).collect())
    }

    async fn change_stage(
        &self,
        lead_id: &LeadId,
        expected: Stage,
        changes: &[StageChange],
        fires: &[Vec<TriggerFire>],
        policy: &FeedPolicy,
    ) -> Result<StageUpdate, StoreError> {
        let mut data = self.data();
        let spec = data.spec();
        let Data { leads, feed, triggers, funnel, .. } = &mut *data;
        let Some(lead) = leads.get_mut(lead_id) else { return Ok(StageUpdate::NotFound) };
        if lead.snapshot.stage != expected {
            return Ok(StageUpdate::Conflict { current: lead.snapshot.stage });
        }
        let (applied, fired) =
            apply_changes(lead, lead_id, feed, triggers, funnel, changes, fires, policy.history_limit);
        if let Some(last) = changes.last() {
            lead.touch(&spec, last.at, None, false);
        }
        Ok(StageUpdate::Applied { changes: applied, triggers: fired })
    }

    async fn mark_identified(&self, visitor: &LeadId, lead: &LeadId) -> Result<IdentifyMark, StoreError> {
        let mut data = self.data();
        let Some(subject) = data.leads.get_mut(visitor) else { return Ok(IdentifyMark::NotFound) };
        match &subject.snapshot.merged_into {
            Some(owner) if owner != lead => Ok(IdentifyMark::AlreadyIdentified(owner.clone())),
            _ => {
                subject.snapshot.merged_into = Some(lead.clone());
                Ok(IdentifyMark::Marked)
            }
        }
    }

    async fn stage_history(&self, lead_id: &LeadId, limit: usize) -> Result<Vec<StageChange>, StoreError> {
        let data = self.data();
        Ok(data.leads.get(lead_id).map(|l| l.stages.iter().take(limit).cloned().collect()).unwrap_or_default())
    }

    async fn list_changes(&self, after: &str, limit: usize) -> Result<FeedPage, StoreError> {
        let start = match after {
            "" => 0,
            c => c
                .strip_prefix('m')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| StoreError::BadCursor("not a cursor of the embedded store".into()))?,
        };
        let data = self.data();
        let start = start.min(data.feed.len());
        let changes: Vec<_> = data.feed[start..]
            .iter()
            .take(limit)
            .enumerate()
            .map(|(i, (lead_id, change))| QualificationChange {
                lead_id: lead_id.clone(),
                change: change.clone(),
                id: cursor(start + i + 1),
                cursor: cursor(start + i + 1),
            })
            .collect();
        Ok(FeedPage { next_cursor: cursor(start + changes.len()), changes })
    }

    async fn feed_end(&self) -> Result<String, StoreError> {
        Ok(cursor(self.data().feed.len()))
    }

    async fn read_for_commit(
        &self,
        lead_id: &LeadId,
        event_ids: &[String],
        seen_since: Timestamp,
    ) -> Result<CommitRead, StoreError> {
        let data = self.data();
        let Some(stored) = data.leads.get(lead_id) else { return Ok(CommitRead { lead: None, seen: Vec::new() }) };
        let seen = event_ids
            .iter()
            .filter_map(|id| stored.ledger.seen_at(id).filter(|at| *at > seen_since).map(|at| (id.clone(), at)))
            .collect();
        Ok(CommitRead { lead: Some(stored.snapshot.clone()), seen })
    }

    async fn commit(
        &self,
        plan: &CommitPlan,
        policy: &IngestPolicy,
        feed_policy: &FeedPolicy,
    ) -> Result<bool, StoreError> {
        let mut data = self.data();
        let spec = data.spec();
        let Data { leads, feed, triggers, funnel, .. } = &mut *data;
        let id = &plan.lead.lead_id;
        let current = leads.get(id).map(|l| (l.snapshot.recorded, l.snapshot.stage, l.snapshot.merged_into.is_some()));
        match (plan.expected, current) {
            (None, None) => {}
            (Some(expected), Some((recorded, stage, false))) if expected == (recorded, stage) => {}
            _ => return Ok(false),
        }
        let touch = profiles::earliest_touch(
            plan.history.iter().map(|h| (Timestamp::from_millis(h.occurred_at_ms), &h.properties)),
        );
        let lead = entry(leads, funnel, id, plan.now, plan.initial_stage, touch.clone(), None);
        earlier_touch(lead, funnel, touch);
        lead.snapshot.tallies = plan.lead.tallies.clone();
        lead.snapshot.daily = plan.lead.daily.clone();
        lead.snapshot.recorded = plan.lead.recorded;
        lead.snapshot.last_engaged_at = plan.lead.last_engaged_at;
        lead.ledger.remember(&plan.history, policy.history_limit);
        for fire in &plan.fires {
            fire_unless_cooling(lead, triggers, fire, plan.now);
        }
        apply_changes(lead, id, feed, triggers, funnel, &plan.changes, &plan.change_fires, feed_policy.history_limit);
        lead.touch(&spec, plan.now, plan.score_cause.clone(), false);
        Ok(true)
    }

    fn partitions(&self) -> u32 {
        1
    }

    async fn lead_ids(&self, _partition: u32) -> Result<Vec<LeadId>, StoreError> {
        let mut ids: Vec<LeadId> = self.data().leads.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    async fn signal_histories(&self, ids: &[LeadId]) -> Result<Vec<Vec<HistoryEntry>>, StoreError> {
        let data = self.data();
        Ok(ids
            .iter()
            .map(|id| data.leads.get(id).map(|l| l.ledger.history().cloned().collect()).unwrap_or_default())
            .collect())
    }

    async fn replace_tallies(&self, rebuilt: &LeadSnapshot, now: Timestamp) -> Result<bool, StoreError> {
        let mut data = self.data();
        let spec = data.spec();
        let Some(lead) = data.leads.get_mut(&rebuilt.lead_id) else { return Ok(false) };
        if lead.snapshot.recorded != rebuilt.recorded {
            return Ok(false);
        }
        lead.snapshot.tallies = rebuilt.tallies.clone();
        lead.snapshot.daily = rebuilt.daily.clone();
        lead.snapshot.last_engaged_at = rebuilt.last_engaged_at;
        lead.touch(&spec, now, Some(format!("rescore:{}", spec.version)), true);
        Ok(true)
    }

    async fn refresh_fit(&self, current: &LeadSnapshot, now: Timestamp) -> Result<(), StoreError> {
        let mut data = self.data();
        let spec = data.spec();
        let Some(lead) = data.leads.get_mut(&current.lead_id) else { return Ok(()) };
        let fits = spec.fits(&lead.snapshot.attributes);
        let changed = fits.len() != lead.scores.len()
            || fits.iter().zip(&lead.scores).any(|((model, fit), s)| *model != s.model || *fit != s.fit);
        lead.touch(&spec, now, changed.then(|| format!("rescore:{}", spec.version)), true);
        Ok(())
    }

    async fn deliver_triggers(
        &self,
        group: &str,
        consumer: &str,
        max: usize,
        policy: &DeliveryPolicy,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut data = self.data();
        let Data { triggers, groups, .. } = &mut *data;
        let g = groups.entry(group.to_owned()).or_default();
        let mut handed = Vec::new();
        for (index, p) in g.pending.iter_mut() {
            if handed.len() >= max {
                break;
            }
            if p.consumer.is_none() || now.millis() - p.delivered_at.millis() < policy.visibility_timeout_ms {
                continue;
            }
            if p.deliveries >= policy.max_deliveries {
                p.consumer = None;
                continue;
            }
            p.consumer = Some(consumer.to_owned());
            p.delivered_at = now;
            p.deliveries += 1;
            if p.deliveries > 1 {
                g.redelivered += 1;
            }
            handed.push((*index, p.deliveries));
        }
        while handed.len() < max && g.next < triggers.len() {
            g.pending.insert(g.next, Pending { consumer: Some(consumer.to_owned()), delivered_at: now, deliveries: 1 });
            handed.push((g.next, 1));
            g.next += 1;
        }
        handed
            .into_iter()
            .map(|(index, delivery_count)| memory_delivery(index, &triggers[index], delivery_count))
            .collect()
    }

    async fn ack_triggers(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
        let mut data = self.data();
        let Some(g) = data.groups.get_mut(group) else { return Ok(0) };
        let acked =
            trigger_ids.iter().filter_map(|id| trigger_index(id)).filter(|i| g.pending.remove(i).is_some()).count()
                as u64;
        g.acked += acked;
        Ok(acked)
    }

    async fn triggers_in_flight(&self, group: &str, consumer: &str) -> Result<u64, StoreError> {
        let data = self.data();
        Ok(data
            .groups
            .get(group)
            .map_or(0, |g| g.pending.values().filter(|p| p.consumer.as_deref() == Some(consumer)).count() as u64))
    }

    async fn trigger_heads(&self) -> Result<Vec<String>, StoreError> {
        Ok(vec![self.data().triggers.len().to_string()])
    }

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let data = self.data();
        let Some(g) = data.groups.get(group) else { return Ok(Vec::new()) };
        g.pending
            .iter()
            .filter(|(_, p)| p.consumer.is_none())
            .take(limit)
            .map(|(index, p)| memory_delivery(*index, &data.triggers[*index], p.deliveries))
            .collect()
    }

    async fn inactive_leads(
        &self,
        definition: &str,
        _partition: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<LeadId>, StoreError> {
        let data = self.data();
        let mut due: Vec<(Timestamp, LeadId)> = data
            .leads
            .values()
            .filter_map(|l| {
                let engaged = l.snapshot.last_engaged_at.filter(|at| *at <= before)?;
                (l.swept.get(definition) != Some(&engaged)).then(|| (engaged, l.snapshot.lead_id.clone()))
            })
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn fire_inactivity(
        &self,
        lead_id: &LeadId,
        engaged_at: Timestamp,
        definition: &str,
        fire: Option<&TriggerFire>,
        _policy: &FeedPolicy,
    ) -> Result<bool, StoreError> {
        let mut data = self.data();
        let Data { leads, triggers, .. } = &mut *data;
        let Some(lead) = leads.get_mut(lead_id) else { return Ok(false) };
        if lead.snapshot.last_engaged_at != Some(engaged_at) {
            return Ok(false);
        }
        lead.swept.insert(definition.to_owned(), engaged_at);
        let Some(fire) = fire else { return Ok(false) };
        let due = lead.snapshot.trigger_fired.get(definition).is_none_or(|last| {
            *last < engaged_at && fire.trigger.fired_at.millis() - last.millis() >= fire.cooldown_ms
        });
        if due {
            lead.snapshot.trigger_fired.insert(definition.to_owned(), fire.trigger.fired_at);
            triggers.push(fire.trigger.clone());
        }
        Ok(due)
    }

    async fn trigger_stats(&self, group: &str) -> Result<TriggerStats, StoreError> {
        let data = self.data();
        let fired = data.triggers.len() as u64;
        Ok(data.groups.get(group).map_or(TriggerStats { fired, ..Default::default() }, |g| {
            let dead = g.pending.values().filter(|p| p.consumer.is_none()).count() as u64;
            TriggerStats {
                fired,
                delivered: g.next as u64,
                pending: g.pending.len() as u64 - dead,
                dead_letters: dead,
                acked: g.acked,
                redelivered: g.redelivered,
            }
        }))
    }

    async fn replay_dead_letters(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
        let mut data = self.data();
        let Some(g) = data.groups.get_mut(group) else { return Ok(0) };
        let mut replayed = 0;
        for index in trigger_ids.iter().filter_map(|id| trigger_index(id)) {
            if let Some(p) = g.pending.get_mut(&index).filter(|p| p.consumer.is_none()) {
                // Claimable at once, counting deliveries afresh.
                *p = Pending { consumer: Some(String::new()), delivered_at: Timestamp::from_millis(0), deliveries: 0 };
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    fn set_profile_spec(&self, spec: Arc<ProfileSpec>) {
        self.data().spec = Some(spec);
    }

    async fn claim_rule_set_version(&self, version: &str, digest: &str) -> Result<Option<String>, StoreError> {
        let mut data = self.data();
        match data.rule_set_versions.get(version) {
            Some(known) => Ok(Some(known.clone())),
            None => {
                data.rule_set_versions.insert(version.to_owned(), digest.to_owned());
                Ok(None)
            }
        }
    }

    async fn rule_set_version_digest(&self, version: &str) -> Result<Option<String>, StoreError> {
        Ok(self.data().rule_set_versions.get(version).cloned())
    }

    async fn score_history(
        &self,
        lead_id: &LeadId,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<ScoreHistoryEntry>, StoreError> {
        let data = self.data();
        let oldest = now.millis() - data.spec().history_age_ms;
        Ok(data
            .leads
            .get(lead_id)
            .map(|l| l.score_history.iter().filter(|e| e.at.millis() >= oldest).take(limit).cloned().collect())
            .unwrap_or_default())
    }

    /// O(all leads): the embedded store scans; the Redis store reads its
    /// aggregates instead.
    async fn cohort_profile(&self, query: &CohortQuery) -> Result<CohortProfile, StoreError> {
        let data = self.data();
        let (from, to) = (query.from.start(), query.to.start());
        let leads = data.leads.values().filter(|l| {
            let s = &l.snapshot;
            s.lead_id.visitor().is_none()
                && s.merged_into.is_none()
                && (from..to).contains(&s.created_at)
                && query.filter.as_ref().is_none_or(|(name, value)| s.attributes.get(name) == Some(value))
        });
        let rows = leads.filter_map(|l| {
            let score = l.scores.iter().find(|m| m.model == query.model)?;
            Some((score.total(), l.snapshot.stage, l.reached_mql))
        });
        Ok(CohortProfile::from_leads(rows, query.buckets))
    }

    async fn funnel(&self, from_day: i64, to_day: i64) -> Result<FunnelCounters, StoreError> {
        let data = self.data();
        let mut counters = FunnelCounters::default();
        for fields in data.funnel.range(from_day..to_day).map(|(_, f)| f) {
            for (field, value) in fields {
                counters.add_field(field, *value);
            }
        }
        Ok(counters)
    }

    async fn upsert_account(&self, account: &AccountProfile) -> Result<(), StoreError> {
        let mut data = self.data();
        data.accounts.entry(account.account_id.clone()).or_default().attributes = Some(account.attributes.clone());
        Ok(())
    }

    async fn load_account(&self, account_id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        let data = self.data();
        Ok(data.accounts.get(account_id).map(|a| StoredAccount {
            attributes: a.attributes.clone(),
            lead_ids: a.leads.iter().cloned().collect(),
            qualified: a.qualified.clone(),
        }))
    }

    async fn drop_account_leads(&self, account_id: &AccountId, lead_ids: &[LeadId]) -> Result<(), StoreError> {
        let mut data = self.data();
        if let Some(account) = data.accounts.get_mut(account_id) {
            for id in lead_ids {
                account.leads.remove(id);
            }
        }
        Ok(())
    }

    async fn mark_account_qualified(
        &self,
        account_id: &AccountId,
        rule_id: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut data = self.data();
        let account = data.accounts.entry(account_id.clone()).or_default();
        if account.qualified.is_some() {
            return Ok(false);
        }
        account.qualified = Some((rule_id.to_owned(), at));
        Ok(true)
    }
}

fn memory_delivery(index: usize, trigger: &FiredTrigger, delivery_count: u64) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        trigger_id: format!("t{index}"),
        lead_id: LeadId::from_stored(trigger.lead_id.clone())
            .map_err(|e| StoreError::Internal(format!("trigger for a bad lead id: {e}")))?,
        trigger: trigger.clone(),
        delivery_count,
    })
}
