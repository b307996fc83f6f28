//! The rule set: the version-controlled contract between marketing and
//! sales (SPEC §4). Parsed from TOML, validated with line-accurate errors,
//! compiled into the domain's scoring models. Pure: callers read the file.

mod compile;
mod duration;
mod error;
mod file;

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use duration::{format_duration, parse_duration};
pub use error::RuleError;

use crate::domain::{Decay, ModelWeight, ScoringModel};

/// A declared signal type.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalTypeDef {
    pub description: String,
    /// At most this many signals of the type count per lead per UTC day.
    pub daily_cap: Option<u32>,
}

/// A validated, compiled rule set.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub version: String,
    pub agreed_by: Vec<String>,
    pub primary_model: String,
    pub signal_types: BTreeMap<String, SignalTypeDef>,
    pub models: BTreeMap<String, ScoringModel>,
    /// Default half-life per model, for the summary.
    half_lives: BTreeMap<String, Decay>,
}

impl RuleSet {
    /// Parses and validates a rule file. Every error found is returned, each
    /// with its line and column.
    pub fn parse(source: &str) -> Result<RuleSet, Vec<RuleError>> {
        compile::compile(source)
    }

    pub fn signal_type(&self, name: &str) -> Option<&SignalTypeDef> {
        self.signal_types.get(name)
    }

    pub fn primary(&self) -> &ScoringModel {
        &self.models[&self.primary_model]
    }

    /// The named model; the primary one for an empty name.
    pub fn model(&self, name: &str) -> Option<&ScoringModel> {
        if name.is_empty() { Some(self.primary()) } else { self.models.get(name) }
    }

    /// The points every model gives a signal.
    pub fn weigh(&self, signal_type: &str, properties: &BTreeMap<String, String>) -> Vec<ModelWeight> {
        self.models.values().map(|m| m.weigh(signal_type, properties)).collect()
    }

    /// A human-readable overview, printed by `leadscore rules check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let capped = self.signal_types.values().filter(|t| t.daily_cap.is_some()).count();
        let _ = writeln!(out, "version {}, agreed by {}", self.version, self.agreed_by.join(", "));
        let _ = writeln!(
            out,
            "{} signal types ({} with a daily cap): {}",
            self.signal_types.len(),
            capped,
            self.signal_types.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        for (name, model) in &self.models {
            let half_life = match self.half_lives.get(name) {
                Some(Decay::HalfLife { millis }) => format_duration(*millis as i64),
                _ => "none".to_owned(),
            };
            let g = model.grades;
            let _ = writeln!(
                out,
                "model {name}{}: half-life {half_life}, {} scored types, {} fit rules, grades A >= {}, B >= {}, C >= {}",
                if *name == self.primary_model { " (primary)" } else { "" },
                model.signals.len(),
                model.fit_rules.len(),
                g.a,
                g.b,
                g.c,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(rules: &RuleSet, signal_type: &str) -> f64 {
        rules.primary().signals[signal_type].points
    }

    #[test]
    fn shipped_default_covers_the_spec_types_with_sensible_weights() {
        let rules = RuleSet::parse(crate::DEFAULT_RULES).expect("the shipped rule set is valid");
        for t in [
            "page_view",
            "pricing_page_view",
            "content_download",
            "form_fill",
            "email_open",
            "email_click",
            "webinar_registered",
            "webinar_attended",
            "event_attended",
            "demo_requested",
            "meeting_scheduled",
            "social_share",
            "email_bounce",
            "unsubscribe",
            "careers_page_view",
        ] {
            assert!(rules.signal_type(t).is_some(), "{t} is not declared");
            assert!(rules.primary().signals.contains_key(t), "{t} is not scored");
        }
        assert!(points(&rules, "email_click") > points(&rules, "email_open"));
        assert!(points(&rules, "demo_requested") >= 10.0 * points(&rules, "page_view"));
        assert!(points(&rules, "pricing_page_view") >= 5.0 * points(&rules, "page_view"));
        assert!(points(&rules, "unsubscribe") < 0.0);
        assert_eq!(rules.primary().signals["unsubscribe"].decay, Decay::None);
    }
}
