//! Reading the qualification change feed (the CRM's durable log).

use super::*;
use crate::store::FeedPage;

/// The cursor that names the feed's end: only changes made after the call.
pub const LATEST: &str = "latest";

/// The cursor a reader starts from: `after` itself, or the feed's end for
/// `LATEST`. A cursor the feed does not know is refused here, not later.
pub async fn start(state: &Core, after: &str) -> Result<String, StoreError> {
    let cursor = resolve(state, after).await?;
    state.store.list_changes(&cursor, 1).await?;
    Ok(cursor)
}

/// Up to `limit` changes after the cursor (`LATEST`: none yet, and the
/// cursor of the end).
pub async fn changes(state: &Core, after: &str, limit: usize) -> Result<FeedPage, StoreError> {
    let cursor = resolve(state, after).await?;
    state.store.list_changes(&cursor, limit).await
}

async fn resolve(state: &Core, after: &str) -> Result<String, StoreError> {
    match after {
        LATEST => state.store.feed_end().await,
        other => Ok(other.to_owned()),
    }
}
