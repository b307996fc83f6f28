//! Marketing spend and the campaign report: spend as recorded, results from
//! the attribution credits the scoring core keeps at write time.

use super::*;
use crate::domain::attribution::Model;
use crate::domain::profiles::FunnelGroupBy;
use crate::domain::spend::{self, CampaignReport, SpendEntry};

/// Why spend was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum SpendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store keeps spend in another currency than this deployment's.
    #[error(
        "the spend stored here is in {recorded}, this deployment's currency is {configured}: set currency = \"{recorded}\" (amounts are never converted)"
    )]
    Currency { recorded: String, configured: String },
}

/// Checks that spend already stored is in this deployment's currency
/// (start-up: records nothing).
pub async fn check_currency(state: &Core) -> Result<(), SpendError> {
    currency_matches(state, state.store.spend_currency().await?)
}

fn currency_matches(state: &Core, recorded: Option<String>) -> Result<(), SpendError> {
    match recorded {
        Some(recorded) if recorded != state.currency => {
            Err(SpendError::Currency { recorded, configured: state.currency.clone() })
        }
        _ => Ok(()),
    }
}

/// Records spend entries, each replacing its campaign's day through its
/// source and channel; refused when the store keeps another currency.
pub async fn record(state: &Core, entries: &[SpendEntry]) -> Result<(), SpendError> {
    currency_matches(state, state.store.claim_currency(&state.currency).await?)?;
    Ok(state.store.record_spend(entries).await?)
}

/// Spend and results over the UTC days `from_day..to_day`, credited under
/// `model` from the credits kept at write time.
pub async fn campaign_report(
    state: &Core,
    from_day: i64,
    to_day: i64,
    group_by: FunnelGroupBy,
    model: Model,
) -> Result<CampaignReport, StoreError> {
    let (spent, credits) =
        futures::try_join!(state.store.spend(from_day, to_day), state.store.credits(model, from_day, to_day))?;
    Ok(spend::campaign_report(&spent, &credits, group_by))
}
