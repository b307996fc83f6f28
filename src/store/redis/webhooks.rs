//! Webhook endpoints' delivery state. Every key of an endpoint shares its
//! hash tag, so multi-key steps are one MULTI in one slot.

use std::collections::HashMap;

use super::RedisStore;
use crate::store::{LetterLine, StoreError, WebhookCounters, WebhookLetter, WebhookPosition};

/// Takes the lease if free, or extends it for its holder.
static LEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(LEASE_LUA));
const LEASE_LUA: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes the lease if the holder has it.
static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0")
});

fn line_key(line: LetterLine) -> &'static str {
    match line {
        LetterLine::Dead => "dead",
        LetterLine::Replay => "replay",
    }
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("a stored webhook letter is unreadable: {e}"))
}

impl RedisStore {
    fn hook(&self, endpoint: &str, part: &str) -> String {
        self.keys.webhook(endpoint, part)
    }

    pub(super) async fn lease(&self, endpoint: &str, holder: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        let key = self.hook(endpoint, "lease");
        let script = &*LEASE;
        let ttl = ttl_ms.max(1);
        let taken: i64 =
            self.call(|mut c| async move { script.key(key).arg(holder).arg(ttl).invoke_async(&mut c).await }).await?;
        Ok(taken == 1)
    }

    pub(super) async fn release(&self, endpoint: &str, holder: &str) -> Result<(), StoreError> {
        let key = self.hook(endpoint, "lease");
        let script = &*RELEASE;
        self.call(|mut c| async move { script.key(key).arg(holder).invoke_async::<i64>(&mut c).await }).await?;
        Ok(())
    }

    pub(super) async fn position(&self, endpoint: &str) -> Result<Option<WebhookPosition>, StoreError> {
        let key = self.hook(endpoint, "position");
        let fields: HashMap<String, String> =
            self.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await?;
        let (Some(cursor), Some(since)) = (fields.get("cursor"), fields.get("since")) else { return Ok(None) };
        let since_ms = since.parse().map_err(bad)?;
        Ok(Some(WebhookPosition { cursor: cursor.clone(), since_ms }))
    }

    pub(super) async fn set_position(&self, endpoint: &str, position: &WebhookPosition) -> Result<(), StoreError> {
        let key = self.hook(endpoint, "position");
        let (cursor, since) = (position.cursor.clone(), position.since_ms);
        self.call(|mut c| async move {
            redis::cmd("HSET")
                .arg(key)
                .arg("cursor")
                .arg(cursor)
                .arg("since")
                .arg(since)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    pub(super) async fn park(&self, endpoint: &str, letters: &[WebhookLetter]) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for letter in letters {
            let json = serde_json::to_string(letter).map_err(bad)?;
            pipe.hset(self.hook(endpoint, "letters"), &letter.event_id, json).ignore();
            pipe.zrem(self.hook(endpoint, "replay"), &letter.event_id).ignore();
            pipe.zadd(self.hook(endpoint, "dead"), &letter.event_id, letter.dead_at_ms).ignore();
        }
        self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    pub(super) async fn letters(
        &self,
        endpoint: &str,
        line: LetterLine,
        limit: usize,
    ) -> Result<Vec<WebhookLetter>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = self.hook(endpoint, line_key(line));
        let ids: Vec<String> = self
            .call(|mut c| async move { redis::cmd("ZRANGE").arg(key).arg(0).arg(limit - 1).query_async(&mut c).await })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let key = self.hook(endpoint, "letters");
        let bodies: Vec<Option<String>> =
            self.call(|mut c| async move { redis::cmd("HMGET").arg(key).arg(&ids).query_async(&mut c).await }).await?;
        bodies.into_iter().flatten().map(|json| serde_json::from_str(&json).map_err(bad)).collect()
    }

    pub(super) async fn letter_counts(&self, endpoint: &str) -> Result<(u64, u64), StoreError> {
        let mut pipe = redis::pipe();
        pipe.zcard(self.hook(endpoint, "dead")).zcard(self.hook(endpoint, "replay"));
        self.call(|mut c| async move { pipe.query_async(&mut c).await }).await
    }

    pub(super) async fn replay_letters(&self, endpoint: &str, ids: &[String]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let dead = self.hook(endpoint, "dead");
        let replay = self.hook(endpoint, "replay");
        // Which are dead letters, and since when (they keep their order).
        let mut read = redis::pipe();
        for id in ids {
            read.zscore(&dead, id);
        }
        let scores: Vec<Option<f64>> = self.call(|mut c| async move { read.query_async(&mut c).await }).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut moved = 0;
        for (id, score) in ids.iter().zip(scores) {
            if let Some(score) = score {
                pipe.zrem(&dead, id).ignore().zadd(&replay, id, score).ignore();
                moved += 1;
            }
        }
        if moved > 0 {
            self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await?;
        }
        Ok(moved)
    }

    pub(super) async fn forget_letters(&self, endpoint: &str, lead_ids: &[String]) -> Result<u64, StoreError> {
        let key = self.hook(endpoint, "letters");
        let mut cursor = 0u64;
        let mut doomed = Vec::new();
        loop {
            let k = key.clone();
            let (next, page): (u64, Vec<(String, String)>) = self
                .call(|mut c| async move {
                    redis::cmd("HSCAN").arg(k).arg(cursor).arg("COUNT").arg(500).query_async(&mut c).await
                })
                .await?;
            for (id, json) in page {
                // An unreadable letter is left for an operator to look at.
                if serde_json::from_str::<WebhookLetter>(&json).is_ok_and(|l| lead_ids.contains(&l.lead_id)) {
                    doomed.push(id);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        doomed.sort();
        doomed.dedup();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.zrem(self.hook(endpoint, "dead"), &doomed).ignore();
        pipe.zrem(self.hook(endpoint, "replay"), &doomed).ignore();
        pipe.hdel(&key, &doomed).ignore();
        self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await?;
        Ok(doomed.len() as u64)
    }

    pub(super) async fn drop_letters(&self, endpoint: &str, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.zrem(self.hook(endpoint, "replay"), ids).ignore();
        pipe.hdel(self.hook(endpoint, "letters"), ids).ignore();
        self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    pub(super) async fn add_counts(&self, endpoint: &str, delta: &WebhookCounters) -> Result<(), StoreError> {
        let key = self.hook(endpoint, "counts");
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (field, n) in [
            ("delivered", delta.delivered),
            ("failed", delta.failed),
            ("retried", delta.retried),
            ("dead_lettered", delta.dead_lettered),
        ] {
            if n > 0 {
                pipe.hincr(&key, field, n).ignore();
            }
        }
        if delta.last_error_at_ms > 0 {
            pipe.hset(&key, "last_error", &delta.last_error).ignore();
            pipe.hset(&key, "last_error_at", delta.last_error_at_ms).ignore();
        }
        if delta.last_success_at_ms > 0 {
            pipe.hset(&key, "last_success_at", delta.last_success_at_ms).ignore();
        }
        self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    pub(super) async fn counts(&self, endpoint: &str) -> Result<WebhookCounters, StoreError> {
        let key = self.hook(endpoint, "counts");
        let f: HashMap<String, String> =
            self.call(|mut c| async move { redis::cmd("HGETALL").arg(key).query_async(&mut c).await }).await?;
        let n = |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or_default();
        let t = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or_default();
        Ok(WebhookCounters {
            delivered: n("delivered"),
            failed: n("failed"),
            retried: n("retried"),
            dead_lettered: n("dead_lettered"),
            last_error: f.get("last_error").cloned().unwrap_or_default(),
            last_error_at_ms: t("last_error_at"),
            last_success_at_ms: t("last_success_at"),
        })
    }
}
