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
    /// Score history and funnel limits (the rest of the profile spec comes
    /// from the rule set).
    pub profiles: ProfileLimits,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Accounts whose qualification is being checked, and whether one of
    /// their leads changed since the check started.
    pub account_checks: std::sync::Mutex<std::collections::HashMap<crate::domain::AccountId, bool>>,
    /// Consumer groups that may receive triggers (`trigger_groups`).
    pub trigger_groups: Vec<String>,
    /// Open `StreamTriggers` calls and their wake-up signal.
    pub trigger_streams: Arc<super::streams::TriggerStreams>,
    rules: RwLock<Arc<ActiveRules>>,
}

/// Configured bounds of what profiles keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLimits {
    pub history_limit: usize,
    pub history_age_ms: i64,
    pub funnel_retention_ms: i64,
}

impl Default for ProfileLimits {
    fn default() -> Self {
        const DAY: i64 = 86_400_000;
        Self { history_limit: 50, history_age_ms: 180 * DAY, funnel_retention_ms: 800 * DAY }
    }
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
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let profiles = ProfileLimits::default();
        metrics.set_rule_set(&rules.version);
        let mut rules = rules;
        rules.set_failure_hook(crate::metrics::rule_failure_hook(metrics.clone()));
        let active = ActiveRules { set: rules, loaded_at: clock.now(), origin };
        Self {
            profiles,
            metrics,
            account_checks: Default::default(),
            store,
            clock,
            policy,
            feed,
            limits,
            required_approvers,
            jobs: Default::default(),
            rescore_on_reload: false,
            delivery: DeliveryPolicy { visibility_timeout_ms: 30_000, max_deliveries: 5 },
            commit_locks: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
            stopping: tokio::sync::watch::channel(false).0,
            trigger_streams: Default::default(),
            trigger_groups: vec!["automation".to_owned()],
            rules: RwLock::new(Arc::new(active)),
        }
    }

    /// The active rule set. A request takes it once and uses that one
    /// throughout, so it never sees half of two rule sets.
    pub fn rules(&self) -> Arc<ActiveRules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Activates a new rule set atomically.
    pub fn replace_rules(&self, mut rules: RuleSet, origin: String) {
        rules.set_failure_hook(crate::metrics::rule_failure_hook(self.metrics.clone()));
        let mut guard = self.rules.write().unwrap_or_else(|p| p.into_inner());
        self.metrics.set_rule_set(&rules.version);
        *guard = Arc::new(ActiveRules { set: rules, loaded_at: self.clock.now(), origin });
    }

    /// Sets the profile limits.
    pub fn set_profile_limits(&mut self, limits: ProfileLimits) {
        self.profiles = limits;
    }
}
