//! The audit trail on one Redis stream: entries by time, trimmed by age
//! (`MINID`) as events are appended.

use redis::streams::StreamRangeReply;

use super::RedisStore;
use super::feed::EntryId;
use crate::domain::audit::AuditEvent;
use crate::store::{AuditPage, StoreError};

impl RedisStore {
    pub(super) async fn append(&self, events: &[AuditEvent], keep_after_ms: i64) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let key = self.keys.audit();
        let oldest = keep_after_ms.max(0);
        let mut pipe = redis::pipe();
        for event in events {
            let json = serde_json::to_string(event)
                .map_err(|e| StoreError::Internal(format!("cannot encode an audit event: {e}")))?;
            pipe.cmd("XADD").arg(&key).arg("MINID").arg("~").arg(oldest).arg("*").arg("e").arg(json).ignore();
        }
        self.call(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await
    }

    /// Walks the whole trail (a page at a time) and deletes the events
    /// that mention one of `ids`.
    pub(super) async fn forget(&self, ids: &[String]) -> Result<u64, StoreError> {
        const PAGE: usize = 1000;
        let key = self.keys.audit();
        let mut start = "-".to_owned();
        let mut doomed = Vec::new();
        loop {
            let (k, from) = (key.clone(), start.clone());
            let reply: StreamRangeReply = self
                .call(|mut c| async move {
                    redis::cmd("XRANGE").arg(k).arg(from).arg("+").arg("COUNT").arg(PAGE).query_async(&mut c).await
                })
                .await?;
            for entry in &reply.ids {
                let event = entry.get::<String>("e").and_then(|json| serde_json::from_str::<AuditEvent>(&json).ok());
                if event.is_some_and(|e| ids.iter().any(|id| e.mentions(id))) {
                    doomed.push(entry.id.clone());
                }
            }
            let Some(last) = reply.ids.last().and_then(|e| EntryId::parse(&e.id)) else { break };
            if reply.ids.len() < PAGE {
                break;
            }
            start = last.range_after();
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let n = doomed.len() as u64;
        for chunk in doomed.chunks(PAGE) {
            let (k, chunk) = (key.clone(), chunk.to_vec());
            let _: u64 = self
                .call(|mut c| async move { redis::cmd("XDEL").arg(k).arg(chunk).query_async(&mut c).await })
                .await?;
        }
        Ok(n)
    }

    pub(super) async fn list(&self, cursor: &str, limit: usize) -> Result<AuditPage, StoreError> {
        let start = match cursor {
            "" => "-".to_owned(),
            c => {
                let id = EntryId::parse(c)
                    .ok_or_else(|| StoreError::BadCursor("not an audit cursor of this service".into()))?;
                id.range_after()
            }
        };
        let key = self.keys.audit();
        let reply: StreamRangeReply = self
            .call(|mut c| async move {
                redis::cmd("XRANGE").arg(key).arg(start).arg("+").arg("COUNT").arg(limit).query_async(&mut c).await
            })
            .await?;
        let mut events = Vec::with_capacity(reply.ids.len());
        for entry in &reply.ids {
            // An entry that is not an event (written by hand) is passed
            // over, so the trail past it stays readable.
            match entry.get::<String>("e").map(|json| serde_json::from_str::<AuditEvent>(&json)) {
                Some(Ok(event)) => events.push((entry.id.clone(), event)),
                _ => tracing::warn!(id = %entry.id, "an audit entry is unreadable; passed over"),
            }
        }
        let next_cursor = reply.ids.last().map_or_else(|| cursor.to_owned(), |e| e.id.clone());
        Ok(AuditPage { events, next_cursor })
    }
}
