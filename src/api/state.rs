//! What every RPC handler shares.

use std::sync::{Arc, RwLock};

use crate::domain::{Clock, IngestPolicy};
use crate::rules::RuleSet;
use crate::store::LeadStore;

/// Request-size limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most signals per `RecordSignals`, most ids per `ScoreLeads`.
    pub max_batch_size: usize,
    /// How far in the future `occurred_at` may be (clock skew), in ms.
    pub max_future_skew_ms: i64,
}

pub struct AppState {
    pub store: Arc<dyn LeadStore>,
    pub clock: Arc<dyn Clock>,
    pub policy: IngestPolicy,
    pub limits: Limits,
    rules: RwLock<Arc<RuleSet>>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn LeadStore>,
        clock: Arc<dyn Clock>,
        rules: RuleSet,
        policy: IngestPolicy,
        limits: Limits,
    ) -> Self {
        Self { store, clock, policy, limits, rules: RwLock::new(Arc::new(rules)) }
    }

    /// The active rule set. A request takes it once and uses that one
    /// throughout, so it never sees half of two rule sets.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Activates a new rule set atomically.
    pub fn replace_rules(&self, rules: RuleSet) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }
}
