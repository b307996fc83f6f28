//! What the stores need from the rule set to keep score profiles and cohort
//! aggregates up to date as leads change.

use std::collections::BTreeMap;

use crate::domain::profiles::{ModelScore, QUALIFIED_STAGES, lua_number};
use crate::domain::{LeadSnapshot, ScoringModel, Timestamp};
use crate::rules::RuleSet;

#[derive(Debug, Clone)]
pub struct ProfileSpec {
    /// The rule set's version (named by rescore history entries).
    pub version: String,
    /// Every model, primary first.
    pub models: Vec<ScoringModel>,
    /// Attributes cohort aggregates are also kept per value of.
    pub cohort_attributes: Vec<String>,
    /// Score history entries kept per lead; 0 keeps none.
    pub history_limit: usize,
    pub history_age_ms: i64,
    /// How long funnel counters are kept.
    pub funnel_retention_ms: i64,
    /// The same, for the Lua scripts: positional arguments (see
    /// `profile.lua`), their count first.
    pub lua_args: Vec<String>,
}

impl ProfileSpec {
    pub fn new(rules: &RuleSet, history_limit: usize, history_age_ms: i64, funnel_retention_ms: i64) -> Self {
        let mut models = vec![rules.primary().clone()];
        models.extend(rules.models.values().filter(|m| m.name != rules.primary_model).cloned());
        let mut args: Vec<String> = vec![
            history_limit.to_string(),
            history_age_ms.to_string(),
            funnel_retention_ms.to_string(),
            rules.version.clone(),
            rules.cohort_attributes.len().to_string(),
        ];
        args.extend(rules.cohort_attributes.iter().cloned());
        args.push(QUALIFIED_STAGES.len().to_string());
        args.extend(QUALIFIED_STAGES.iter().map(|s| s.as_str().to_owned()));
        args.push(models.len().to_string());
        for m in &models {
            args.push(m.name.clone());
            args.push(lua_number(m.fit(&BTreeMap::new())));
            args.push(m.signals.len().to_string());
            // In type-name order (BTreeMap), the order the service sums in.
            for (t, s) in &m.signals {
                args.push(t.clone());
                args.push(lua_number(s.decay.half_life_millis()));
            }
        }
        args.insert(0, args.len().to_string());
        Self {
            version: rules.version.clone(),
            models,
            cohort_attributes: rules.cohort_attributes.clone(),
            history_limit,
            history_age_ms,
            funnel_retention_ms,
            lua_args: args,
        }
    }

    /// Each model's fit for a profile's attributes, `(model, fit)`, primary
    /// first.
    pub fn fits(&self, attributes: &BTreeMap<String, String>) -> Vec<(String, f64)> {
        self.models.iter().map(|m| (m.name.clone(), m.fit(attributes))).collect()
    }

    /// Each model's score of the lead at `now`, primary first.
    pub fn scores(&self, lead: &LeadSnapshot, now: Timestamp) -> Vec<ModelScore> {
        self.models
            .iter()
            .map(|m| {
                let s = m.score(lead, now);
                ModelScore { model: s.model, behavior: s.behavior, fit: s.fit }
            })
            .collect()
    }

    /// The model a cohort or score profile reads.
    pub fn has_model(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.name == model)
    }
}

/// The built-in rule set's spec with default limits: what a store follows
/// until told otherwise.
pub fn default_spec() -> &'static std::sync::Arc<ProfileSpec> {
    static SPEC: std::sync::OnceLock<std::sync::Arc<ProfileSpec>> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| {
        let rules = RuleSet::parse(crate::DEFAULT_RULES).expect("the built-in rule set is valid");
        std::sync::Arc::new(ProfileSpec::new(&rules, 50, 180 * 86_400_000, 800 * 86_400_000))
    })
}
