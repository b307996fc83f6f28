//! Embedded store: everything in process memory, lost on exit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    Accounts, Aggregates, Applied, AuditLog, AuditPage, ChangeFeed, DeliveryPolicy, FeedPage, FeedPolicy, Leads,
    LetterLine, RuleSetVersions, Spend, StoreError, StoredAccount, TriggerQueue, TriggerStats, WebhookCounters,
    WebhookLetter, WebhookPosition, Webhooks,
};
use crate::domain::account::AccountProfile;
use crate::domain::attribution::{CreditCounter, Credits, Model};
use crate::domain::profiles::{
    CohortCounter, CohortProfile, CohortQuery, FunnelCounter, FunnelCounters, Month, ScoreDistribution,
};
use crate::domain::spend::SpendEntry;
use crate::domain::state::{AggregateDelta, Due, LeadChange, LeadState};
use crate::domain::{AccountId, Delivery, FeedEvent, FiredTrigger, LeadId, QualificationChange, Timestamp};

#[derive(Debug, Default)]
struct StoredAccountData {
    attributes: Option<BTreeMap<String, String>>,
    leads: BTreeSet<LeadId>,
    qualified: Option<(String, Timestamp)>,
}

#[derive(Debug, Default)]
struct Data {
    leads: HashMap<LeadId, LeadState>,
    /// The partition's lead index: lead id → created_at.
    index: BTreeMap<LeadId, Timestamp>,
    /// Index → lead id → when it falls due.
    due: HashMap<Due, HashMap<LeadId, Timestamp>>,
    /// The change feed; a cursor is `m<number of entries consumed>`. An
    /// erased lead's entries are `None`.
    feed: Vec<Option<FeedEvent>>,
    /// Fired triggers; a trigger's id is `t<index>`. An erased lead's are
    /// `None`.
    triggers: Vec<Option<FiredTrigger>>,
    /// Rule-set version → content digest.
    rule_set_versions: HashMap<String, String>,
    /// The digest of the rule set last activated.
    active_rule_set: Option<String>,
    /// Consumer groups of the trigger log.
    groups: HashMap<String, Group>,
    /// UTC day → (group, counter) → value.
    funnel: BTreeMap<i64, HashMap<(String, FunnelCounter), f64>>,
    /// (model, UTC day) → (group, counter) → credit.
    credits: BTreeMap<(Model, i64), HashMap<(String, CreditCounter), i64>>,
    /// Cohort month → (group, counter) → leads.
    cohort_counts: BTreeMap<Month, HashMap<(String, CohortCounter), i64>>,
    /// (month, model, group) → leads per score bucket.
    cohort_scores: HashMap<(Month, String, String), ScoreDistribution>,
    accounts: HashMap<AccountId, StoredAccountData>,
    /// (UTC day, campaign, source, channel) → spend.
    spend: BTreeMap<(i64, String, String, String), SpendEntry>,
    /// The currency of the spend.
    currency: Option<String>,
    /// Webhook endpoint → its delivery state.
    webhooks: HashMap<String, WebhookData>,
    /// The audit trail, with each event's sequence number (its id is
    /// `a<number>`).
    audit: std::collections::VecDeque<(u64, crate::domain::audit::AuditEvent)>,
    audit_next: u64,
}

#[derive(Debug, Default)]
struct WebhookData {
    lease: Option<(String, std::time::Instant)>,
    position: Option<WebhookPosition>,
    /// Dead letters and replayed ones, oldest first.
    dead: Vec<WebhookLetter>,
    replay: Vec<WebhookLetter>,
    counters: WebhookCounters,
}

impl Data {
    /// Writes one change if the lead is at the expected version.
    fn apply(&mut self, change: &LeadChange) -> Applied {
        let id = &change.state.lead.lead_id;
        let version = self.leads.get(id).map_or(0, |l| l.version);
        if version != change.expected_version {
            return Applied::Conflict;
        }
        let mut feed_ids = Vec::new();
        if let Some(tombstone) = &change.erase {
            self.erase(id);
            self.feed.push(Some(FeedEvent::Erased(tombstone.clone())));
            feed_ids.push(cursor(self.feed.len()));
        } else {
            self.leads.insert(id.clone(), change.state.clone());
        }
        for c in &change.feed {
            self.feed.push(Some(FeedEvent::Moved { lead_id: id.clone(), change: c.clone() }));
            feed_ids.push(cursor(self.feed.len()));
        }
        let mut trigger_ids = Vec::new();
        for t in &change.triggers {
            self.triggers.push(Some(t.clone()));
            trigger_ids.push(format!("t{}", self.triggers.len() - 1));
        }
        for delta in &change.aggregates {
            match delta {
                AggregateDelta::Funnel { day, group, counter, by, .. } => {
                    increment(self.funnel.entry(*day).or_default(), (group.clone(), *counter), *by);
                }
                AggregateDelta::Credit { day, model, group, counter, by, .. } => {
                    increment(self.credits.entry((*model, *day)).or_default(), (group.clone(), *counter), *by);
                }
                AggregateDelta::CohortCount { month, group, counter, by } => {
                    increment(self.cohort_counts.entry(*month).or_default(), (group.clone(), *counter), *by);
                }
                AggregateDelta::CohortScore { month, model, group, bucket, by } => {
                    let key = (*month, model.clone(), group.clone());
                    let d = self.cohort_scores.entry(key.clone()).or_default();
                    d.add(*bucket, *by);
                    d.0.retain(|_, n| *n != 0);
                    if d.0.is_empty() {
                        self.cohort_scores.remove(&key);
                    }
                }
            }
        }
        if change.erase.is_some() {
            // Taken off every index below; never listed again.
        } else if let Some(at) = change.indexed_at {
            self.index.insert(id.clone(), at);
        }
        for (due, at) in &change.due {
            let index = self.due.entry(due.clone()).or_default();
            match at {
                Some(at) => index.insert(id.clone(), *at),
                None => index.remove(id),
            };
        }
        if let Some((left, joined)) = &change.account {
            if let Some(left) = left.as_ref().filter(|l| Some(*l) != joined.as_ref())
                && let Some(account) = self.accounts.get_mut(left)
            {
                account.leads.remove(id);
            }
            if let Some(joined) = joined {
                self.accounts.entry(joined.clone()).or_default().leads.insert(id.clone());
            }
        }
        Applied::Written { feed_ids, trigger_ids }
    }

    /// Deletes a lead's record, its lead-index entry, and its feed and
    /// trigger entries (pending ones leave every group).
    fn erase(&mut self, id: &LeadId) {
        self.leads.remove(id);
        self.index.remove(id);
        for entry in &mut self.feed {
            if matches!(entry, Some(FeedEvent::Moved { lead_id, .. }) if lead_id == id) {
                *entry = None;
            }
        }
        for (index, entry) in self.triggers.iter_mut().enumerate() {
            if entry.as_ref().is_some_and(|t| t.lead_id == id.as_str()) {
                *entry = None;
                for g in self.groups.values_mut() {
                    g.pending.remove(&index);
                }
            }
        }
    }
}

/// Adds to a counter; a counter back at zero is no counter (as on Redis).
fn increment<K, V>(counters: &mut HashMap<K, V>, key: K, by: V)
where
    K: std::hash::Hash + Eq,
    V: Copy + Default + PartialEq + std::ops::Add<Output = V>,
{
    let n = counters.get(&key).copied().unwrap_or_default() + by;
    if n == V::default() {
        counters.remove(&key);
    } else {
        counters.insert(key, n);
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

fn cursor(position: usize) -> String {
    format!("m{position}")
}

#[async_trait]
impl Leads for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadState>>, StoreError> {
        let data = self.data();
        Ok(ids.iter().map(|id| data.leads.get(id).cloned()).collect())
    }

    async fn apply(&self, changes: &[LeadChange], _feed: &FeedPolicy) -> Result<Vec<Applied>, StoreError> {
        let mut data = self.data();
        Ok(changes.iter().map(|c| data.apply(c)).collect())
    }

    fn partitions(&self) -> u32 {
        1
    }

    async fn lead_ids(&self, _partition: u32) -> Result<Vec<LeadId>, StoreError> {
        let data = self.data();
        let mut ids: Vec<(Timestamp, LeadId)> = data.index.iter().map(|(id, at)| (*at, id.clone())).collect();
        ids.sort();
        Ok(ids.into_iter().map(|(_, id)| id).collect())
    }

    async fn leads_created_before(
        &self,
        _partition: u32,
        before: Timestamp,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<LeadId>, StoreError> {
        let data = self.data();
        let mut ids: Vec<(Timestamp, &LeadId)> =
            data.index.iter().filter(|(_, at)| **at < before).map(|(id, at)| (*at, id)).collect();
        ids.sort();
        Ok(ids.into_iter().skip(offset).take(limit).map(|(_, id)| id.clone()).collect())
    }

    async fn due_leads(
        &self,
        due: &Due,
        _partition: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(LeadId, Timestamp)>, StoreError> {
        let data = self.data();
        let Some(index) = data.due.get(due) else { return Ok(Vec::new()) };
        let mut listed: Vec<(Timestamp, LeadId)> =
            index.iter().filter(|(_, at)| **at <= before).map(|(id, at)| (*at, id.clone())).collect();
        listed.sort();
        Ok(listed.into_iter().take(limit).map(|(at, id)| (id, at)).collect())
    }

    async fn due_count(&self, due: &Due, _partition: u32) -> Result<u64, StoreError> {
        Ok(self.data().due.get(due).map_or(0, |index| index.len() as u64))
    }
}

#[async_trait]
impl ChangeFeed for MemoryStore {
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
        let mut changes = Vec::new();
        let mut end = start;
        for (i, entry) in data.feed[start..].iter().enumerate() {
            if changes.len() >= limit {
                break;
            }
            end = start + i + 1;
            if let Some(event) = entry {
                changes.push(QualificationChange { event: event.clone(), id: cursor(end), cursor: cursor(end) });
            }
        }
        Ok(FeedPage { next_cursor: cursor(end), changes })
    }

    async fn feed_end(&self) -> Result<String, StoreError> {
        Ok(cursor(self.data().feed.len()))
    }
}

#[async_trait]
impl TriggerQueue for MemoryStore {
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
            if triggers[g.next].is_some() {
                let p = Pending { consumer: Some(consumer.to_owned()), delivered_at: now, deliveries: 1 };
                g.pending.insert(g.next, p);
                handed.push((g.next, 1));
            }
            g.next += 1;
        }
        handed.into_iter().filter_map(|(index, n)| Some(memory_delivery(index, triggers[index].as_ref()?, n))).collect()
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

    async fn start_group_at_end(&self, group: &str) -> Result<(), StoreError> {
        let mut data = self.data();
        let end = data.triggers.len();
        data.groups.entry(group.to_owned()).or_default().next = end;
        Ok(())
    }

    async fn lead_triggers(&self, lead: &LeadId, scan: usize) -> Result<Vec<Delivery>, StoreError> {
        let data = self.data();
        let newest = data.triggers.iter().enumerate().rev().take(scan);
        newest
            .filter_map(|(index, t)| Some((index, t.as_ref()?)))
            .filter(|(_, t)| t.lead_id == lead.as_str())
            .map(|(index, t)| memory_delivery(index, t, 0))
            .collect()
    }

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let data = self.data();
        let Some(g) = data.groups.get(group) else { return Ok(Vec::new()) };
        g.pending
            .iter()
            .filter(|(_, p)| p.consumer.is_none())
            .filter_map(|(index, p)| Some((index, data.triggers[*index].as_ref()?, p)))
            .take(limit)
            .map(|(index, t, p)| memory_delivery(*index, t, p.deliveries))
            .collect()
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

#[async_trait]
impl Aggregates for MemoryStore {
    /// From the same aggregates the Redis store keeps: the score
    /// distributions of the cohort's months, and their counters.
    async fn cohort_profile(&self, query: &CohortQuery) -> Result<CohortProfile, StoreError> {
        let data = self.data();
        let group = query.group();
        let mut distribution = ScoreDistribution::default();
        let mut counters = Vec::new();
        for month in query.from.until(query.to) {
            if let Some(d) = data.cohort_scores.get(&(month, query.model.clone(), group.clone())) {
                for (bucket, n) in &d.0 {
                    distribution.add(*bucket, *n);
                }
            }
            let counts = data.cohort_counts.get(&month).into_iter().flatten();
            counters.extend(counts.filter(|((g, _), _)| *g == group).map(|((_, counter), n)| (*counter, *n)));
        }
        Ok(CohortProfile::from_aggregates(&distribution, counters, query.buckets))
    }

    async fn funnel(&self, from_day: i64, to_day: i64) -> Result<FunnelCounters, StoreError> {
        let data = self.data();
        let mut counters = FunnelCounters::default();
        for fields in data.funnel.range(from_day..to_day).map(|(_, f)| f) {
            for ((group, counter), value) in fields {
                counters.add(group, *counter, *value);
            }
        }
        Ok(counters)
    }

    async fn credits(&self, model: Model, from_day: i64, to_day: i64) -> Result<Credits, StoreError> {
        let data = self.data();
        let mut credits = Credits::default();
        for fields in data.credits.range((model, from_day)..(model, to_day)).map(|(_, f)| f) {
            for ((group, counter), by) in fields {
                credits.add(group, *counter, *by);
            }
        }
        Ok(credits)
    }
}

#[async_trait]
impl Accounts for MemoryStore {
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

#[async_trait]
impl Spend for MemoryStore {
    async fn record_spend(&self, entries: &[SpendEntry]) -> Result<(), StoreError> {
        let mut data = self.data();
        for entry in entries {
            let key = (entry.day, entry.campaign.clone(), entry.source.clone(), entry.channel.clone());
            data.spend.insert(key, entry.clone());
        }
        Ok(())
    }

    async fn spend(&self, from_day: i64, to_day: i64) -> Result<Vec<SpendEntry>, StoreError> {
        let data = self.data();
        let first = (from_day, String::new(), String::new(), String::new());
        Ok(data.spend.range(first..).take_while(|((day, ..), _)| *day < to_day).map(|(_, e)| e.clone()).collect())
    }

    async fn spend_currency(&self) -> Result<Option<String>, StoreError> {
        Ok(self.data().currency.clone())
    }

    async fn claim_currency(&self, currency: &str) -> Result<Option<String>, StoreError> {
        let mut data = self.data();
        match &data.currency {
            Some(known) => Ok(Some(known.clone())),
            None => {
                data.currency = Some(currency.to_owned());
                Ok(None)
            }
        }
    }
}

#[async_trait]
impl RuleSetVersions for MemoryStore {
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

    async fn mark_active_rule_set(&self, digest: &str) -> Result<Option<String>, StoreError> {
        Ok(self.data().active_rule_set.replace(digest.to_owned()))
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

#[async_trait]
impl Webhooks for MemoryStore {
    async fn webhook_lease(&self, endpoint: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let mut data = self.data();
        let hook = data.webhooks.entry(endpoint.to_owned()).or_default();
        let now = std::time::Instant::now();
        let free = match &hook.lease {
            Some((owner, until)) => owner == holder || *until <= now,
            None => true,
        };
        if free {
            hook.lease = Some((holder.to_owned(), now + std::time::Duration::from_millis(ttl_ms.max(0) as u64)));
        }
        Ok(free)
    }

    async fn release_webhook_lease(&self, endpoint: &str, holder: &str) -> Result<(), StoreError> {
        if let Some(hook) = self.data().webhooks.get_mut(endpoint)
            && hook.lease.as_ref().is_some_and(|(owner, _)| owner == holder)
        {
            hook.lease = None;
        }
        Ok(())
    }

    async fn webhook_position(&self, endpoint: &str) -> Result<Option<WebhookPosition>, StoreError> {
        Ok(self.data().webhooks.get(endpoint).and_then(|h| h.position.clone()))
    }

    async fn set_webhook_position(&self, endpoint: &str, position: &WebhookPosition) -> Result<(), StoreError> {
        self.data().webhooks.entry(endpoint.to_owned()).or_default().position = Some(position.clone());
        Ok(())
    }

    async fn park_webhook_letters(&self, endpoint: &str, letters: &[WebhookLetter]) -> Result<(), StoreError> {
        let mut data = self.data();
        let hook = data.webhooks.entry(endpoint.to_owned()).or_default();
        for letter in letters {
            hook.replay.retain(|l| l.event_id != letter.event_id);
            hook.dead.retain(|l| l.event_id != letter.event_id);
            hook.dead.push(letter.clone());
        }
        // Oldest dead letter first, as Redis orders them.
        hook.dead.sort_by_key(|l| l.dead_at_ms);
        Ok(())
    }

    async fn webhook_letters(
        &self,
        endpoint: &str,
        line: LetterLine,
        limit: usize,
    ) -> Result<Vec<WebhookLetter>, StoreError> {
        let data = self.data();
        let Some(hook) = data.webhooks.get(endpoint) else { return Ok(Vec::new()) };
        let letters = match line {
            LetterLine::Dead => &hook.dead,
            LetterLine::Replay => &hook.replay,
        };
        Ok(letters.iter().take(limit).cloned().collect())
    }

    async fn webhook_letter_counts(&self, endpoint: &str) -> Result<(u64, u64), StoreError> {
        let data = self.data();
        Ok(data.webhooks.get(endpoint).map(|h| (h.dead.len() as u64, h.replay.len() as u64)).unwrap_or_default())
    }

    async fn replay_webhook_letters(&self, endpoint: &str, event_ids: &[String]) -> Result<u64, StoreError> {
        let mut data = self.data();
        let Some(hook) = data.webhooks.get_mut(endpoint) else { return Ok(0) };
        let (moved, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut hook.dead).into_iter().partition(|l| event_ids.contains(&l.event_id));
        hook.dead = kept;
        let count = moved.len() as u64;
        hook.replay.extend(moved);
        hook.replay.sort_by_key(|l| l.dead_at_ms);
        Ok(count)
    }

    async fn forget_webhook_letters(&self, endpoint: &str, lead_ids: &[String]) -> Result<u64, StoreError> {
        let mut data = self.data();
        let Some(hook) = data.webhooks.get_mut(endpoint) else { return Ok(0) };
        let before = hook.dead.len() + hook.replay.len();
        hook.dead.retain(|l| !lead_ids.contains(&l.lead_id));
        hook.replay.retain(|l| !lead_ids.contains(&l.lead_id));
        Ok((before - hook.dead.len() - hook.replay.len()) as u64)
    }

    async fn drop_webhook_letters(&self, endpoint: &str, event_ids: &[String]) -> Result<(), StoreError> {
        if let Some(hook) = self.data().webhooks.get_mut(endpoint) {
            hook.replay.retain(|l| !event_ids.contains(&l.event_id));
        }
        Ok(())
    }

    async fn add_webhook_counters(&self, endpoint: &str, delta: &WebhookCounters) -> Result<(), StoreError> {
        self.data().webhooks.entry(endpoint.to_owned()).or_default().counters.add(delta);
        Ok(())
    }

    async fn webhook_counters(&self, endpoint: &str) -> Result<WebhookCounters, StoreError> {
        Ok(self.data().webhooks.get(endpoint).map(|h| h.counters.clone()).unwrap_or_default())
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn append_audit(
        &self,
        events: &[crate::domain::audit::AuditEvent],
        keep_after_ms: i64,
    ) -> Result<(), StoreError> {
        let mut data = self.data();
        for event in events {
            data.audit_next += 1;
            let n = data.audit_next;
            data.audit.push_back((n, event.clone()));
        }
        while data.audit.front().is_some_and(|(_, e)| e.at.millis() < keep_after_ms) {
            data.audit.pop_front();
        }
        Ok(())
    }

    async fn forget_audit(&self, ids: &[String]) -> Result<u64, StoreError> {
        let mut data = self.data();
        let before = data.audit.len();
        data.audit.retain(|(_, e)| !ids.iter().any(|id| e.mentions(id)));
        Ok((before - data.audit.len()) as u64)
    }

    async fn list_audit(&self, cursor: &str, limit: usize) -> Result<AuditPage, StoreError> {
        let after = match cursor {
            "" => 0,
            c => c
                .strip_prefix('a')
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| StoreError::BadCursor("not an audit cursor of this service".into()))?,
        };
        let data = self.data();
        let events: Vec<(String, crate::domain::audit::AuditEvent)> = data
            .audit
            .iter()
            .filter(|(n, _)| *n > after)
            .take(limit)
            .map(|(n, e)| (format!("a{n}"), e.clone()))
            .collect();
        let next_cursor = events.last().map_or_else(|| cursor.to_owned(), |(id, _)| id.clone());
        Ok(AuditPage { events, next_cursor })
    }
}
