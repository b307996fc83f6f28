//! What every use case shares: the store, the clock, the rule set in force,
//! the configured policies, rescore jobs and metrics.

use std::ops::Deref;
use std::sync::{Arc, RwLock};

use crate::domain::{AccountId, Clock, IngestPolicy, Timestamp};
use crate::rules::RuleSet;
use crate::store::{DeliveryPolicy, FeedPolicy, LeadStore};

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

pub struct Core {
    pub store: Arc<dyn LeadStore>,
    pub clock: Arc<dyn Clock>,
    pub policy: IngestPolicy,
    pub feed: FeedPolicy,
    /// How nurture triggers are redelivered.
    pub delivery: DeliveryPolicy,
    /// Score history and funnel limits.
    pub profiles: ProfileLimits,
    /// Teams every rule set must be agreed by.
    pub required_approvers: Vec<String>,
    /// Start a rescore whenever a reloaded rule set is activated.
    pub rescore_on_reload: bool,
    /// The currency spend is recorded and reported in (ISO 4217).
    pub currency: String,
    pub jobs: super::jobs::Jobs,
    /// Serialises the writes of one lead within this replica (striped by
    /// lead), so they queue instead of retrying.
    pub commit_locks: Vec<tokio::sync::Mutex<()>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long audit events are kept.
    pub audit_retention_ms: i64,
    /// Retention: erase leads that never reached MQL after this long
    /// without activity (0: never).
    pub erase_unqualified_after_ms: i64,
    /// Where the next retention round goes on: (partition, offset).
    pub retention_cursor: std::sync::Mutex<(u32, usize)>,
    /// Held (shared) by every audit append in flight.
    pub audit_gate: Arc<tokio::sync::RwLock<()>>,
    /// Bumped whenever this replica writes a stage change or a trigger.
    pub fed: tokio::sync::watch::Sender<u64>,
    /// Configured webhook endpoints (`webhooks`), secrets aside.
    pub webhooks: Vec<crate::domain::webhook::EndpointSpec>,
    /// Accounts whose qualification is being checked, and whether one of
    /// their leads changed since the check started.
    pub account_checks: std::sync::Mutex<std::collections::HashMap<AccountId, bool>>,
    rules: RwLock<Arc<ActiveRules>>,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn LeadStore>,
        clock: Arc<dyn Clock>,
        rules: RuleSet,
        origin: String,
        policy: IngestPolicy,
        feed: FeedPolicy,
        required_approvers: Vec<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        metrics.set_rule_set(&rules.version);
        let mut rules = rules;
        rules.set_failure_hook(crate::metrics::rule_failure_hook(metrics.clone()));
        let active = ActiveRules { set: rules, loaded_at: clock.now(), origin };
        Self {
            store,
            clock,
            policy,
            feed,
            delivery: DeliveryPolicy { visibility_timeout_ms: 30_000, max_deliveries: 5 },
            profiles: ProfileLimits::default(),
            required_approvers,
            rescore_on_reload: false,
            currency: crate::domain::spend::DEFAULT_CURRENCY.to_owned(),
            jobs: Default::default(),
            commit_locks: (0..1024).map(|_| tokio::sync::Mutex::new(())).collect(),
            metrics,
            audit_retention_ms: 400 * 86_400_000,
            fed: tokio::sync::watch::channel(0).0,
            webhooks: Vec::new(),
            audit_gate: Default::default(),
            erase_unqualified_after_ms: 0,
            retention_cursor: Default::default(),
            account_checks: Default::default(),
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
}
