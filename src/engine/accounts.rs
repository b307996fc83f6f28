//! Account (ABM) scores. An account's score is computed when asked, from
//! its leads' current behaviour scores (so it decays with them and follows
//! every signal at once); whether it qualified (MQA) is checked after every
//! change of one of its leads, in the background, and recorded the first
//! time an account rule holds.

use std::sync::Arc;

use crate::domain::account::AccountScore;
use crate::domain::{AccountId, LeadSnapshot, Timestamp};
use crate::engine::{ActiveRules, Core};
use crate::store::{StoreError, StoredAccount};

/// An account's score now, with what it was computed from.
#[derive(Debug, Clone)]
pub struct AccountView {
    pub stored: StoredAccount,
    pub score: AccountScore,
    /// The leads that count (those whose own account id is this account).
    pub leads: Vec<LeadSnapshot>,
    pub as_of: Timestamp,
}

/// Scores the account now and records its qualification if a rule holds
/// for the first time. O(leads of the account): one pipelined read.
/// `None` for an account never upserted and named by no lead.
pub async fn evaluate(
    state: &Core,
    rules: &ActiveRules,
    account_id: &AccountId,
) -> Result<Option<AccountView>, StoreError> {
    let Some(mut stored) = state.store.load_account(account_id).await? else { return Ok(None) };
    let loaded = state.store.load_leads(&stored.lead_ids).await?;
    let (mut leads, mut stale) = (Vec::new(), Vec::new());
    for (id, lead) in stored.lead_ids.iter().zip(loaded) {
        match lead {
            Some(lead) if lead.account_id.as_ref() == Some(account_id) => leads.push(lead),
            _ => stale.push(id.clone()),
        }
    }
    if !stale.is_empty() {
        // Leads that moved to another account (or vanished) since listed.
        state.store.drop_account_leads(account_id, &stale).await?;
        stored.lead_ids.retain(|id| !stale.contains(id));
    }
    let policy = &rules.accounts;
    let model = rules.model(&policy.model).unwrap_or_else(|| rules.primary());
    let now = state.clock.now();
    let rows = leads.iter().map(|l| (l.lead_id.clone(), model.score(l, now).behavior, l.stage)).collect();
    let score = policy.score(stored.attributes.as_ref().unwrap_or(&Default::default()), rows);
    if stored.qualified.is_none()
        && let Some(rule) = policy.qualifying_rule(&score)
    {
        if state.store.mark_account_qualified(account_id, &rule.id, now).await? {
            tracing::info!(account_id = %account_id, rule = %rule.id, score = score.total(), "account qualified (MQA)");
            stored.qualified = Some((rule.id.clone(), now));
        } else if let Some(current) = state.store.load_account(account_id).await? {
            // Another check qualified it a moment ago: report that one.
            stored.qualified = current.qualified;
        }
    }
    Ok(Some(AccountView { stored, score, leads, as_of: now }))
}

/// Checks the accounts' qualification in the background: one check per
/// account at a time, and one more after it when a lead changed meanwhile,
/// so the last change is always looked at. Does nothing when the rule set
/// has no account rules.
/// Creates the account or replaces its attributes, then checks soon
/// whether it qualifies.
pub async fn upsert(state: &Arc<Core>, account: &crate::domain::account::AccountProfile) -> Result<(), StoreError> {
    state.store.upsert_account(account).await?;
    check_soon(state, [account.account_id.clone()]);
    Ok(())
}

pub fn check_soon(state: &Arc<Core>, accounts: impl IntoIterator<Item = AccountId>) {
    if state.rules().accounts.rules.is_empty() {
        return;
    }
    for account in accounts {
        {
            let mut running = state.account_checks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(again) = running.get_mut(&account) {
                *again = true;
                continue;
            }
            running.insert(account.clone(), false);
        }
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let rules = state.rules();
                if let Err(e) = evaluate(&state, &rules, &account).await {
                    tracing::warn!(account_id = %account, error = %e, "account qualification check failed");
                }
                let mut running = state.account_checks.lock().unwrap_or_else(|p| p.into_inner());
                match running.get_mut(&account) {
                    Some(again) if *again => *again = false,
                    _ => {
                        running.remove(&account);
                        break;
                    }
                }
            }
        });
    }
}
