//! What open `StreamTriggers` calls cost and how many may be open.
//!
//! Waiting consumers do not poll Redis: one watcher per replica reads a mark
//! of every partition's newest trigger each `feed_poll_interval` (one
//! pipelined read, only while some consumer waits) and wakes them all when
//! it changes. A waiting consumer also looks once every few seconds, for
//! triggers another consumer held past the visibility timeout.
//!
//! Open streams are bounded per connection and per token: a client that
//! opens streams in a loop gets RESOURCE_EXHAUSTED, not a replica's worth
//! of Redis load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::{Core, triggers};

/// Bounds on open trigger streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub per_connection: usize,
    pub per_token: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self { per_connection: 16, per_token: 100 }
    }
}

/// Open trigger streams by connection and by token, and the wake-up signal.
pub struct TriggerStreams {
    limits: StreamLimits,
    open: Mutex<HashMap<String, usize>>,
    /// Bumped whenever a new trigger may be there.
    wake: watch::Sender<u64>,
    watcher: std::sync::Once,
}

impl Default for TriggerStreams {
    fn default() -> Self {
        Self::new(StreamLimits::default())
    }
}

/// Held while a stream is open; frees its places when dropped.
pub struct Slot {
    streams: Arc<TriggerStreams>,
    keys: [String; 2],
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(n) = open.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

impl TriggerStreams {
    pub fn new(limits: StreamLimits) -> Self {
        Self { limits, open: Mutex::new(HashMap::new()), wake: watch::channel(0).0, watcher: std::sync::Once::new() }
    }

    /// A place for one more stream of `connection` (the peer address) and
    /// `token` (its name; anonymous callers share one), or the reason why
    /// not.
    pub fn open(self: &Arc<Self>, connection: &str, token: &str) -> Result<Slot, tonic::Status> {
        let keys = [format!("connection {connection}"), format!("token {token}")];
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (on_connection, on_token) =
            (open.get(&keys[0]).copied().unwrap_or(0), open.get(&keys[1]).copied().unwrap_or(0));
        if on_connection >= self.limits.per_connection {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {} StreamTriggers calls per connection are open at once (max_trigger_streams_per_connection)",
                self.limits.per_connection
            )));
        }
        if on_token >= self.limits.per_token {
            return Err(tonic::Status::resource_exhausted(format!(
                "at most {} StreamTriggers calls per token are open at once (max_trigger_streams_per_token)",
                self.limits.per_token
            )));
        }
        for key in &keys {
            *open.entry(key.clone()).or_default() += 1;
        }
        Ok(Slot { streams: self.clone(), keys })
    }

    /// A receiver that changes when new triggers may be there; starts this
    /// replica's watcher on first use.
    pub fn subscribe(self: &Arc<Self>, core: Arc<Core>, interval: Duration) -> watch::Receiver<u64> {
        let streams = Arc::downgrade(self);
        self.watcher.call_once(|| {
            tokio::spawn(watch_heads(core, streams, interval));
        });
        self.wake.subscribe()
    }
}

/// Reads the trigger heads every `interval` while someone waits, and wakes
/// the waiting when they change. Ends with the service's state.
async fn watch_heads(core: Arc<Core>, streams: std::sync::Weak<TriggerStreams>, interval: Duration) {
    let mut last: Option<Vec<String>> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(streams) = streams.upgrade() else { return };
        if streams.wake.receiver_count() == 0 {
            // Nobody waits: read nothing, and start afresh when they come.
            last = None;
            continue;
        }
        // A failed read wakes everyone: their own reads report the fault.
        let heads = triggers::heads(&core).await.ok();
        if heads.is_none() || last.as_ref() != heads.as_ref() {
            streams.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
        last = heads;
    }
}
