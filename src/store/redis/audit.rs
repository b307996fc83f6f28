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
