//! Redis store: the store of record. A lead is one compact record (see
//! `record.rs`) read with one pipelined round trip; the changes the service
//! computes are written by one call of a storage-only script per partition
//! a request touches (`apply.lua`): compare-and-set on the lead's version,
//! then the record, feed and trigger entries, score history and aggregate
//! deltas, all in one atomic step.

mod audit;
mod codec;
mod cohort;
pub mod conn;
pub mod feed;
pub mod keys;
pub mod migrate;
mod nurture;
pub mod record;
mod webhooks;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, RedisError, Script};

pub use conn::{Conn, RedisTls};
pub use keys::KeySpace;

use super::{
    Accounts, Aggregates, Applied, AuditLog, AuditPage, ChangeFeed, DeliveryPolicy, FeedPage, FeedPolicy, Leads,
    LetterLine, RuleSetVersions, Spend, StoreError, StoredAccount, TriggerQueue, TriggerStats, WebhookCounters,
    WebhookLetter, WebhookPosition, Webhooks,
};
use crate::domain::AccountId;
use crate::domain::account::AccountProfile;
use crate::domain::attribution::{Credits, Model};
use crate::domain::profiles::{CohortProfile, CohortQuery, FunnelCounters, Month};
use crate::domain::spend::SpendEntry;
use crate::domain::state::{AggregateDelta, Due, LeadChange, LeadState};
use crate::domain::time::MILLIS_PER_DAY;
use crate::domain::{Delivery, FeedEvent, LeadId, QualificationChange, Timestamp, Tombstone};
use codec::{SEP, num};
use feed::{EntryId, FeedCursor};

/// How to reach Redis and lay out keys.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub partitions: u32,
    /// Bound on every Redis call, connection included.
    pub command_timeout: Duration,
    /// CA and client certificate for `rediss://` (default: none).
    pub tls: conn::RedisTls,
}

pub struct RedisStore {
    conn: Conn,
    keys: KeySpace,
    apply: Script,
    account: Script,
    timeout: Duration,
    /// Consumer groups known to exist on every trigger stream.
    groups: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl RedisStore {
    /// Prepares a connection without waiting for Redis: a store that is
    /// down at start-up reports `Unavailable` until it answers, then works.
    pub fn connect(settings: &RedisSettings) -> Result<Self, StoreError> {
        let conn = Conn::open(&settings.url, settings.command_timeout, &settings.tls).map_err(StoreError::Internal)?;
        Ok(Self {
            conn,
            keys: KeySpace::new(settings.key_prefix.clone(), settings.partitions),
            apply: Script::new(include_str!("apply.lua")),
            account: Script::new(include_str!("account.lua")),
            timeout: settings.command_timeout,
            groups: Default::default(),
        })
    }

    /// Observes each Redis command's latency in `histogram` (by operation).
    pub fn with_latency(mut self, histogram: prometheus::HistogramVec) -> Self {
        self.conn = self.conn.with_latency(histogram);
        self
    }

    /// Runs `f` on a connection, bounded by the command timeout.
    async fn call<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn classify(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Unavailable(format!("Redis timed out: {e}"))
    } else if is_transient(&e) {
        unavailable(e)
    } else {
        StoreError::Internal(e.to_string())
    }
}

/// Conditions that pass by themselves, so the caller should retry: the
/// connection is down, refused or reset; the server is loading its data
/// (`LOADING`), busy with a script (`BUSY`), out of memory until eviction
/// (`OOM`), a replica after a failover (`READONLY`), or the cluster is
/// resharding or failing over (`TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`,
/// `MOVED`, `ASK`). Everything else is a fault of ours: INTERNAL.
pub(crate) fn is_transient(e: &RedisError) -> bool {
    const CODES: [&str; 9] =
        ["LOADING", "BUSY", "OOM", "READONLY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "MOVED", "ASK"];
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
        || e.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || e.code().is_some_and(|code| CODES.contains(&code))
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

#[async_trait]
impl Leads for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await?;
        Ok(())
    }

    async fn load(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadState>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.get(self.keys.lead(id).lead);
        }
        let replies: Vec<Option<Vec<u8>>> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        ids.iter()
            .zip(replies)
            .map(|(id, reply)| match reply {
                Some(value) => {
                    let (version, bytes) = record::split_version(&value).ok_or_else(|| StoreError::Corrupt {
                        lead_id: id.to_string(),
                        detail: "its record version is unreadable".into(),
                    })?;
                    record::decode(id, version, bytes).map(Some)
                }
                None => Ok(None),
            })
            .collect()
    }

    async fn apply(&self, changes: &[LeadChange], feed: &FeedPolicy) -> Result<Vec<Applied>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        // One script call per partition touched, all pipelined.
        let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, change) in changes.iter().enumerate() {
            by_partition.entry(self.keys.partition(&change.state.lead.lead_id)).or_default().push(i);
        }
        let mut calls = Vec::with_capacity(by_partition.len());
        for (partition, members) in &by_partition {
            calls.push(self.apply_invocation(*partition, members.iter().map(|&i| &changes[i]), feed)?);
        }
        let mut pipe = redis::pipe();
        for inv in &calls {
            pipe.invoke_script(inv);
        }
        let replies: Vec<Vec<Vec<String>>> = self
            .call(|mut c| async move {
                match pipe.query_async(&mut c).await {
                    // The script cache was flushed (e.g. Redis restarted):
                    // load it and send again; a script that did not run
                    // wrote nothing.
                    Err(e) if is_noscript(&e) => {
                        self.apply.prepare_invoke().load_async(&mut c).await?;
                        pipe.query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await?;
        let mut applied: Vec<Option<Applied>> = vec![None; changes.len()];
        for ((partition, members), reply) in by_partition.iter().zip(replies) {
            if reply.len() != members.len() {
                return Err(StoreError::Internal(format!(
                    "apply: {} answers for {} leads",
                    reply.len(),
                    members.len()
                )));
            }
            for (&i, mut ids) in members.iter().zip(reply) {
                applied[i] = Some(if ids.first().map(String::as_str) == Some("1") {
                    let mut ids: Vec<String> = ids.drain(1..).map(|id| format!("{partition}/{id}")).collect();
                    let fed = changes[i].feed.len() + usize::from(changes[i].erase.is_some());
                    let trigger_ids = ids.split_off(fed.min(ids.len()));
                    Applied::Written { feed_ids: ids, trigger_ids }
                } else {
                    Applied::Conflict
                });
            }
        }
        let applied: Vec<Applied> = applied.into_iter().map(|a| a.unwrap_or(Applied::Conflict)).collect();
        self.link_accounts(changes, &applied).await?;
        Ok(applied)
    }

    fn partitions(&self) -> u32 {
        self.keys.partitions()
    }

    async fn due_leads(
        &self,
        due: &Due,
        partition: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<(LeadId, Timestamp)>, StoreError> {
        let key = self.keys.due(due, partition);
        let raw: Vec<(String, i64)> = self
            .call(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(before.millis())
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        raw.into_iter()
            .map(|(id, at)| {
                let id = LeadId::from_stored(id).map_err(|e| StoreError::Internal(format!("{due:?} index: {e}")))?;
                Ok((id, Timestamp::from_millis(at)))
            })
            .collect()
    }

    async fn leads_created_before(
        &self,
        partition: u32,
        before: Timestamp,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<LeadId>, StoreError> {
        let key = self.keys.index(partition);
        let raw: Vec<String> = self
            .call(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(format!("({}", before.millis()))
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        raw.into_iter()
            .map(|id| {
                LeadId::from_stored(id).map_err(|e| StoreError::Internal(format!("lead index holds a bad id: {e}")))
            })
            .collect()
    }

    async fn due_count(&self, due: &Due, partition: u32) -> Result<u64, StoreError> {
        let key = self.keys.due(due, partition);
        self.call(|mut c| async move { redis::cmd("ZCARD").arg(key).query_async(&mut c).await }).await
    }

    async fn lead_ids(&self, partition: u32) -> Result<Vec<LeadId>, StoreError> {
        let key = self.keys.index(partition);
        let raw: Vec<String> = self
            .call(|mut c| async move { redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query_async(&mut c).await })
            .await?;
        raw.into_iter()
            .map(|id| {
                LeadId::from_stored(id).map_err(|e| StoreError::Internal(format!("lead index holds a bad id: {e}")))
            })
            .collect()
    }
}

#[async_trait]
impl ChangeFeed for RedisStore {
    async fn list_changes(&self, after: &str, limit: usize) -> Result<FeedPage, StoreError> {
        let cursor = FeedCursor::decode(after, self.keys.partitions())?;
        let mut pipe = redis::pipe();
        for (partition, position) in cursor.0.iter().enumerate() {
            pipe.cmd("XRANGE")
                .arg(self.keys.feed(partition as u32))
                .arg(position.range_after())
                .arg("+")
                .arg("COUNT")
                .arg(limit);
        }
        let replies: Vec<redis::streams::StreamRangeReply> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let per_partition = replies
            .into_iter()
            .enumerate()
            .map(|(partition, reply)| {
                reply
                    .ids
                    .into_iter()
                    .map(|entry| {
                        let id = EntryId::parse(&entry.id);
                        let body = match (entry.get::<String>("l"), entry.get::<Vec<u8>>("c")) {
                            (Some(lead_id), Some(record)) => Some(feed::Body::Moved { lead_id, record }),
                            // A tombstone: the erased lead's reference and when.
                            _ => match (entry.get::<String>("e"), entry.get::<i64>("a")) {
                                (Some(lead_ref), Some(at)) => Some(feed::Body::Erased { lead_ref, at }),
                                _ => None,
                            },
                        };
                        match (id, body) {
                            (Some(id), Some(body)) => Ok(feed::Entry { partition, id, body }),
                            _ => Err(StoreError::Internal(format!(
                                "malformed feed entry {} in partition {partition}",
                                entry.id
                            ))),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut changes = Vec::new();
        let mut next_cursor = cursor.encode();
        for (entry, after) in feed::merge(cursor, per_partition, limit) {
            let event = match entry.body {
                feed::Body::Moved { lead_id: raw, record } => {
                    let lead_id = LeadId::from_stored(raw.clone())
                        .map_err(|e| StoreError::Internal(format!("feed entry {} has a bad lead id: {e}", entry.id)))?;
                    let change = record::decode_change(&record).map_err(|e| StoreError::Corrupt {
                        lead_id: raw,
                        detail: format!("feed entry {}: {e}", entry.id),
                    })?;
                    FeedEvent::Moved { lead_id, change }
                }
                feed::Body::Erased { lead_ref, at } => {
                    FeedEvent::Erased(Tombstone { lead_ref, at: Timestamp::from_millis(at) })
                }
            };
            changes.push(QualificationChange {
                event,
                id: format!("{}/{}", entry.partition, entry.id),
                cursor: after.clone(),
            });
            next_cursor = after;
        }
        Ok(FeedPage { changes, next_cursor })
    }

    async fn feed_end(&self) -> Result<String, StoreError> {
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            pipe.cmd("XREVRANGE").arg(self.keys.feed(partition)).arg("+").arg("-").arg("COUNT").arg(1);
        }
        let replies: Vec<redis::streams::StreamRangeReply> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let ends = replies
            .into_iter()
            .map(|r| r.ids.first().and_then(|e| EntryId::parse(&e.id)).unwrap_or_default())
            .collect();
        Ok(FeedCursor(ends).encode())
    }
}

#[async_trait]
impl TriggerQueue for RedisStore {
    async fn deliver_triggers(
        &self,
        group: &str,
        consumer: &str,
        max: usize,
        policy: &DeliveryPolicy,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.deliver(group, consumer, max, policy, now).await
    }

    async fn ack_triggers(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
        self.ack(group, trigger_ids).await
    }

    async fn triggers_in_flight(&self, group: &str, consumer: &str) -> Result<u64, StoreError> {
        self.in_flight(group, consumer).await
    }

    async fn trigger_heads(&self) -> Result<Vec<String>, StoreError> {
        self.heads().await
    }

    async fn start_group_at_end(&self, group: &str) -> Result<(), StoreError> {
        self.group_at_end(group).await
    }

    async fn lead_triggers(&self, lead: &LeadId, scan: usize) -> Result<Vec<Delivery>, StoreError> {
        self.triggers_of(lead, scan).await
    }

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.dead(group, limit).await
    }

    async fn replay_dead_letters(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
        self.replay(group, trigger_ids).await
    }

    async fn trigger_stats(&self, group: &str) -> Result<TriggerStats, StoreError> {
        self.stats(group).await
    }
}

#[async_trait]
impl Aggregates for RedisStore {
    async fn cohort_profile(&self, query: &CohortQuery) -> Result<CohortProfile, StoreError> {
        cohort::profile(self, query).await
    }

    /// O(partitions × days) hash reads, pipelined.
    async fn funnel(&self, from_day: i64, to_day: i64) -> Result<FunnelCounters, StoreError> {
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            for day in from_day..to_day {
                pipe.hgetall(self.keys.funnel(partition, day));
            }
        }
        let replies: Vec<HashMap<String, String>> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut counters = FunnelCounters::default();
        for (field, value) in replies.iter().flatten() {
            if let Ok(v) = value.parse::<f64>()
                && v.is_finite()
                && let Some((group, counter)) = codec::parse_funnel_field(field)
            {
                counters.add(group, counter, v);
            }
        }
        Ok(counters)
    }

    /// O(partitions × days) hash reads, pipelined.
    async fn credits(&self, model: Model, from_day: i64, to_day: i64) -> Result<Credits, StoreError> {
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            for day in from_day..to_day {
                pipe.hgetall(self.keys.credit(partition, model.key(), day));
            }
        }
        let replies: Vec<HashMap<String, String>> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut credits = Credits::default();
        for (field, value) in replies.iter().flatten() {
            if let Ok(v) = value.parse::<f64>()
                && v.is_finite()
                && let Some((group, counter)) = codec::parse_credit_field(field)
            {
                credits.add(group, counter, v.round() as i64);
            }
        }
        Ok(credits)
    }
}

#[async_trait]
impl Accounts for RedisStore {
    async fn upsert_account(&self, account: &AccountProfile) -> Result<(), StoreError> {
        let keys = self.keys.account(&account.account_id);
        let mut inv = self.account.prepare_invoke();
        inv.key(&keys.account);
        for (name, value) in &account.attributes {
            inv.arg(name).arg(value);
        }
        let _: i64 = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Ok(())
    }

    async fn load_account(&self, account_id: &AccountId) -> Result<Option<StoredAccount>, StoreError> {
        let keys = self.keys.account(account_id);
        let mut pipe = redis::pipe();
        pipe.hgetall(&keys.account).smembers(&keys.leads);
        let (fields, members): (HashMap<String, String>, Vec<String>) =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        if fields.is_empty() && members.is_empty() {
            return Ok(None);
        }
        let mut lead_ids: Vec<LeadId> = members.into_iter().filter_map(|m| LeadId::parse(m).ok()).collect();
        lead_ids.sort();
        let attributes = fields
            .contains_key("u")
            .then(|| fields.iter().filter_map(|(k, v)| Some((k.strip_prefix("a:")?.to_owned(), v.clone()))).collect());
        let qualified = fields.get("q").and_then(|q| {
            let (rule, at) = q.split_once(SEP)?;
            Some((rule.to_owned(), Timestamp::from_millis(at.parse().ok()?)))
        });
        Ok(Some(StoredAccount { attributes, lead_ids, qualified }))
    }

    async fn drop_account_leads(&self, account_id: &AccountId, lead_ids: &[LeadId]) -> Result<(), StoreError> {
        if lead_ids.is_empty() {
            return Ok(());
        }
        let key = self.keys.account(account_id).leads;
        let ids: Vec<&str> = lead_ids.iter().map(LeadId::as_str).collect();
        let _: i64 = self.call(|mut c| async move { c.srem(key, ids).await }).await?;
        Ok(())
    }

    async fn mark_account_qualified(
        &self,
        account_id: &AccountId,
        rule_id: &str,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let key = self.keys.account(account_id).account;
        let value = format!("{rule_id}{SEP}{}", at.millis());
        self.call(|mut c| async move { c.hset_nx(key, "q", value).await }).await
    }
}

#[async_trait]
impl Spend for RedisStore {
    /// One `HSET` per entry (in its month's hash), pipelined. Not atomic
    /// across months on a cluster: a failed call may have written some
    /// entries, and sending it again writes the same.
    async fn record_spend(&self, entries: &[SpendEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            let (field, value) = codec::spend_field(entry);
            pipe.hset(self.keys.spend(&spend_month(entry.day)), field, value).ignore();
        }
        let _: () = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(())
    }

    /// One hash read per month of the period, pipelined.
    async fn spend(&self, from_day: i64, to_day: i64) -> Result<Vec<SpendEntry>, StoreError> {
        if to_day <= from_day {
            return Ok(Vec::new());
        }
        let first = Month::of(Timestamp::from_millis(from_day * MILLIS_PER_DAY));
        let last = Month::of(Timestamp::from_millis((to_day - 1) * MILLIS_PER_DAY));
        let mut pipe = redis::pipe();
        for month in first.until(last.next()) {
            pipe.hgetall(self.keys.spend(&month.key()));
        }
        let replies: Vec<HashMap<String, String>> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut entries = Vec::new();
        for (field, value) in replies.iter().flatten() {
            let entry = codec::parse_spend(field, value)
                .ok_or_else(|| StoreError::Internal("a spend hash holds a field that is not a spend entry".into()))?;
            if (from_day..to_day).contains(&entry.day) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| {
            (a.day, &a.campaign, &a.source, &a.channel).cmp(&(b.day, &b.campaign, &b.source, &b.channel))
        });
        Ok(entries)
    }

    async fn spend_currency(&self) -> Result<Option<String>, StoreError> {
        let key = self.keys.spend_currency();
        self.call(|mut c| async move { c.get(&key).await }).await
    }

    /// `GET` then `SET NX`, in one round trip: two replicas claiming at
    /// once both end up with the first one's.
    async fn claim_currency(&self, currency: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.spend_currency();
        let mut pipe = redis::pipe();
        pipe.get(&key);
        pipe.cmd("SET").arg(&key).arg(currency).arg("NX").ignore();
        let (recorded,): (Option<String>,) = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(recorded)
    }
}

/// The `YYYYMM` of a UTC day.
fn spend_month(day: i64) -> String {
    Month::of(Timestamp::from_millis(day * MILLIS_PER_DAY)).key()
}

#[async_trait]
impl RuleSetVersions for RedisStore {
    async fn claim_rule_set_version(&self, version: &str, digest: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.rule_set_versions();
        let mut pipe = redis::pipe();
        pipe.hset_nx(&key, version, digest).hget(&key, version);
        let (claimed, known): (bool, Option<String>) =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(if claimed { None } else { known })
    }

    async fn rule_set_version_digest(&self, version: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.rule_set_versions();
        self.call(|mut c| async move { redis::cmd("HGET").arg(key).arg(version).query_async(&mut c).await }).await
    }

    async fn mark_active_rule_set(&self, digest: &str) -> Result<Option<String>, StoreError> {
        let key = self.keys.active_rule_set();
        self.call(|mut c| async move { redis::cmd("SET").arg(key).arg(digest).arg("GET").query_async(&mut c).await })
            .await
    }
}

#[async_trait]
impl AuditLog for RedisStore {
    async fn append_audit(
        &self,
        events: &[crate::domain::audit::AuditEvent],
        keep_after_ms: i64,
    ) -> Result<(), StoreError> {
        self.append(events, keep_after_ms).await
    }

    async fn list_audit(&self, cursor: &str, limit: usize) -> Result<AuditPage, StoreError> {
        self.list(cursor, limit).await
    }

    async fn forget_audit(&self, ids: &[String]) -> Result<u64, StoreError> {
        self.forget(ids).await
    }
}

#[async_trait]
impl Webhooks for RedisStore {
    async fn webhook_lease(&self, endpoint: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        self.lease(endpoint, holder, ttl_ms).await
    }

    async fn release_webhook_lease(&self, endpoint: &str, holder: &str) -> Result<(), StoreError> {
        self.release(endpoint, holder).await
    }

    async fn webhook_position(&self, endpoint: &str) -> Result<Option<WebhookPosition>, StoreError> {
        self.position(endpoint).await
    }

    async fn set_webhook_position(&self, endpoint: &str, position: &WebhookPosition) -> Result<(), StoreError> {
        self.set_position(endpoint, position).await
    }

    async fn park_webhook_letters(&self, endpoint: &str, letters: &[WebhookLetter]) -> Result<(), StoreError> {
        self.park(endpoint, letters).await
    }

    async fn webhook_letters(
        &self,
        endpoint: &str,
        line: LetterLine,
        limit: usize,
    ) -> Result<Vec<WebhookLetter>, StoreError> {
        self.letters(endpoint, line, limit).await
    }

    async fn webhook_letter_counts(&self, endpoint: &str) -> Result<(u64, u64), StoreError> {
        self.letter_counts(endpoint).await
    }

    async fn replay_webhook_letters(&self, endpoint: &str, event_ids: &[String]) -> Result<u64, StoreError> {
        self.replay_letters(endpoint, event_ids).await
    }

    async fn drop_webhook_letters(&self, endpoint: &str, event_ids: &[String]) -> Result<(), StoreError> {
        self.drop_letters(endpoint, event_ids).await
    }

    async fn forget_webhook_letters(&self, endpoint: &str, lead_ids: &[String]) -> Result<u64, StoreError> {
        self.forget_letters(endpoint, lead_ids).await
    }

    async fn add_webhook_counters(&self, endpoint: &str, delta: &WebhookCounters) -> Result<(), StoreError> {
        self.add_counts(endpoint, delta).await
    }

    async fn webhook_counters(&self, endpoint: &str) -> Result<WebhookCounters, StoreError> {
        self.counts(endpoint).await
    }
}

impl RedisStore {
    /// Checks that the data under the key prefix is in the layout this build
    /// reads, recording it on an empty prefix. `Ok(Err(why))`: it is not
    /// (the service must not start over it).
    pub async fn check_format(&self) -> Result<Result<(), String>, StoreError> {
        let key = self.keys.format();
        let wanted = record::FORMAT.to_string();
        let found: Option<String> = self.call(|mut c| async move { c.get(&key).await }).await?;
        match found {
            Some(format) if format == wanted => return Ok(Ok(())),
            Some(format) => {
                return Ok(Err(format!(
                    "the data under Redis key prefix '{}' is in layout format {format}; this build reads format {wanted}",
                    self.keys.prefix()
                )));
            }
            None => {}
        }
        // Data written before the layout was recorded (format 1) has lead
        // indexes but no format key.
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            pipe.exists(self.keys.index(partition));
        }
        let found: Vec<bool> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        if found.iter().any(|f| *f) {
            return Ok(Err(format!(
                "the data under Redis key prefix '{}' was written by an earlier release (layout format 1), which \
                 this build cannot read: stop every instance of the service and run `leadscore migrate` with \
                 the same configuration (or --redis-url), then start this one again",
                self.keys.prefix()
            )));
        }
        let key = self.keys.format();
        let _: bool = self.call(|mut c| async move { c.set_nx(&key, &wanted).await }).await?;
        Ok(Ok(()))
    }

    /// One `apply.lua` call for changes of one partition.
    fn apply_invocation<'a>(
        &'a self,
        partition: u32,
        changes: impl Iterator<Item = &'a LeadChange>,
        feed: &FeedPolicy,
    ) -> Result<redis::ScriptInvocation<'a>, StoreError> {
        let mut keys = KeyList::default();
        let mut args: Vec<Vec<u8>> = vec![Vec::new()];
        let mut leads = 0;
        for change in changes {
            leads += 1;
            let id = &change.state.lead.lead_id;
            let lead_keys = self.keys.lead(id);
            let member = id.as_str().as_bytes().to_vec();
            let mut ops: Vec<Vec<Vec<u8>>> = Vec::new();
            let k = |keys: &mut KeyList, key: String| keys.index(key).to_string().into_bytes();
            let text = |v: &dyn std::fmt::Display| v.to_string().into_bytes();
            // The lead's own entries are listed by id (oldest dropped with
            // the streams' retention), so an erasure finds them.
            let listed_ms = feed.retention_ms.max(feed.trigger_retention_ms);
            let list = |keys: &mut KeyList, tag: &[u8]| {
                vec![
                    b"L".to_vec(),
                    k(keys, lead_keys.entries.clone()),
                    tag.to_vec(),
                    text(&listed_ms),
                    k(keys, lead_keys.feed.clone()),
                    k(keys, lead_keys.triggers.clone()),
                ]
            };
            if let Some(tombstone) = &change.erase {
                ops.push(vec![
                    b"E".to_vec(),
                    k(&mut keys, lead_keys.entries.clone()),
                    k(&mut keys, lead_keys.feed.clone()),
                    k(&mut keys, lead_keys.triggers.clone()),
                ]);
                ops.push(vec![
                    b"X".to_vec(),
                    k(&mut keys, lead_keys.feed.clone()),
                    text(&feed.retention_ms),
                    b"2".to_vec(),
                    b"e".to_vec(),
                    tombstone.lead_ref.clone().into_bytes(),
                    b"a".to_vec(),
                    text(&tombstone.at.millis()),
                ]);
                ops.push(vec![b"R".to_vec(), k(&mut keys, lead_keys.index.clone()), member.clone()]);
            }
            for c in &change.feed {
                let record = record::encode_change(c);
                ops.push(vec![
                    b"X".to_vec(),
                    k(&mut keys, lead_keys.feed.clone()),
                    text(&feed.retention_ms),
                    b"2".to_vec(),
                    b"l".to_vec(),
                    member.clone(),
                    b"c".to_vec(),
                    record,
                ]);
                ops.push(list(&mut keys, b"f"));
            }
            for t in &change.triggers {
                let payload = record::encode_trigger(t);
                ops.push(vec![
                    b"X".to_vec(),
                    k(&mut keys, lead_keys.triggers.clone()),
                    text(&feed.trigger_retention_ms),
                    b"1".to_vec(),
                    b"t".to_vec(),
                    payload,
                ]);
                ops.push(list(&mut keys, b"t"));
            }
            let mut expiries = std::collections::BTreeMap::new();
            for delta in &change.aggregates {
                match delta {
                    AggregateDelta::Funnel { day, group, counter, by, expires } => {
                        let key = self.keys.funnel(partition, *day);
                        expiries.insert(key.clone(), *expires);
                        let field = codec::funnel_field(group, *counter).into_bytes();
                        ops.push(vec![b"F".to_vec(), k(&mut keys, key), field, text(&num(*by))]);
                    }
                    AggregateDelta::Credit { day, model, group, counter, by, expires } => {
                        let key = self.keys.credit(partition, model.key(), *day);
                        expiries.insert(key.clone(), *expires);
                        let field = codec::credit_field(group, *counter).into_bytes();
                        // A float increment: integer sums stay exact far
                        // beyond any real total, and never overflow.
                        ops.push(vec![b"F".to_vec(), k(&mut keys, key), field, text(by)]);
                    }
                    AggregateDelta::CohortCount { month, group, counter, by } => {
                        let key = self.keys.cohort_counts(partition, &month.key());
                        let field = codec::cohort_field(group, *counter).into_bytes();
                        ops.push(vec![b"I".to_vec(), k(&mut keys, key), field, text(by)]);
                    }
                    AggregateDelta::CohortScore { month, model, group, bucket, by } => {
                        let key = self.keys.cohort_scores(partition, &month.key(), model, group);
                        ops.push(vec![b"I".to_vec(), k(&mut keys, key), text(&bucket.index()), text(by)]);
                    }
                }
            }
            for (key, expires) in expiries {
                ops.push(vec![b"A".to_vec(), k(&mut keys, key), text(&expires.millis())]);
            }
            if let Some(at) = change.indexed_at.filter(|_| change.erase.is_none()) {
                ops.push(vec![
                    b"Z".to_vec(),
                    k(&mut keys, lead_keys.index.clone()),
                    text(&at.millis()),
                    member.clone(),
                ]);
            }
            for (due, at) in &change.due {
                let key = self.keys.due(due, partition);
                ops.push(match at {
                    Some(at) => vec![b"Z".to_vec(), k(&mut keys, key), text(&at.millis()), member.clone()],
                    None => vec![b"R".to_vec(), k(&mut keys, key), member.clone()],
                });
            }
            args.push(keys.index(lead_keys.lead).to_string().into_bytes());
            args.push(record::version_prefix(change.expected_version));
            // An empty value deletes the record.
            let value = if change.erase.is_some() {
                Vec::new()
            } else {
                let mut value = record::version_prefix(change.state.version);
                value.extend(record::encode(&change.state));
                value
            };
            args.push(value);
            args.push(ops.len().to_string().into_bytes());
            args.extend(ops.into_iter().flatten());
        }
        args[0] = leads.to_string().into_bytes();
        let mut inv = self.apply.prepare_invoke();
        for key in keys.keys {
            inv.key(key);
        }
        for arg in args {
            inv.arg(arg);
        }
        Ok(inv)
    }

    /// Lists each written lead under the account it joined and takes it off
    /// the one it left (idempotent: a crash between the change and this is
    /// mended by the next upsert; readers check each listed lead's own
    /// account id, so a stale listing never counts).
    async fn link_accounts(&self, changes: &[LeadChange], applied: &[Applied]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        for (change, applied) in changes.iter().zip(applied) {
            let (Some((left, joined)), Applied::Written { .. }) = (&change.account, applied) else { continue };
            let id = change.state.lead.lead_id.as_str();
            if let Some(joined) = joined {
                pipe.sadd(self.keys.account(joined).leads, id).ignore();
                commands += 1;
            }
            if let Some(left) = left.as_ref().filter(|l| Some(*l) != joined.as_ref()) {
                pipe.srem(self.keys.account(left).leads, id).ignore();
                commands += 1;
            }
        }
        if commands == 0 {
            return Ok(());
        }
        let _: () = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(())
    }
}

/// The keys of one script call, each once, in first-use order.
#[derive(Default)]
struct KeyList {
    keys: Vec<String>,
    at: HashMap<String, usize>,
}

impl KeyList {
    /// The key's 1-based index in KEYS.
    fn index(&mut self, key: String) -> usize {
        if let Some(i) = self.at.get(&key) {
            return *i;
        }
        self.keys.push(key.clone());
        self.at.insert(key, self.keys.len());
        self.keys.len()
    }
}
