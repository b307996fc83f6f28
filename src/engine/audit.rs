//! The audit trail: who changed what by hand (or by a system), read back
//! with a cursor.

use super::*;
use crate::domain::audit::AuditEvent;
use crate::store::AuditPage;

/// An event of now.
pub fn event(
    state: &Core,
    action: &str,
    actor: &str,
    token: &str,
    subject: &str,
    details: &[(&str, String)],
) -> AuditEvent {
    AuditEvent {
        at: state.clock.now(),
        action: action.to_owned(),
        actor: actor.to_owned(),
        token: token.to_owned(),
        subject: subject.to_owned(),
        details: details.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

/// Appends an event after the change it tells of was made, on a task of
/// its own: a caller that goes away (or times out) meanwhile does not lose
/// it. The change stands if the store cannot take the event: the whole
/// event (it holds no personal values) is logged at ERROR instead.
pub async fn record(state: &Core, event: AuditEvent) {
    let store = state.store.clone();
    let keep_after_ms = state.clock.now().millis() - state.audit_retention_ms;
    let appending = state.audit_gate.clone().read_owned().await;
    tokio::spawn(async move {
        let _appending = appending;
        if let Err(e) = store.append_audit(std::slice::from_ref(&event), keep_after_ms).await {
            let details = serde_json::to_string(&event.details).unwrap_or_default();
            tracing::error!(error = %e, action = %event.action, subject = %event.subject, actor = %event.actor, token = %event.token, %details, "cannot append to the audit trail");
        }
    });
}

/// Marks `digest` as the active rule set; true when it was not already
/// (and when the store cannot say: better twice than never).
pub async fn first_to_activate(state: &Core, digest: &str) -> bool {
    match state.store.mark_active_rule_set(digest).await {
        Ok(previous) => previous.as_deref() != Some(digest),
        Err(e) => {
            tracing::warn!(error = %e, "cannot mark the active rule set");
            true
        }
    }
}

/// Records a rule set a replica starts with, when it is not the one the
/// store last saw activated (a restart with a new rule file).
pub async fn started_with(state: &Core) {
    let rules = state.rules();
    let previous = match state.store.mark_active_rule_set(&rules.digest).await {
        Ok(previous) if previous.as_deref() == Some(rules.digest.as_str()) => return,
        Ok(previous) => previous.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot mark the active rule set");
            return;
        }
    };
    let details = [
        ("digest", rules.digest.clone()),
        ("agreed_by", rules.agreed_by.join(" ")),
        ("previous_digest", previous),
        ("file", rules.origin.clone()),
    ];
    let event = self::event(state, "rule_set.activated", "start-up", "", &rules.version, &details);
    record(state, event).await;
}

/// Waits (a little at most) until the events this replica is appending
/// have landed.
pub async fn settled(state: &Core) -> Option<tokio::sync::OwnedRwLockWriteGuard<()>> {
    let gate = state.audit_gate.clone();
    tokio::time::timeout(std::time::Duration::from_secs(2), gate.write_owned()).await.ok()
}

/// Events after `cursor`, oldest first.
pub async fn list(state: &Core, cursor: &str, limit: usize) -> Result<AuditPage, StoreError> {
    state.store.list_audit(cursor, limit).await
}
