//! What every RPC handler shares.

use std::ops::Deref;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::domain::{Clock, IngestPolicy, Timestamp};
use crate::rules::RuleSet;
use crate::store::{DeliveryPolicy, FeedPolicy, LeadStore};

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

/// The rule set in force, and where it came from.
#[derive(Debug)]
pub struct ActiveRules {
    pub set: RuleSet,
    pub loaded_at: Timestamp,
    /// A path, or the built-in default.
    pub origin: String,
}

impl Deref for ActiveRules {
    type Target = RuleSet;

    fn deref(&self) -> &RuleSet {
        &self.set
    }
}

pub struct AppState {
    pub store: Arc<dyn LeadStore>,
    pub clock: Arc<dyn Clock>,
    pub policy: IngestPolicy,
    pub feed: FeedPolicy,
    pub limits: Limits,
    /// Teams every rule set must be agreed by.
    pub required_approvers: Vec<String>,
    pub jobs: super::jobs::Jobs,
    /// Start a rescore whenever a reloaded rule set is activated.
    pub rescore_on_reload: bool,
    /// How nurture triggers are redelivered.
    pub delivery: DeliveryPolicy,
    /// Serialises read-compute-commit ingests of one lead within this
    /// replica (striped by lead), so they queue instead of retrying.
    pub commit_locks: Vec<tokio::sync::Mutex<()>>,
    /// Turns true when the server shuts down: long-lived streams end.
    pub stopping: tokio::sync::watch::Sender<bool>,
    rules: RwLock<Arc<ActiveRules>>,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn LeadStore>,
        clock: Arc<dyn Clock>,
        rules: RuleSet,
        origin: String,
        policy: IngestPolicy,
        feed: FeedPolicy,
        limits: Limits,
        required_approvers: Vec<String>,
    ) -> Self {
        let active = ActiveRules { set: rules, loaded_at: clock.now(), origin };
        Self {
            store,
            clock,
            policy,
            feed,
            limits,
            required_approvers,
            jobs: Default::default(),
            rescore_on_reload: false,
            delivery: DeliveryPolicy { visibility_timeout_ms: 30_000, max_deliveries: 5 },
            commit_locks: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            stopping: tokio::sync::watch::channel(false).0,
            rules: RwLock::new(Arc::new(active)),
        }
    }

    /// The active rule set. A request takes it once and uses that one
    /// throughout, so it never sees half of two rule sets.
    pub fn rules(&self) -> Arc<ActiveRules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Activates a new rule set atomically.
    pub fn replace_rules(&self, rules: RuleSet, origin: String) {
        let active = Arc::new(ActiveRules { set: rules, loaded_at: self.clock.now(), origin });
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = active;
    }
}
