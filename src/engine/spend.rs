//! Marketing spend and the campaign report: spend as recorded, results from
//! the funnel counters the scoring core keeps at write time.

use super::*;
use crate::domain::profiles::FunnelGroupBy;
use crate::domain::spend::{self, CampaignReport, SpendEntry};

/// Records spend entries, each replacing its campaign's day.
pub async fn record(state: &Core, entries: &[SpendEntry]) -> Result<(), StoreError> {
    state.store.record_spend(entries).await
}

/// Spend and results over the UTC days `from_day..to_day` (first touch).
pub async fn campaign_report(
    state: &Core,
    from_day: i64,
    to_day: i64,
    group_by: FunnelGroupBy,
) -> Result<CampaignReport, StoreError> {
    let (spent, funnel) =
        futures::try_join!(state.store.spend(from_day, to_day), state.store.funnel(from_day, to_day))?;
    Ok(spend::campaign_report(&spent, &funnel, group_by))
}
