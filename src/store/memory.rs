//! Embedded store: everything in process memory, lost on exit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    CommitPlan, CommitRead, DeliveryPolicy, FeedPage, FeedPolicy, IdentifyMark, LeadBatch, LeadOutcome, LeadStore,
    StageUpdate, StoreError, TriggerStats,
};
use crate::domain::ledger::HistoryEntry;
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
}

#[derive(Debug, Default)]
struct Data {
    leads: HashMap<LeadId, StoredLead>,
    /// The change feed; a cursor is `m<number of changes consumed>`.
    feed: Vec<(LeadId, StageChange)>,
    /// Fired triggers; a trigger's id is `t<index>`.
    triggers: Vec<FiredTrigger>,
    /// Consumer groups of the trigger log.
    groups: HashMap<String, Group>,
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

fn entry<'a>(
    leads: &'a mut HashMap<LeadId, StoredLead>,
    id: &LeadId,
    now: Timestamp,
    initial_stage: Stage,
) -> &'a mut StoredLead {
    leads.entry(id.clone()).or_insert_with(|| {
        let mut snapshot = LeadSnapshot::new(id.clone(), now);
        snapshot.stage = initial_stage;
        StoredLead { snapshot, ledger: LeadLedger::default(), stages: VecDeque::new(), swept: HashMap::new() }
    })
}

/// Moves the lead through `changes`, firing their triggers (cooldowns
/// permitting) and recording each change in its history and the feed.
fn apply_changes(
    lead: &mut StoredLead,
    lead_id: &LeadId,
    feed: &mut Vec<(LeadId, StageChange)>,
    triggers: &mut Vec<FiredTrigger>,
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
        let lead = entry(&mut data.leads, &profile.lead_id.clone(), now, Stage::Lead);
        lead.snapshot.apply_profile(profile);
        Ok(lead.snapshot.clone())
    }

    async fn record_signals(
        &self,
        batches: Vec<LeadBatch>,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> Result<Vec<LeadOutcome>, StoreError> {
        let mut data = self.data();
        Ok(batches
            .into_iter()
            .map(|batch| {
                let lead = entry(&mut data.leads, &batch.lead_id, now, batch.initial_stage);
                if let Some(owner) = lead.snapshot.merged_into.clone() {
                    return LeadOutcome { statuses: Vec::new(), lead: lead.snapshot.clone(), merged_into: Some(owner) };
                }
                let statuses =
                    batch.signals.iter().map(|s| lead.ledger.record(&mut lead.snapshot, s, now, policy)).collect();
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
        let Data { leads, feed, triggers, .. } = &mut *data;
        let Some(lead) = leads.get_mut(lead_id) else { return Ok(StageUpdate::NotFound) };
        if lead.snapshot.stage != expected {
            return Ok(StageUpdate::Conflict { current: lead.snapshot.stage });
        }
        let (applied, fired) = apply_changes(lead, lead_id, feed, triggers, changes, fires, policy.history_limit);
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
        let Data { leads, feed, triggers, .. } = &mut *data;
        let id = &plan.lead.lead_id;
        let current = leads.get(id).map(|l| (l.snapshot.recorded, l.snapshot.stage, l.snapshot.merged_into.is_some()));
        match (plan.expected, current) {
            (None, None) => {}
            (Some(expected), Some((recorded, stage, false))) if expected == (recorded, stage) => {}
            _ => return Ok(false),
        }
        let lead = entry(leads, id, plan.now, plan.initial_stage);
        lead.snapshot.tallies = plan.lead.tallies.clone();
        lead.snapshot.daily = plan.lead.daily.clone();
        lead.snapshot.recorded = plan.lead.recorded;
        lead.snapshot.last_engaged_at = plan.lead.last_engaged_at;
        lead.ledger.remember(&plan.history, policy.history_limit);
        for fire in &plan.fires {
            fire_unless_cooling(lead, triggers, fire, plan.now);
        }
        apply_changes(lead, id, feed, triggers, &plan.changes, &plan.change_fires, feed_policy.history_limit);
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

    async fn replace_tallies(&self, rebuilt: &LeadSnapshot) -> Result<bool, StoreError> {
        let mut data = self.data();
        let Some(lead) = data.leads.get_mut(&rebuilt.lead_id) else { return Ok(false) };
        if lead.snapshot.recorded != rebuilt.recorded {
            return Ok(false);
        }
        lead.snapshot.tallies = rebuilt.tallies.clone();
        lead.snapshot.daily = rebuilt.daily.clone();
        lead.snapshot.last_engaged_at = rebuilt.last_engaged_at;
        Ok(true)
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
