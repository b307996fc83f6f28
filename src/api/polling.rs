//! Server streams fed by polling the store: the change feed and trigger
//! delivery.

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::error::ApiError;
use super::state::AppState;
use crate::engine::StoreError;

/// Something that yields the next batch of a stream's items.
pub trait Poller: Send + 'static {
    type Item: Send + 'static;

    /// The next items; an empty batch means "nothing yet".
    fn next(&mut self) -> BoxFuture<'_, Result<Vec<Self::Item>, StoreError>>;

    /// Whether the last empty batch came from the consumer being full (it
    /// must acknowledge first) rather than from nothing being there: then
    /// the stream asks again after `feed_poll_interval`, since a wake-up
    /// only comes with new items.
    fn full(&self) -> bool {
        false
    }
}

/// How a stream waits after an empty batch.
pub enum Wait {
    /// `feed_poll_interval`, then asks again.
    Poll,
    /// Until `wake` changes, or `fallback` passes at the latest. `slot`
    /// is held while the stream is open.
    Wake { wake: tokio::sync::watch::Receiver<u64>, fallback: std::time::Duration, slot: super::streams::Slot },
}

/// Streams what `poller` yields, waiting as `wait` says after an empty
/// batch. Ends when the client goes away, when the server shuts down, or on
/// an error (sent to the client first).
pub fn stream<P: Poller>(
    state: &AppState,
    capacity: usize,
    mut poller: P,
    wait: Wait,
) -> ReceiverStream<Result<P::Item, Status>> {
    let (tx, rx) = mpsc::channel(capacity);
    let interval = state.limits.feed_poll_interval;
    let mut stopping = state.stopping.subscribe();
    tokio::spawn(async move {
        let (mut wake, fallback, _slot) = match wait {
            Wait::Poll => (None, interval, None),
            Wait::Wake { wake, fallback, slot } => (Some(wake), fallback, Some(slot)),
        };
        loop {
            if let Some(wake) = wake.as_mut() {
                wake.mark_unchanged();
            }
            match poller.next().await {
                Ok(items) => {
                    let idle = items.is_empty();
                    for item in items {
                        if tx.send(Ok(item)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    if idle {
                        let woken = async {
                            match wake.as_mut() {
                                Some(w) => {
                                    if w.changed().await.is_err() {
                                        // The signal is gone: wait for the fallback only.
                                        std::future::pending::<()>().await;
                                    }
                                }
                                None => std::future::pending().await,
                            }
                        };
                        let pause = if poller.full() { interval } else { fallback };
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = woken => {}
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
