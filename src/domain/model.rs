//! Scoring models: how signals and profile attributes turn into points, and
//! the score (with its explanation) of a lead at an instant (SPEC §3).

use std::collections::BTreeMap;

use super::{Decay, LeadSnapshot, ModelWeight, Timestamp};

/// A test on one string value (a signal property or a profile attribute).
/// Text comparisons ignore ASCII case; patterns are stored lower-cased.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Equals(String),
    In(Vec<String>),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// The value is present and not empty.
    Exists,
    /// The value parses as a number `>=` the bound.
    AtLeast(f64),
    /// The value parses as a number `<=` the bound.
    AtMost(f64),
}

impl Condition {
    pub fn matches(&self, value: Option<&str>) -> bool {
        let Some(value) = value else { return false };
        let v = value.as_bytes();
        match self {
            Condition::Equals(p) => value.eq_ignore_ascii_case(p),
            Condition::In(options) => options.iter().any(|p| value.eq_ignore_ascii_case(p)),
            Condition::Prefix(p) => v.len() >= p.len() && v[..p.len()].eq_ignore_ascii_case(p.as_bytes()),
            Condition::Suffix(p) => v.len() >= p.len() && v[v.len() - p.len()..].eq_ignore_ascii_case(p.as_bytes()),
            Condition::Contains(p) => value.to_ascii_lowercase().contains(p.as_str()),
            Condition::Exists => !value.is_empty(),
            Condition::AtLeast(bound) => parse_number(value).is_some_and(|n| n >= *bound),
            Condition::AtMost(bound) => parse_number(value).is_some_and(|n| n <= *bound),
        }
    }
}

fn parse_number(value: &str) -> Option<f64> {
    value.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

/// Points a model gives one signal type.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalPoints {
    pub points: f64,
    pub decay: Decay,
    /// Checked in order; the first that matches replaces `points`.
    pub refinements: Vec<PropertyRefinement>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PropertyRefinement {
    pub property: String,
    pub condition: Condition,
    pub points: f64,
}

/// Points for a profile that matches; fit does not decay.
#[derive(Debug, Clone, PartialEq)]
pub struct FitRule {
    pub id: String,
    pub attribute: String,
    pub condition: Condition,
    pub points: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Grade {
    A,
    B,
    C,
    D,
}

/// Lowest fit for grades A, B and C; anything below `c` is D.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradeThresholds {
    pub a: f64,
    pub b: f64,
    pub c: f64,
}

impl GradeThresholds {
    pub fn grade(&self, fit: f64) -> Grade {
        if fit >= self.a {
            Grade::A
        } else if fit >= self.b {
            Grade::B
        } else if fit >= self.c {
            Grade::C
        } else {
            Grade::D
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoringModel {
    pub name: String,
    /// Keyed by signal type; a declared type the model omits scores zero.
    pub signals: BTreeMap<String, SignalPoints>,
    pub fit_rules: Vec<FitRule>,
    pub grades: GradeThresholds,
}

/// Why a score is what it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Contribution {
    Signal { signal_type: String, counted: u64, last_at: Option<Timestamp>, points: f64 },
    FitRule { rule_id: String, attribute: String, points: f64 },
}

/// A lead's score under one model at `as_of`, at full precision.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub model: String,
    pub behavior: f64,
    pub fit: f64,
    pub total: f64,
    pub grade: Grade,
    pub contributions: Vec<Contribution>,
    pub as_of: Timestamp,
}

/// The fit rules whose condition an attribute set meets (a lead's profile
/// or an account's).
pub fn matching_fit_rules<'a>(
    rules: &'a [FitRule],
    attributes: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = &'a FitRule> {
    rules.iter().filter(|r| r.condition.matches(attributes.get(&r.attribute).map(String::as_str)))
}

impl ScoringModel {
    /// The fit score of a profile: the points of its matching fit rules.
    pub fn fit(&self, attributes: &BTreeMap<String, String>) -> f64 {
        matching_fit_rules(&self.fit_rules, attributes).map(|r| r.points).sum()
    }

    /// Points and decay this model gives a signal, property refinements
    /// applied (first match wins). Zero for a type the model omits.
    pub fn weigh(&self, signal_type: &str, properties: &BTreeMap<String, String>) -> ModelWeight {
        let (points, decay) = match self.signals.get(signal_type) {
            None => (0.0, Decay::None),
            Some(rule) => {
                let refined = rule
                    .refinements
                    .iter()
                    .find(|r| r.condition.matches(properties.get(&r.property).map(String::as_str)));
                (refined.map_or(rule.points, |r| r.points), rule.decay)
            }
        };
        ModelWeight { model: self.name.clone(), points, decay }
    }

    /// The lead's score at `now`. O(types + fit rules).
    pub fn score(&self, lead: &LeadSnapshot, now: Timestamp) -> Score {
        let mut contributions = Vec::new();
        let mut behavior = 0.0;
        for (signal_type, tally) in &lead.tallies {
            let Some(rule) = self.signals.get(signal_type) else { continue };
            if tally.counted == 0 {
                continue;
            }
            let points = tally.value_at(&self.name, rule.decay, now);
            behavior += points;
            contributions.push(Contribution::Signal {
                signal_type: signal_type.clone(),
                counted: tally.counted,
                last_at: tally.last_at,
                points,
            });
        }
        let mut fit = 0.0;
        for rule in matching_fit_rules(&self.fit_rules, &lead.attributes) {
            fit += rule.points;
            contributions.push(Contribution::FitRule {
                rule_id: rule.id.clone(),
                attribute: rule.attribute.clone(),
                points: rule.points,
            });
        }
        Score {
            model: self.name.clone(),
            behavior,
            fit,
            total: behavior + fit,
            grade: self.grades.grade(fit),
            contributions,
            as_of: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        assert!(Condition::Equals("vp".into()).matches(Some("VP")));
        assert!(Condition::In(vec!["de".into(), "fr".into()]).matches(Some("FR")));
        assert!(Condition::Prefix("/pricing".into()).matches(Some("/Pricing/team")));
        assert!(!Condition::Prefix("/pricing".into()).matches(Some("/pri")));
        assert!(Condition::Suffix("@acme.com".into()).matches(Some("Jo@ACME.com")));
        assert!(Condition::Contains("director".into()).matches(Some("Sales Director EMEA")));
        assert!(Condition::AtLeast(200.0).matches(Some(" 250 ")));
        assert!(!Condition::AtLeast(200.0).matches(Some("many")));
        assert!(Condition::AtMost(10.0).matches(Some("10")));
        assert!(!Condition::Exists.matches(Some("")));
        assert!(!Condition::Exists.matches(None));
        // Multi-byte values never split inside a character.
        assert!(!Condition::Prefix("ab".into()).matches(Some("é")));
        assert!(!Condition::Suffix("ab".into()).matches(Some("é")));
    }

    #[test]
    fn grades_from_thresholds() {
        let g = GradeThresholds { a: 40.0, b: 25.0, c: 10.0 };
        assert_eq!(g.grade(40.0), Grade::A);
        assert_eq!(g.grade(39.9), Grade::B);
        assert_eq!(g.grade(10.0), Grade::C);
        assert_eq!(g.grade(-5.0), Grade::D);
    }
}
