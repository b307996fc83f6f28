//! Server streams fed by polling the store: the change feed and trigger
//! delivery.

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::error::ApiError;
use super::state::AppState;
use crate::store::StoreError;

/// Something that yields the next batch of a stream's items.
pub trait Poller: Send + 'static {
    type Item: Send + 'static;

    /// The next items; an empty batch means "nothing yet".
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Self::Item>, StoreError>>;
}

/// Streams what `poller` yields. After an empty batch it waits
/// `feed_poll_interval` before asking again. Ends when the client goes away,
/// when the server shuts down, or on an error (sent to the client first).
pub fn stream<P: Poller>(state: &AppState, capacity: usize, mut poller: P) -> ReceiverStream<Result<P::Item, Status>> {
    let (tx, rx) = mpsc::channel(capacity);
    let interval = state.limits.feed_poll_interval;
    let mut stopping = state.stopping.subscribe();
    tokio::spawn(async move {
        loop {
            match poller.next().await {
                Ok(items) => {
                    let idle = items.is_empty();
                    for item in items {
                        if tx.send(Ok(item)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    if idle {
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = tx.closed() => return,
                            _ = stopping.changed() => return,
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}
