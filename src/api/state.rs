//! What every RPC handler shares: the application core (`engine::Core`)
//! and the edge's own settings.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Core;

/// Request-size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most signals per `RecordSignals`, most ids per `ScoreLeads`.
    pub max_batch_size: usize,
    /// How far in the future `occurred_at` may be (clock skew), in ms.
    pub max_future_skew_ms: i64,
    /// How often a feed watcher looks for new changes.
    pub feed_poll_interval: Duration,
}

pub struct AppState {
    core: Arc<Core>,
    pub limits: Limits,
    /// Turns true when the server shuts down: long-lived streams end.
    pub stopping: tokio::sync::watch::Sender<bool>,
    /// Consumer groups that may receive triggers (`trigger_groups`).
    pub trigger_groups: Vec<String>,
    /// Open `StreamTriggers` calls and their wake-up signal.
    pub trigger_streams: Arc<super::streams::TriggerStreams>,
}

impl Deref for AppState {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// The name of the token a call was authenticated with; `""` without tokens.
pub fn token_name<T>(request: &tonic::Request<T>) -> String {
    request.extensions().get::<crate::auth::Caller>().map(|c| c.0.clone()).unwrap_or_default()
}

impl AppState {
    pub fn new(core: Core, limits: Limits) -> Self {
        Self {
            core: Arc::new(core),
            limits,
            stopping: tokio::sync::watch::channel(false).0,
            trigger_streams: Default::default(),
            trigger_groups: vec!["automation".to_owned()],
        }
    }

    /// The application core, for background work that outlives a call.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
}
