//! Erasure (the right to be forgotten): a lead, the visitors identified as
//! it, and everything kept about them, taken out of the store and out of
//! every aggregate; a tombstone in the change feed (and so in webhooks)
//! tells the CRM and automation to delete too.

use super::*;
use crate::transition::Forgotten;

/// What an erasure removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// What the tombstone names the subject by (`sha256:…` of its id).
    pub lead_ref: String,
    pub erased_at: Timestamp,
    /// Whether a record was there to erase (false for a repeated erasure:
    /// erasing is idempotent).
    pub found: bool,
    /// Of the lead and its visitors together.
    pub removed: Forgotten,
    /// Webhook letters (dead or replayed) deleted.
    pub webhook_letters: u64,
    /// Audit events that named the lead or its visitors, deleted.
    pub audit_events: u64,
}

/// Who erases, for the audit trail and the metrics.
pub struct Requested<'a> {
    /// `request` (ForgetLead) or `retention` (a retention policy).
    pub by: &'a str,
    pub actor: &'a str,
    /// The authenticated token's name.
    pub token: &'a str,
    pub reason_given: bool,
    /// Only while the lead is still due under the retention policy of
    /// this quiet time (checked on the state each write is computed from).
    pub unless_active_ms: Option<i64>,
}

impl<'a> Requested<'a> {
    /// An erasure asked for through the API (ForgetLead, ForgetLeads).
    pub fn by_request(actor: &'a str, token: &'a str, reason_given: bool) -> Self {
        Self { by: "request", actor, token, reason_given, unless_active_ms: None }
    }
}

/// What a batch of erasures removed: a receipt per subject, in the order
/// asked, and the letters and audit events deleted for all of them (the
/// receipts' own counts of those are 0 in a batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub receipts: Vec<Receipt>,
    pub webhook_letters: u64,
    pub audit_events: u64,
}

/// Erases `subject` — a lead, or a visitor (when identified, the lead it
/// was identified as, with all its visitors) — and records the erasure
/// in the audit trail under the subject's reference only. Its webhook
/// letters and audit events go first, so an erasure that fails half-way
/// can be asked again: the records, which name the visitors, go last.
pub async fn forget(state: &Core, subject: &LeadId, requested: &Requested<'_>) -> Result<Receipt, StoreError> {
    let plan = plan(state, subject, requested).await?;
    let (webhook_letters, audit_events) = scrub(state, std::slice::from_ref(&plan)).await?;
    let mut receipt = erase(state, plan, requested).await?;
    receipt.webhook_letters = webhook_letters;
    receipt.audit_events = audit_events;
    Ok(receipt)
}

/// Erases several subjects as `forget` erases one, with one pass through
/// the webhook letters and the audit trail for all of them (the cost of
/// an erasure that grows with the size of those).
pub async fn forget_many(state: &Core, subjects: &[LeadId], requested: &Requested<'_>) -> Result<Batch, StoreError> {
    let mut plans = Vec::with_capacity(subjects.len());
    for subject in subjects {
        plans.push(plan(state, subject, requested).await?);
    }
    let (webhook_letters, audit_events) = scrub(state, &plans).await?;
    let mut receipts = Vec::with_capacity(plans.len());
    for plan in plans {
        receipts.push(erase(state, plan, requested).await?);
    }
    Ok(Batch { receipts, webhook_letters, audit_events })
}

/// One subject's erasure, planned: the lead that owns it and every id to
/// erase with it.
struct Plan {
    owner: LeadId,
    /// The lead, the visitor asked for, and the visitors identified as it.
    targets: Vec<LeadId>,
    receipt: Receipt,
    /// False when a retention erasure finds the lead active again.
    due: bool,
}

async fn plan(state: &Core, subject: &LeadId, requested: &Requested<'_>) -> Result<Plan, StoreError> {
    let first = state.store.load(std::slice::from_ref(subject)).await?.pop().flatten();
    let owner = first.as_ref().and_then(|s| s.lead.merged_into.clone()).unwrap_or_else(|| subject.clone());
    let owner_state =
        if owner == *subject { first } else { state.store.load(std::slice::from_ref(&owner)).await?.pop().flatten() };
    let now = state.clock.now();
    let receipt = Receipt {
        lead_ref: crate::domain::Tombstone::new(&owner, now).lead_ref,
        erased_at: now,
        found: false,
        removed: Forgotten { exact: true, ..Default::default() },
        webhook_letters: 0,
        audit_events: 0,
    };
    let due =
        requested.unless_active_ms.is_none() || owner_state.as_ref().is_some_and(|s| still_due(requested, s, now));
    let mut targets = vec![owner.clone()];
    for id in std::iter::once(subject).chain(owner_state.iter().flat_map(|s| s.visitors.iter())) {
        if !targets.contains(id) {
            targets.push(id.clone());
        }
    }
    Ok(Plan { owner, targets, receipt, due })
}

fn still_due(requested: &Requested<'_>, s: &LeadState, now: Timestamp) -> bool {
    requested.unless_active_ms.is_none_or(|quiet| transition::retention_expired(s, now, quiet))
}

/// Deletes the webhook letters and audit events that name any of the
/// plans' ids: (letters, events) deleted.
async fn scrub(state: &Core, plans: &[Plan]) -> Result<(u64, u64), StoreError> {
    // Every name they go by in letters and events.
    let mut names: Vec<String> = Vec::new();
    for id in plans.iter().filter(|p| p.due).flat_map(|p| p.targets.iter()) {
        names.push(id.as_str().to_owned());
        names.push(id.to_string());
        names.extend(id.visitor().map(str::to_owned));
    }
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Ok((0, 0));
    }
    let mut letters = 0;
    for endpoint in &state.webhooks {
        letters += state.store.forget_webhook_letters(&endpoint.name, &names).await?;
    }
    // The events this replica is still appending land first (the gate is
    // held only for that, not for the walk through the trail).
    drop(audit::settled(state).await);
    let events = state.store.forget_audit(&names).await?;
    Ok((letters, events))
}

/// Deletes a planned subject's records (each lead's share of every
/// aggregate with it) and records the erasure in the audit trail.
async fn erase(state: &Core, plan: Plan, requested: &Requested<'_>) -> Result<Receipt, StoreError> {
    let Plan { owner, targets, mut receipt, due } = plan;
    if !due {
        return Ok(receipt);
    }
    let by = requested.by;
    let rules = state.rules();
    let settings = settings(state);
    let mut erased: Vec<LeadId> = Vec::new();
    let mut pending = targets.clone();
    {
        let _serialised = lock_leads(state, targets.iter()).await;
        for attempt in 0..MAX_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                back_off(attempt).await;
            }
            let stored = state.store.load(&pending).await?;
            let now = state.clock.now();
            // A lead that came back to life is kept (and its visitors).
            if stored.iter().flatten().any(|s| s.lead.lead_id == owner && !still_due(requested, s, now)) {
                pending.clear();
                break;
            }
            let steps: Vec<_> =
                stored.into_iter().filter_map(|s| transition::forget(&rules, &settings, now, s)).collect();
            let changes: Vec<LeadChange> = steps.iter().map(|s| s.change.clone()).collect();
            let written = write(state, &changes).await?;
            let mut conflicted = Vec::new();
            for (step, ok) in steps.into_iter().zip(written) {
                let id = step.change.state.lead.lead_id.clone();
                if ok {
                    add(&mut receipt.removed, step.answer);
                    erased.push(id);
                } else {
                    conflicted.push(id);
                }
            }
            pending = conflicted;
        }
    }
    if !pending.is_empty() {
        return Err(kept_changing(&pending[0]));
    }
    receipt.found = !erased.is_empty();
    receipt.removed.visitors = erased.iter().filter(|id| **id != owner).cloned().collect();
    state.metrics.erased(by, erased.len() as u64);
    let r = &receipt.removed;
    let details = [
        ("found", receipt.found.to_string()),
        ("by", by.to_owned()),
        ("reason_given", requested.reason_given.to_string()),
        ("visitors", r.visitors.len().to_string()),
        ("signals", r.signals.to_string()),
        ("aggregates_exact", r.exact.to_string()),
    ];
    let event = audit::event(state, "lead.erased", requested.actor, requested.token, &receipt.lead_ref, &details);
    audit::record(state, event).await;
    tracing::info!(lead_ref = %receipt.lead_ref, found = receipt.found, by, "lead erased");
    Ok(receipt)
}

/// Leads a retention round looks at, at most.
const RETENTION_BUDGET: usize = 1000;
const RETENTION_PAGE: usize = 200;

/// One round of the retention policy `erase_unqualified_after`: looks at
/// up to `RETENTION_BUDGET` leads created before the cut-off, going on
/// where the last round stopped (partition by partition, oldest first),
/// and erases those `transition::retention_expired` says are due. Returns
/// how many were erased. Safe on several replicas at once (erasing is
/// idempotent).
pub async fn sweep_retention(state: &Core) -> Result<u64, StoreError> {
    let quiet_ms = state.erase_unqualified_after_ms;
    if quiet_ms <= 0 {
        return Ok(0);
    }
    let store = state.store.as_ref();
    let partitions = store.partitions();
    let (mut partition, mut offset) = *state.retention_cursor.lock().unwrap_or_else(|p| p.into_inner());
    partition %= partitions.max(1);
    let requested = Requested {
        by: "retention",
        actor: "retention",
        token: "",
        reason_given: true,
        unless_active_ms: Some(quiet_ms),
    };
    let mut budget = RETENTION_BUDGET;
    let mut finished = 0;
    let mut erased = 0;
    while budget > 0 && finished < partitions {
        let now = state.clock.now();
        let limit = RETENTION_PAGE.min(budget);
        let page = store.leads_created_before(partition, now.plus_millis(-quiet_ms), offset, limit).await?;
        budget -= page.len().max(1);
        let mut due = Vec::new();
        for id in &page {
            // One lead at a time: an unreadable record, or a lead that
            // cannot be erased now, does not stop the round.
            let is_due = match store.load(std::slice::from_ref(id)).await {
                Ok(mut loaded) => {
                    loaded.pop().flatten().is_some_and(|s| transition::retention_expired(&s, now, quiet_ms))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: a listed lead cannot be read; passed over");
                    false
                }
            };
            if is_due {
                due.push(id.clone());
            }
        }
        // The page's due leads at once: one pass through the letters and
        // the audit trail for all of them.
        let mut gone = 0;
        match forget_many(state, &due, &requested).await {
            Ok(batch) => gone = batch.receipts.iter().filter(|r| r.found).count(),
            Err(e) => tracing::warn!(error = %e, "retention: leads could not be erased; tried again next round"),
        }
        erased += gone as u64;
        if page.len() < limit {
            partition = (partition + 1) % partitions;
            offset = 0;
            finished += 1;
        } else {
            // The erased left the index: only the rest are passed over.
            offset += page.len() - gone;
        }
    }
    *state.retention_cursor.lock().unwrap_or_else(|p| p.into_inner()) = (partition, offset);
    Ok(erased)
}

fn add(total: &mut Forgotten, one: Forgotten) {
    total.exact &= one.exact;
    total.attributes += one.attributes;
    total.signals += one.signals;
    total.event_ids += one.event_ids;
    total.stage_changes += one.stage_changes;
    total.score_history += one.score_history;
    total.touches += one.touches;
    total.expansion_deals += one.expansion_deals;
    total.aggregate_counters += one.aggregate_counters;
    total.visitors.extend(one.visitors);
}
