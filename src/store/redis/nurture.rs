//! Trigger delivery on Redis Streams consumer groups, one stream per
//! partition. Each group reads every partition's stream; a trigger's id is
//! `<partition>/<stream entry id>`, stable across redeliveries.
//!
//! Redelivery: entries pending in the group for longer than the visibility
//! timeout are claimed (XCLAIM, which counts the delivery) by the next
//! consumer that asks. Dead letters stay pending, owned by the reserved
//! consumer `__dead__`, so a plain XACK removes them and a replay is a
//! claim that resets their delivery count.

use std::collections::HashMap;

use redis::streams::{
    StreamClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamPendingReply, StreamReadReply,
};

use super::RedisStore;
use crate::domain::{Delivery, LeadId, Timestamp};
use crate::store::{DeliveryPolicy, StoreError, TriggerStats};

pub const DEAD: &str = "__dead__";
const REPLAY: &str = "__replay__";
/// Pending entries looked at per partition and page when reclaiming.
const SCAN: usize = 100;
/// Pages of dead letters skipped per partition and round.
const DEAD_PAGES: usize = 20;

/// `<partition>/<stream entry id>`; anything else is no trigger of ours.
fn split(id: &str) -> Option<(u32, &str)> {
    let (partition, entry) = id.split_once('/')?;
    super::feed::EntryId::parse(entry)?;
    Some((partition.parse().ok()?, entry))
}

fn delivery(partition: u32, entry: &StreamId, delivery_count: u64) -> Result<Delivery, StoreError> {
    let payload: Vec<u8> =
        entry.get("t").ok_or_else(|| StoreError::Internal(format!("trigger entry {} has no payload", entry.id)))?;
    let trigger = super::record::decode_trigger(&payload)
        .map_err(|e| StoreError::Internal(format!("trigger entry {} is malformed: {e}", entry.id)))?;
    Ok(Delivery {
        trigger_id: format!("{partition}/{}", entry.id),
        lead_id: LeadId::from_stored(trigger.lead_id.clone())
            .map_err(|e| StoreError::Internal(format!("trigger for a bad lead id: {e}")))?,
        trigger,
        delivery_count,
    })
}

impl RedisStore {
    /// Creates the group on every partition's stream (from the oldest kept
    /// trigger), once per process, or again after Redis lost it.
    async fn ensure_group(&self, group: &str) -> Result<(), StoreError> {
        if self.groups.lock().unwrap_or_else(|p| p.into_inner()).contains(group) {
            return Ok(());
        }
        let creates = (0..self.keys.partitions()).map(|p| {
            let key = self.keys.triggers(p);
            self.call(move |mut c| async move {
                match redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(key)
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await
                {
                    Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                    other => other,
                }
            })
        });
        futures::future::try_join_all(creates).await?;
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(group.to_owned());
        Ok(())
    }

    fn forget_group(&self, group: &str) {
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).remove(group);
    }

    /// Runs `op` on the group's streams, creating the group first; if Redis
    /// lost it (a restart without persistence, a flush), creates it again
    /// and retries once.
    async fn grouped<T, F, Fut>(&self, group: &str, op: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        self.ensure_group(group).await?;
        match op().await {
            Err(StoreError::Internal(e)) if e.contains("NOGROUP") => {
                self.forget_group(group);
                self.ensure_group(group).await?;
                op().await
            }
            other => other,
        }
    }

    /// Creates the group at the end of every partition's stream, or moves
    /// it there.
    pub(super) async fn group_at_end(&self, group: &str) -> Result<(), StoreError> {
        let moves = (0..self.keys.partitions()).map(|p| {
            let key = self.keys.triggers(p);
            self.call(move |mut c| async move {
                let created = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg(group)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async::<()>(&mut c)
                    .await;
                match created {
                    Err(e) if e.code() == Some("BUSYGROUP") => {
                        redis::cmd("XGROUP").arg("SETID").arg(&key).arg(group).arg("$").query_async::<()>(&mut c).await
                    }
                    other => other,
                }
            })
        });
        futures::future::try_join_all(moves).await?;
        self.groups.lock().unwrap_or_else(|p| p.into_inner()).insert(group.to_owned());
        Ok(())
    }

    /// The lead's triggers among the newest `scan` of its partition's
    /// stream, newest first.
    pub(super) async fn triggers_of(&self, lead: &LeadId, scan: usize) -> Result<Vec<Delivery>, StoreError> {
        let partition = self.keys.partition(lead);
        let key = self.keys.triggers(partition);
        let reply: redis::streams::StreamRangeReply = self
            .call(|mut c| async move {
                redis::cmd("XREVRANGE").arg(key).arg("+").arg("-").arg("COUNT").arg(scan).query_async(&mut c).await
            })
            .await?;
        let mut out = Vec::new();
        // Another lead's entry that does not decode is no reason to fail.
        for d in reply.ids.iter().filter_map(|entry| delivery(partition, entry, 0).ok()) {
            if &d.lead_id == lead {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub(super) async fn deliver(
        &self,
        group: &str,
        consumer: &str,
        max: usize,
        policy: &DeliveryPolicy,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.grouped(group, || self.deliver_once(group, consumer, max, policy, now)).await
    }

    async fn deliver_once(
        &self,
        group: &str,
        consumer: &str,
        max: usize,
        policy: &DeliveryPolicy,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError> {
        let partitions = self.keys.partitions();
        let idle = policy.visibility_timeout_ms.max(0);
        let mut out = Vec::new();

        // 1. Triggers held too long by a consumer (or replayed dead letters).
        let mut pipe = redis::pipe();
        for p in 0..partitions {
            pipe.cmd("XPENDING")
                .arg(self.keys.triggers(p))
                .arg(group)
                .arg("IDLE")
                .arg(idle)
                .arg("-")
                .arg("+")
                .arg(SCAN);
        }
        let mut stale: Vec<StreamPendingCountReply> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        // Dead letters stay pending (and idle) at the head of a partition's
        // list: page past a full page of them so live entries behind are
        // still reclaimed.
        for (p, reply) in stale.iter_mut().enumerate() {
            for _ in 0..DEAD_PAGES {
                let full_of_dead = reply.ids.len() >= SCAN && reply.ids.iter().all(|e| e.consumer == DEAD);
                let Some(last) = reply.ids.last().map(|e| e.id.clone()).filter(|_| full_of_dead) else { break };
                let key = self.keys.triggers(p as u32);
                *reply = self
                    .call(|mut c| async move {
                        redis::cmd("XPENDING")
                            .arg(key)
                            .arg(group)
                            .arg("IDLE")
                            .arg(idle)
                            .arg(format!("({last}"))
                            .arg("+")
                            .arg(SCAN)
                            .query_async(&mut c)
                            .await
                    })
                    .await?;
            }
        }
        let mut claim = redis::pipe();
        let mut claimed_from = Vec::new();
        let mut to_dead = redis::pipe();
        let mut any_dead = false;
        'partitions: for (p, reply) in stale.iter().enumerate() {
            for pending in reply.ids.iter().filter(|e| e.consumer != DEAD) {
                if out.len() + claimed_from.len() >= max {
                    break 'partitions;
                }
                let key = self.keys.triggers(p as u32);
                if pending.times_delivered as u64 >= policy.max_deliveries {
                    to_dead.cmd("XCLAIM").arg(&key).arg(group).arg(DEAD).arg(0).arg(&pending.id).arg("JUSTID");
                    any_dead = true;
                } else {
                    // Only one consumer wins an entry: the claim needs it still idle.
                    claim.cmd("XCLAIM").arg(&key).arg(group).arg(consumer).arg(idle).arg(&pending.id);
                    claimed_from.push((p as u32, pending.times_delivered as u64 + 1));
                }
            }
        }
        if any_dead {
            let _: Vec<redis::Value> = self.call(|mut c| async move { to_dead.query_async(&mut c).await }).await?;
        }
        if !claimed_from.is_empty() {
            let claimed: Vec<StreamClaimReply> =
                self.call(|mut c| async move { claim.query_async(&mut c).await }).await?;
            let mut counters = redis::pipe();
            let mut redelivered = 0;
            for ((p, count), reply) in claimed_from.into_iter().zip(claimed) {
                // An entry trimmed away, or claimed by another consumer first, comes back empty.
                for entry in reply.ids.iter().filter(|e| !e.map.is_empty()) {
                    out.push(delivery(p, entry, count)?);
                    // A replayed dead letter starts again at delivery 1.
                    if count > 1 {
                        counters.hincr(self.keys.trigger_counters(group, p), "redelivered", 1).ignore();
                        redelivered += 1;
                    }
                }
            }
            if redelivered > 0 {
                let _: () = self.call(|mut c| async move { counters.query_async(&mut c).await }).await?;
            }
        }

        // 2. New triggers, partition by partition, until `max`.
        let start = (now.millis().unsigned_abs() % u64::from(partitions)) as u32;
        for offset in 0..partitions {
            if out.len() >= max {
                break;
            }
            let p = (start + offset) % partitions;
            let key = self.keys.triggers(p);
            let count = max - out.len();
            let reply: StreamReadReply = self
                .call(|mut c| async move {
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(group)
                        .arg(consumer)
                        .arg("COUNT")
                        .arg(count)
                        .arg("STREAMS")
                        .arg(key)
                        .arg(">")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            for stream in reply.keys {
                for entry in &stream.ids {
                    out.push(delivery(p, entry, 1)?);
                }
            }
        }
        Ok(out)
    }

    fn by_partition(ids: &[String]) -> HashMap<u32, Vec<&str>> {
        let mut map: HashMap<u32, Vec<&str>> = HashMap::new();
        for (p, entry) in ids.iter().filter_map(|id| split(id)) {
            map.entry(p).or_default().push(entry);
        }
        map
    }

    pub(super) async fn ack(&self, group: &str, ids: &[String]) -> Result<u64, StoreError> {
        let by_partition = Self::by_partition(ids);
        if by_partition.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (p, entries) in &by_partition {
            pipe.cmd("XACK").arg(self.keys.triggers(*p % self.keys.partitions())).arg(group).arg(entries);
        }
        let acked: Vec<u64> = match self.call(|mut c| async move { pipe.query_async(&mut c).await }).await {
            Err(StoreError::Internal(e)) if e.contains("NOGROUP") => return Ok(0),
            other => other?,
        };
        let mut counters = redis::pipe();
        for ((p, _), n) in by_partition.iter().zip(&acked) {
            if *n > 0 {
                counters.hincr(self.keys.trigger_counters(group, *p % self.keys.partitions()), "acked", *n).ignore();
            }
        }
        if acked.iter().any(|n| *n > 0) {
            let _: () = self.call(|mut c| async move { counters.query_async(&mut c).await }).await?;
        }
        Ok(acked.into_iter().sum())
    }

    /// The id of every partition's newest trigger ("" for none), in one
    /// pipelined read (split by slot on a cluster).
    pub(super) async fn heads(&self) -> Result<Vec<String>, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.keys.partitions() {
            pipe.cmd("XREVRANGE").arg(self.keys.triggers(p)).arg("+").arg("-").arg("COUNT").arg(1);
        }
        let replies: Vec<redis::streams::StreamRangeReply> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(replies.into_iter().map(|r| r.ids.into_iter().next().map(|e| e.id).unwrap_or_default()).collect())
    }

    pub(super) async fn in_flight(&self, group: &str, consumer: &str) -> Result<u64, StoreError> {
        self.grouped(group, || self.in_flight_once(group, consumer)).await
    }

    async fn in_flight_once(&self, group: &str, consumer: &str) -> Result<u64, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.keys.partitions() {
            pipe.cmd("XPENDING").arg(self.keys.triggers(p)).arg(group);
        }
        let replies: Vec<StreamPendingReply> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        Ok(replies
            .into_iter()
            .map(|r| match r {
                StreamPendingReply::Data(d) => {
                    d.consumers.iter().filter(|c| c.name == consumer).map(|c| c.pending as u64).sum()
                }
                _ => 0,
            })
            .sum())
    }

    pub(super) async fn dead(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.grouped(group, || self.dead_once(group, limit)).await
    }

    async fn dead_once(&self, group: &str, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.keys.partitions() {
            pipe.cmd("XPENDING").arg(self.keys.triggers(p)).arg(group).arg("-").arg("+").arg(limit).arg(DEAD);
        }
        let pending: Vec<StreamPendingCountReply> =
            self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut wanted: Vec<(u32, String, u64)> = pending
            .into_iter()
            .enumerate()
            .flat_map(|(p, r)| r.ids.into_iter().map(move |e| (p as u32, e.id, e.times_delivered as u64)))
            .collect();
        wanted.sort_by(|a, b| super::feed::EntryId::parse(&a.1).cmp(&super::feed::EntryId::parse(&b.1)));
        wanted.truncate(limit);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = redis::pipe();
        for (p, id, _) in &wanted {
            read.cmd("XRANGE").arg(self.keys.triggers(*p)).arg(id).arg(id);
        }
        let entries: Vec<redis::streams::StreamRangeReply> =
            self.call(|mut c| async move { read.query_async(&mut c).await }).await?;
        let mut out = Vec::new();
        for ((p, _, count), reply) in wanted.into_iter().zip(entries) {
            if let Some(entry) = reply.ids.first() {
                out.push(delivery(p, entry, count)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn replay(&self, group: &str, ids: &[String]) -> Result<u64, StoreError> {
        self.grouped(group, || self.replay_once(group, ids)).await
    }

    async fn replay_once(&self, group: &str, ids: &[String]) -> Result<u64, StoreError> {
        let by_partition = Self::by_partition(ids);
        let mut replayed = 0;
        for (p, entries) in by_partition {
            let key = self.keys.triggers(p % self.keys.partitions());
            // Only dead letters: those pending with the reserved consumer.
            let pending: StreamPendingCountReply = {
                let key = key.clone();
                self.call(|mut c| async move {
                    redis::cmd("XPENDING")
                        .arg(key)
                        .arg(group)
                        .arg("-")
                        .arg("+")
                        .arg(10_000)
                        .arg(DEAD)
                        .query_async(&mut c)
                        .await
                })
                .await?
            };
            let dead: Vec<&str> = entries.into_iter().filter(|e| pending.ids.iter().any(|d| d.id == *e)).collect();
            if dead.is_empty() {
                continue;
            }
            // Owned by nobody real, long idle, never delivered: the next
            // consumer to ask claims it, as delivery 1.
            let claimed: Vec<String> = self
                .call(|mut c| async move {
                    redis::cmd("XCLAIM")
                        .arg(key)
                        .arg(group)
                        .arg(REPLAY)
                        .arg(0)
                        .arg(&dead)
                        .arg("IDLE")
                        .arg(i64::from(i32::MAX))
                        .arg("RETRYCOUNT")
                        .arg(0)
                        .arg("JUSTID")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            replayed += claimed.len() as u64;
        }
        Ok(replayed)
    }

    pub(super) async fn stats(&self, group: &str) -> Result<TriggerStats, StoreError> {
        self.grouped(group, || self.stats_once(group)).await
    }

    async fn stats_once(&self, group: &str) -> Result<TriggerStats, StoreError> {
        let mut pipe = redis::pipe();
        for p in 0..self.keys.partitions() {
            let key = self.keys.triggers(p);
            pipe.cmd("XINFO").arg("STREAM").arg(&key);
            pipe.cmd("XINFO").arg("GROUPS").arg(&key);
            pipe.cmd("XPENDING").arg(&key).arg(group);
            pipe.hgetall(self.keys.trigger_counters(group, p));
        }
        let replies: Vec<redis::Value> = self.call(|mut c| async move { pipe.query_async(&mut c).await }).await?;
        let mut stats = TriggerStats::default();
        let parse = |e: redis::ParsingError| StoreError::Internal(format!("reading trigger stream info: {e}"));
        for chunk in replies.chunks(4) {
            let [stream, groups, pending, counters] = chunk else { continue };
            let counters: HashMap<String, u64> = redis::from_redis_value(counters.clone()).map_err(parse)?;
            stats.acked += counters.get("acked").copied().unwrap_or_default();
            stats.redelivered += counters.get("redelivered").copied().unwrap_or_default();
            let stream: HashMap<String, redis::Value> = redis::from_redis_value(stream.clone()).map_err(parse)?;
            if let Some(added) = stream.get("entries-added") {
                stats.fired += redis::from_redis_value::<u64>(added.clone()).map_err(parse)?;
            }
            let groups: StreamInfoGroupsReply = redis::from_redis_value(groups.clone()).map_err(parse)?;
            if let Some(g) = groups.groups.iter().find(|g| g.name == group) {
                stats.delivered += g.entries_read.unwrap_or_default() as u64;
            }
            if let StreamPendingReply::Data(data) = redis::from_redis_value(pending.clone()).map_err(parse)? {
                for consumer in &data.consumers {
                    if consumer.name == DEAD {
                        stats.dead_letters += consumer.pending as u64;
                    } else {
                        stats.pending += consumer.pending as u64;
                    }
                }
            }
        }
        Ok(stats)
    }
}
