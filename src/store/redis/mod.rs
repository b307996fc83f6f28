//! Redis store: the store of record. One Lua script call per lead per
//! request (`ingest.lua`, `upsert.lua`), pipelined when a request touches
//! several leads.

mod codec;
mod cohort;
pub mod conn;
pub mod feed;
pub mod keys;
mod nurture;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, RedisError, Script};

pub use conn::{Conn, RedisTls};
pub use keys::KeySpace;

use super::{
    CommitPlan, CommitRead, DeliveryPolicy, FeedPage, FeedPolicy, IdentifyMark, LeadBatch, LeadOutcome, LeadStore,
    ProfileSpec, StageUpdate, StoreError, StoredAccount, TriggerStats,
};
use crate::domain::AccountId;
use crate::domain::account::AccountProfile;
use crate::domain::ledger::HistoryEntry;
use crate::domain::profiles::{self, CohortProfile, CohortQuery, FunnelCounters, ScoreHistoryEntry};
use crate::domain::{
    Delivery, IngestPolicy, LeadId, LeadProfile, LeadSnapshot, QualificationChange, SignalStatus, Stage, StageChange,
    Timestamp, TriggerFire,
};
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
    ingest: Script,
    upsert: Script,
    stage: Script,
    rescore: Script,
    identify: Script,
    sweep: Script,
    commit: Script,
    refresh: Script,
    account: Script,
    timeout: Duration,
    /// What the active rule set says about profiles (see `profile.lua`).
    spec: std::sync::RwLock<std::sync::Arc<ProfileSpec>>,
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
            ingest: Script::new(concat!(include_str!("profile.lua"), include_str!("ingest.lua"))),
            upsert: Script::new(concat!(include_str!("profile.lua"), include_str!("upsert.lua"))),
            stage: Script::new(concat!(include_str!("profile.lua"), include_str!("stage.lua"))),
            rescore: Script::new(concat!(include_str!("profile.lua"), include_str!("rescore.lua"))),
            refresh: Script::new(concat!(include_str!("profile.lua"), include_str!("refresh.lua"))),
            account: Script::new(include_str!("account.lua")),
            identify: Script::new(include_str!("identify.lua")),
            sweep: Script::new(include_str!("sweep.lua")),
            commit: Script::new(concat!(include_str!("profile.lua"), include_str!("commit.lua"))),
            timeout: settings.command_timeout,
            spec: std::sync::RwLock::new(super::spec::default_spec().clone()),
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

type IngestReply = (Vec<i64>, HashMap<String, String>, HashMap<String, String>, String);

#[async_trait]
impl LeadStore for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await }).await?;
        Ok(())
    }

    async fn upsert_lead(&self, profile: LeadProfile, now: Timestamp) -> Result<LeadSnapshot, StoreError> {
        let keys = self.keys.lead(&profile.lead_id);
        let spec = self.spec();
        let fits = spec.fits(&profile.attributes);
        let mut inv = self.upsert.prepare_invoke();
        inv.key(&keys.base).key(&keys.lead).key(&keys.days).key(&keys.index);
        inv.arg(&spec.lua_args)
            .arg(now.millis())
            .arg(profile.created_at.map(|t| t.millis().to_string()).unwrap_or_default())
            .arg(profile.account_id.as_ref().map(|a| a.as_str()).unwrap_or_default())
            .arg(profile.lead_id.as_str())
            .arg(fits.len());
        for (model, fit) in &fits {
            inv.arg(model).arg(profiles::lua_number(*fit));
        }
        for (name, value) in &profile.attributes {
            inv.arg(name).arg(value);
        }
        let (fields, days, previous): (HashMap<String, String>, HashMap<String, String>, String) =
            self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        let lead = codec::decode_lead(&profile.lead_id, fields, days)?;
        self.link_account(&lead, &previous).await?;
        Ok(lead)
    }

    async fn record_signals(
        &self,
        batches: Vec<LeadBatch>,
        now: Timestamp,
        policy: &IngestPolicy,
    ) -> Result<Vec<LeadOutcome>, StoreError> {
        let spec = self.spec();
        let invocations: Vec<_> =
            batches.iter().map(|b| self.ingest_invocation(b, now, policy, &spec.lua_args)).collect();
        let mut pipe = redis::pipe();
        for inv in &invocations {
            pipe.invoke_script(inv);
        }
        let replies: Vec<IngestReply> = self
            .call(|mut c| async move {
                match pipe.query_async(&mut c).await {
                    // The script cache was flushed (e.g. Redis restarted):
                    // load it and replay; replays are de-duplicated.
                    Err(e) if is_noscript(&e) => {
                        self.ingest.prepare_invoke().load_async(&mut c).await?;
                        pipe.query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await?;
        batches
            .into_iter()
            .zip(replies)
            .map(|(batch, (codes, fields, days, merged_into))| {
                if !merged_into.is_empty() {
                    let owner = LeadId::parse(merged_into)
                        .map_err(|e| StoreError::Internal(format!("visitor identified as a bad lead id: {e}")))?;
                    let lead = LeadSnapshot::new(batch.lead_id.clone(), now);
                    return Ok(LeadOutcome { statuses: Vec::new(), lead, merged_into: Some(owner) });
                }
                let statuses = codes
                    .into_iter()
                    .map(|code| match code {
                        1 => Ok(SignalStatus::Accepted),
                        2 => Ok(SignalStatus::Duplicate),
                        3 => Ok(SignalStatus::Capped),
                        other => Err(StoreError::Internal(format!("ingest script returned status {other}"))),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(LeadOutcome { statuses, lead: codec::decode_lead(&batch.lead_id, fields, days)?, merged_into: None })
            })
            .collect()
    }

    async fn load_leads(&self, ids: &[LeadId]) -> Result<Vec<Option<LeadSnapshot>>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            let keys = self.keys.lead(id);
            pipe.hgetall(keys.lead).hgetall(keys.days);
        }
        let replies: Vec<HashMap<String, String>> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut replies = replies.into_iter();
        ids.iter()
            .map(|id| {
                let (fields, days) = (replies.next().unwrap_or_default(), replies.next().unwrap_or_default());
                if fields.is_empty() { Ok(None) } else { codec::decode_lead(id, fields, days).map(Some) }
            })
            .collect()
    }
    async fn change_stage(
        &self,
        lead_id: &LeadId,
        expected: Stage,
        changes: &[StageChange],
        fires: &[Vec<TriggerFire>],
        policy: &FeedPolicy,
    ) -> Result<StageUpdate, StoreError> {
        let keys = self.keys.lead(lead_id);
        let encode = |what: &str, r: serde_json::Result<String>| {
            r.map_err(|e| StoreError::Internal(format!("encoding a {what}: {e}")))
        };
        let records: Vec<String> =
            changes.iter().map(|c| encode("stage change", serde_json::to_string(c))).collect::<Result<_, _>>()?;
        let mut inv = self.stage.prepare_invoke();
        inv.key(&keys.base).key(&keys.lead).key(&keys.stages).key(&keys.feed).key(&keys.triggers);
        inv.arg(&self.spec().lua_args)
            .arg(expected.as_str())
            .arg(policy.history_limit.max(1))
            .arg(policy.retention_ms)
            .arg(lead_id.as_str())
            .arg(policy.trigger_retention_ms);
        for (i, (change, record)) in changes.iter().zip(&records).enumerate() {
            let fired = fires.get(i).map_or(&[][..], Vec::as_slice);
            inv.arg(change.to.as_str()).arg(change.at.millis()).arg(record).arg(fired.len());
            for fire in fired {
                let payload = encode("trigger", serde_json::to_string(&fire.trigger))?;
                inv.arg(&fire.trigger.definition_id).arg(fire.cooldown_ms).arg(payload);
            }
        }
        let (status, current, ids, fired): (i64, String, Vec<String>, Vec<String>) =
            self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        let partition = self.keys.partition(lead_id) as usize;
        match status {
            1 => {
                let applied = changes
                    .iter()
                    .zip(ids)
                    .map(|(change, id)| QualificationChange {
                        lead_id: lead_id.clone(),
                        change: change.clone(),
                        id: format!("{partition}/{id}"),
                        // A cursor needs every partition's position: only
                        // the feed readers know them.
                        cursor: String::new(),
                    })
                    .collect();
                let triggers = fired.into_iter().map(|id| format!("{partition}/{id}")).collect();
                Ok(StageUpdate::Applied { changes: applied, triggers })
            }
            -1 => {
                let current = current
                    .parse::<Stage>()
                    .map_err(|e| StoreError::Corrupt { lead_id: lead_id.to_string(), detail: e.to_string() })?;
                Ok(StageUpdate::Conflict { current })
            }
            _ => Ok(StageUpdate::NotFound),
        }
    }

    async fn mark_identified(&self, visitor: &LeadId, lead: &LeadId) -> Result<IdentifyMark, StoreError> {
        let key = self.keys.lead(visitor).lead;
        let mut inv = self.identify.prepare_invoke();
        inv.key(key).arg(lead.as_str());
        let (status, owner): (i64, String) = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        match status {
            1 => Ok(IdentifyMark::Marked),
            -1 => Ok(IdentifyMark::AlreadyIdentified(
                LeadId::parse(owner)
                    .map_err(|e| StoreError::Internal(format!("visitor identified as a bad id: {e}")))?,
            )),
            _ => Ok(IdentifyMark::NotFound),
        }
    }

    async fn stage_history(&self, lead_id: &LeadId, limit: usize) -> Result<Vec<StageChange>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.lead(lead_id).stages;
        let records: Vec<String> = self
            .call(|mut c| async move { redis::cmd("LRANGE").arg(key).arg(0).arg(limit - 1).query_async(&mut c).await })
            .await?;
        records
            .iter()
            .map(|r| {
                serde_json::from_str(r).map_err(|e| StoreError::Corrupt {
                    lead_id: lead_id.to_string(),
                    detail: format!("stage history entry: {e}"),
                })
            })
            .collect()
    }

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
                        let field = |name: &str| entry.get::<String>(name);
                        match (EntryId::parse(&entry.id), field("l"), field("c")) {
                            (Some(id), Some(lead_id), Some(record)) => {
                                Ok(feed::Entry { partition, id, lead_id, record })
                            }
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
            let lead_id = LeadId::from_stored(entry.lead_id.clone())
                .map_err(|e| StoreError::Internal(format!("feed entry {} has a bad lead id: {e}", entry.id)))?;
            let change: StageChange = serde_json::from_str(&entry.record).map_err(|e| StoreError::Corrupt {
                lead_id: entry.lead_id.clone(),
                detail: format!("feed entry {}: {e}", entry.id),
            })?;
            changes.push(QualificationChange {
                lead_id,
                change,
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

    async fn read_for_commit(
        &self,
        lead_id: &LeadId,
        event_ids: &[String],
        seen_since: Timestamp,
    ) -> Result<CommitRead, StoreError> {
        let keys = self.keys.lead(lead_id);
        let mut pipe = redis::pipe();
        pipe.hgetall(&keys.lead).hgetall(&keys.days);
        if !event_ids.is_empty() {
            pipe.cmd("ZMSCORE").arg(&keys.seen).arg(event_ids);
        }
        let (fields, days, scores): (HashMap<String, String>, HashMap<String, String>, Vec<Option<f64>>) =
            if event_ids.is_empty() {
                let (f, d): (HashMap<String, String>, HashMap<String, String>) =
                    self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
                (f, d, Vec::new())
            } else {
                self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?
            };
        let lead = if fields.is_empty() { None } else { Some(codec::decode_lead(lead_id, fields, days)?) };
        let seen = event_ids
            .iter()
            .zip(scores)
            .filter_map(|(id, at)| {
                let at = Timestamp::from_millis(at? as i64);
                (at > seen_since).then(|| (id.clone(), at))
            })
            .collect();
        Ok(CommitRead { lead, seen })
    }

    async fn commit(&self, plan: &CommitPlan, policy: &IngestPolicy, feed: &FeedPolicy) -> Result<bool, StoreError> {
        let lead_id = &plan.lead.lead_id;
        let keys = self.keys.lead(lead_id);
        let partition = self.keys.partition(lead_id);
        let json = |what: &str, r: serde_json::Result<String>| {
            r.map_err(|e| StoreError::Internal(format!("encoding a {what}: {e}")))
        };
        let mut inv = self.commit.prepare_invoke();
        inv.key(&keys.base)
            .key(&keys.lead)
            .key(&keys.seen)
            .key(&keys.days)
            .key(&keys.history)
            .key(&keys.index)
            .key(&keys.stages)
            .key(&keys.feed)
            .key(&keys.triggers);
        for definition in plan.watch_inactivity.iter() {
            inv.key(self.keys.inactive(definition, partition));
        }
        let (expected_recorded, expected_stage) =
            plan.expected.map_or((0, String::new()), |(n, stage)| (n, stage.as_str().to_owned()));
        let touch = profiles::earliest_touch(
            plan.history.iter().map(|h| (Timestamp::from_millis(h.occurred_at_ms), &h.properties)),
        );
        inv.arg(&self.spec().lua_args)
            .arg(expected_recorded)
            .arg(expected_stage)
            .arg(plan.now.millis())
            .arg(policy.dedupe_window_ms)
            .arg(policy.retention_ms)
            .arg(policy.history_limit)
            .arg(lead_id.as_str())
            .arg(plan.initial_stage.as_str())
            .arg(if plan.engaged { "1" } else { "0" })
            .arg(feed.retention_ms)
            .arg(feed.trigger_retention_ms)
            .arg(feed.history_limit.max(1))
            .arg(touch.as_ref().map(|t| profiles::encode_touch(&t.1)).unwrap_or_default())
            .arg(touch.as_ref().map_or(0, |t| t.0.millis()))
            .arg(plan.score_cause.as_deref().unwrap_or_default());
        let (mut fields, days) = codec::encode_tallies(&plan.lead);
        fields.push(("nr".into(), plan.lead.recorded.to_string()));
        if let Some(at) = plan.lead.last_engaged_at {
            fields.push(("le".into(), at.millis().to_string()));
        }
        inv.arg(fields.len());
        for (f, v) in &fields {
            inv.arg(f).arg(v);
        }
        inv.arg(days.len());
        for (f, v) in &days {
            inv.arg(f).arg(v);
        }
        inv.arg(plan.history.len());
        for entry in &plan.history {
            inv.arg(entry.encode());
        }
        inv.arg(plan.fires.len());
        for fire in &plan.fires {
            inv.arg(&fire.trigger.definition_id)
                .arg(fire.cooldown_ms)
                .arg(json("trigger", serde_json::to_string(&fire.trigger))?);
        }
        for (i, change) in plan.changes.iter().enumerate() {
            let fired = plan.change_fires.get(i).map_or(&[][..], Vec::as_slice);
            inv.arg(change.to.as_str())
                .arg(change.at.millis())
                .arg(json("stage change", serde_json::to_string(change))?)
                .arg(fired.len());
            for fire in fired {
                inv.arg(&fire.trigger.definition_id)
                    .arg(fire.cooldown_ms)
                    .arg(json("trigger", serde_json::to_string(&fire.trigger))?);
            }
        }
        let written: i64 = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Ok(written == 1)
    }

    fn partitions(&self) -> u32 {
        self.keys.partitions()
    }

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

    async fn dead_letters(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.dead(group, limit).await
    }

    async fn replay_dead_letters(&self, group: &str, trigger_ids: &[String]) -> Result<u64, StoreError> {
        self.replay(group, trigger_ids).await
    }

    async fn trigger_stats(&self, group: &str) -> Result<TriggerStats, StoreError> {
        self.stats(group).await
    }

    async fn inactive_leads(
        &self,
        definition: &str,
        partition: u32,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<LeadId>, StoreError> {
        let key = self.keys.inactive(definition, partition);
        let raw: Vec<String> = self
            .call(|mut c| async move {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(key)
                    .arg("-inf")
                    .arg(before.millis())
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        raw.into_iter()
            .map(|id| LeadId::from_stored(id).map_err(|e| StoreError::Internal(format!("inactivity index: {e}"))))
            .collect()
    }

    async fn fire_inactivity(
        &self,
        lead_id: &LeadId,
        engaged_at: Timestamp,
        definition: &str,
        fire: Option<&TriggerFire>,
        policy: &FeedPolicy,
    ) -> Result<bool, StoreError> {
        let keys = self.keys.lead(lead_id);
        let partition = self.keys.partition(lead_id);
        let (payload, cooldown, fired_at) = match fire {
            Some(f) => (
                serde_json::to_string(&f.trigger)
                    .map_err(|e| StoreError::Internal(format!("encoding a trigger: {e}")))?,
                f.cooldown_ms,
                f.trigger.fired_at.millis(),
            ),
            None => (String::new(), 0, 0),
        };
        let mut inv = self.sweep.prepare_invoke();
        inv.key(&keys.lead).key(&keys.triggers).key(self.keys.inactive(definition, partition));
        inv.arg(lead_id.as_str())
            .arg(engaged_at.millis())
            .arg(definition)
            .arg(cooldown)
            .arg(fired_at)
            .arg(payload)
            .arg(policy.trigger_retention_ms);
        let fired: i64 = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Ok(fired == 1)
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

    async fn signal_histories(&self, ids: &[LeadId]) -> Result<Vec<Vec<HistoryEntry>>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("LRANGE").arg(self.keys.lead(id).history).arg(0).arg(-1);
        }
        let replies: Vec<Vec<String>> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        ids.iter()
            .zip(replies)
            .map(|(id, records)| {
                records
                    .iter()
                    .map(|r| {
                        serde_json::from_str(r).map_err(|e| StoreError::Corrupt {
                            lead_id: id.to_string(),
                            detail: format!("raw history entry: {e}"),
                        })
                    })
                    .collect()
            })
            .collect()
    }

    async fn replace_tallies(&self, rebuilt: &LeadSnapshot, now: Timestamp) -> Result<bool, StoreError> {
        let keys = self.keys.lead(&rebuilt.lead_id);
        let spec = self.spec();
        let (mut fields, days) = codec::encode_tallies(rebuilt);
        fields.extend(
            spec.fits(&rebuilt.attributes).into_iter().map(|(m, fit)| (format!("f:{m}"), profiles::lua_number(fit))),
        );
        let mut inv = self.rescore.prepare_invoke();
        inv.key(&keys.base).key(&keys.lead).key(&keys.days);
        inv.arg(&spec.lua_args)
            .arg(rebuilt.recorded)
            .arg(rebuilt.last_engaged_at.map(|t| t.millis().to_string()).unwrap_or_default())
            .arg(now.millis())
            .arg(rebuilt.lead_id.as_str())
            .arg(fields.len());
        for (field, value) in fields.iter().chain(&days) {
            inv.arg(field).arg(value);
        }
        let replaced: i64 = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Ok(replaced == 1)
    }

    fn set_profile_spec(&self, spec: std::sync::Arc<ProfileSpec>) {
        *self.spec.write().unwrap_or_else(|p| p.into_inner()) = spec;
    }

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

    async fn refresh_fit(&self, lead: &LeadSnapshot, now: Timestamp) -> Result<(), StoreError> {
        let keys = self.keys.lead(&lead.lead_id);
        let spec = self.spec();
        let fits = spec.fits(&lead.attributes);
        let mut inv = self.refresh.prepare_invoke();
        inv.key(&keys.base).key(&keys.lead);
        inv.arg(&spec.lua_args).arg(now.millis()).arg(lead.lead_id.as_str()).arg(fits.len());
        for (model, fit) in &fits {
            inv.arg(model).arg(profiles::lua_number(*fit));
        }
        let _: i64 = self.call(|mut c| async move { inv.invoke_async(&mut c).await }).await?;
        Ok(())
    }

    async fn score_history(
        &self,
        lead_id: &LeadId,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<ScoreHistoryEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.lead(lead_id).scores;
        let oldest = now.millis() - self.spec().history_age_ms;
        let entries: Vec<String> = self.call(|mut c| async move { c.lrange(key, 0, limit as isize - 1).await }).await?;
        let mut history = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let entry = ScoreHistoryEntry::decode(e).ok_or_else(|| StoreError::Corrupt {
                lead_id: lead_id.to_string(),
                detail: format!("score history entry {i} is malformed"),
            })?;
            // Newest first: the rest are older still.
            if entry.at.millis() < oldest {
                break;
            }
            history.push(entry);
        }
        Ok(history)
    }

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
            {
                counters.add_field(field, v);
            }
        }
        Ok(counters)
    }

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
            let (rule, at) = q.split_once(profiles::SEP)?;
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
        let value = format!("{rule_id}{}{}", profiles::SEP, at.millis());
        self.call(|mut c| async move { c.hset_nx(key, "q", value).await }).await
    }
}

impl RedisStore {
    fn spec(&self) -> std::sync::Arc<ProfileSpec> {
        self.spec.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lists the lead under its account (again: idempotent, so a crash
    /// between the upsert and this is mended by the next upsert) and takes
    /// it off the account it left. Readers also check each listed lead's
    /// own account id, so a stale listing never counts.
    async fn link_account(&self, lead: &LeadSnapshot, previous: &str) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        let mut commands = 0;
        if let Some(account) = &lead.account_id {
            pipe.sadd(self.keys.account(account).leads, lead.lead_id.as_str()).ignore();
            commands += 1;
        }
        if let Ok(previous) = AccountId::parse(previous)
            && Some(&previous) != lead.account_id.as_ref()
        {
            pipe.srem(self.keys.account(&previous).leads, lead.lead_id.as_str()).ignore();
            commands += 1;
        }
        if commands == 0 {
            return Ok(());
        }
        let _: () = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(())
    }

    fn ingest_invocation<'a>(
        &'a self,
        batch: &LeadBatch,
        now: Timestamp,
        policy: &IngestPolicy,
        spec_args: &[String],
    ) -> redis::ScriptInvocation<'a> {
        let keys = self.keys.lead(&batch.lead_id);
        let mut inv = self.ingest.prepare_invoke();
        inv.key(&keys.base).key(&keys.lead).key(&keys.seen).key(&keys.days).key(&keys.history).key(&keys.index);
        let partition = self.keys.partition(&batch.lead_id);
        for definition in batch.watch_inactivity.iter() {
            inv.key(self.keys.inactive(definition, partition));
        }
        inv.arg(spec_args);
        inv.arg(now.millis()).arg(policy.dedupe_window_ms).arg(policy.retention_ms).arg(policy.history_limit);
        inv.arg(batch.lead_id.as_str()).arg(batch.initial_stage.as_str());
        // The batch's earliest signal may be the lead's first touch.
        let earliest = batch.signals.iter().enumerate().min_by_key(|(_, s)| s.occurred_at);
        match earliest {
            Some((i, s)) => inv.arg(i + 1).arg(profiles::encode_touch(&profiles::first_touch(&s.properties))),
            None => inv.arg(0).arg(""),
        };
        // Every signal carries one weight per model, in the same order.
        let models: Vec<&str> =
            batch.signals.first().map(|s| s.weights.iter().map(|w| w.model.as_str()).collect()).unwrap_or_default();
        inv.arg(models.len());
        for model in &models {
            inv.arg(*model);
        }
        for s in &batch.signals {
            debug_assert!(s.weights.iter().map(|w| w.model.as_str()).eq(models.iter().copied()));
            inv.arg(s.event_id.as_str())
                .arg(&s.signal_type)
                .arg(s.occurred_at.millis())
                .arg(s.daily_cap.unwrap_or(0))
                .arg(HistoryEntry::of(s, now).encode());
            for w in &s.weights {
                inv.arg(format!("{:?}", w.decay.half_life_millis())).arg(format!("{:?}", w.points));
            }
        }
        inv
    }
}
