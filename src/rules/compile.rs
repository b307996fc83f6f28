//! Validation and compilation of a parsed rule file into a `RuleSet`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::file::{RawMatcher, RawModel, RawRuleSet, RawSignalPoints};
use super::{RuleError, RuleSet, SignalTypeDef, parse_duration};
use crate::domain::model::{PropertyRefinement, SignalPoints};
use crate::domain::{Condition, Decay, FitRule, GradeThresholds, ScoringModel};

/// Largest absolute number of points any rule may give.
const MAX_POINTS: f64 = 1_000_000.0;
/// Longest half-life accepted: ten years.
const MAX_HALF_LIFE_MS: i64 = 3650 * 86_400_000;

struct Errors<'s> {
    source: &'s str,
    list: Vec<RuleError>,
}

impl Errors<'_> {
    fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.list.push(RuleError::at(self.source, Some(span), message));
    }
}

pub(super) fn compile(source: &str) -> Result<RuleSet, Vec<RuleError>> {
    let raw: RawRuleSet =
        toml::from_str(source).map_err(|e| vec![RuleError::at(source, e.span(), e.message().trim_end())])?;
    let mut errors = Errors { source, list: Vec::new() };

    if raw.version.get_ref().trim().is_empty() {
        errors.push(raw.version.span(), "version must not be empty");
    }

    let mut signal_types = BTreeMap::new();
    if raw.signal_types.get_ref().is_empty() {
        errors.push(raw.signal_types.span(), "declare at least one signal type");
    }
    for (name, def) in raw.signal_types.get_ref() {
        if !is_identifier(name) {
            errors.push(def.span(), format!("signal type '{name}': {IDENTIFIER_RULE}"));
        }
        let daily_cap = def.get_ref().daily_cap.as_ref().and_then(|cap| {
            match u32::try_from(*cap.get_ref()).ok().filter(|c| (1..=1_000_000).contains(c)) {
                Some(c) => Some(c),
                None => {
                    errors.push(cap.span(), format!("signal type '{name}': daily_cap must be 1 to 1000000"));
                    None
                }
            }
        });
        let description = def.get_ref().description.clone();
        signal_types.insert(name.clone(), SignalTypeDef { description, daily_cap });
    }

    let mut models = BTreeMap::new();
    let mut half_lives = BTreeMap::new();
    if raw.models.get_ref().is_empty() {
        errors.push(raw.models.span(), "define at least one scoring model");
    }
    for (name, model) in raw.models.get_ref() {
        if !is_identifier(name) {
            errors.push(model.span(), format!("model '{name}': {IDENTIFIER_RULE}"));
        }
        let (compiled, decay) = compile_model(name, model.get_ref(), &signal_types, &mut errors);
        half_lives.insert(name.clone(), decay);
        models.insert(name.clone(), compiled);
    }
    let primary_model = raw.primary_model.get_ref().clone();
    if !models.contains_key(&primary_model) {
        errors.push(raw.primary_model.span(), format!("primary_model '{primary_model}' is not defined under [models]"));
    }

    if errors.list.is_empty() {
        Ok(RuleSet {
            version: raw.version.into_inner().trim().to_owned(),
            agreed_by: raw.agreed_by,
            primary_model,
            signal_types,
            models,
            half_lives,
        })
    } else {
        errors.list.sort_by_key(|e| (e.line, e.column));
        Err(errors.list)
    }
}

const IDENTIFIER_RULE: &str = "names use lower-case letters, digits and '_', start with a letter, at most 64 bytes";

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn half_life(text: &toml::Spanned<String>, errors: &mut Errors<'_>) -> Decay {
    match parse_duration(text.get_ref()) {
        Ok(ms) if ms > 0 && ms <= MAX_HALF_LIFE_MS => Decay::HalfLife { millis: ms as f64 },
        Ok(_) => {
            errors.push(text.span(), "half_life must be more than 0 and at most 3650d");
            Decay::None
        }
        Err(e) => {
            errors.push(text.span(), e);
            Decay::None
        }
    }
}

fn points(value: &toml::Spanned<f64>, errors: &mut Errors<'_>) -> f64 {
    let p = *value.get_ref();
    if !p.is_finite() || p.abs() > MAX_POINTS {
        errors.push(value.span(), format!("points must be a finite number within ±{MAX_POINTS}"));
        return 0.0;
    }
    p
}

fn compile_model(
    name: &str,
    raw: &RawModel,
    signal_types: &BTreeMap<String, SignalTypeDef>,
    errors: &mut Errors<'_>,
) -> (ScoringModel, Decay) {
    let default_decay = half_life(&raw.half_life, errors);
    let mut signals = BTreeMap::new();
    for (signal_type, rule) in &raw.signals {
        if !signal_types.contains_key(signal_type) {
            errors.push(
                rule.span(),
                format!("model '{name}' scores '{signal_type}', which is not declared under [signal_types]"),
            );
            continue;
        }
        signals.insert(signal_type.clone(), signal_points(rule.get_ref(), default_decay, errors));
    }

    let mut fit_rules = Vec::new();
    let mut ids = BTreeSet::new();
    for rule in &raw.fit {
        let span = rule.span();
        let r = rule.get_ref();
        let id = r.id.clone().unwrap_or_default();
        if !is_identifier(&id) {
            errors.push(span.clone(), format!("fit rule needs an id: {IDENTIFIER_RULE}"));
        } else if !ids.insert(id.clone()) {
            errors.push(span.clone(), format!("fit rule id '{id}' is used twice in model '{name}'"));
        }
        if r.property.is_some() {
            errors.push(span.clone(), "fit rules test an 'attribute', not a 'property'");
        }
        let attribute = r.attribute.clone().unwrap_or_default();
        if attribute.is_empty() {
            errors.push(span.clone(), format!("fit rule '{id}' needs an attribute"));
        }
        let Some(condition) = condition(r, span, errors) else { continue };
        fit_rules.push(FitRule { id, attribute, condition, points: points(&r.points, errors) });
    }

    let g = raw.grades.get_ref();
    if !([g.a, g.b, g.c].iter().all(|t| t.is_finite()) && g.a >= g.b && g.b >= g.c) {
        errors.push(raw.grades.span(), "grades must be finite with A >= B >= C");
    }
    let grades = GradeThresholds { a: g.a, b: g.b, c: g.c };
    (ScoringModel { name: name.to_owned(), signals, fit_rules, grades }, default_decay)
}

fn signal_points(raw: &RawSignalPoints, default_decay: Decay, errors: &mut Errors<'_>) -> SignalPoints {
    let decays = raw.decay.as_ref().is_none_or(|d| *d.get_ref());
    let decay = match (&raw.half_life, decays) {
        (Some(h), true) => half_life(h, errors),
        (None, true) => default_decay,
        (None, false) => Decay::None,
        (Some(h), false) => {
            errors.push(h.span(), "half_life makes no sense with decay = false");
            Decay::None
        }
    };
    let mut refinements = Vec::new();
    for m in &raw.refinements {
        let r = m.get_ref();
        if r.id.is_some() || r.attribute.is_some() {
            errors.push(m.span(), "a signal match tests a 'property' (no 'id' or 'attribute')");
        }
        let property = r.property.clone().unwrap_or_default();
        if property.is_empty() {
            errors.push(m.span(), "a signal match needs a property");
        }
        if let Some(condition) = condition(r, m.span(), errors) {
            refinements.push(PropertyRefinement { property, condition, points: points(&r.points, errors) });
        }
    }
    SignalPoints { points: points(&raw.points, errors), decay, refinements }
}

/// Exactly one of the condition keys must be given.
fn condition(raw: &RawMatcher, span: Range<usize>, errors: &mut Errors<'_>) -> Option<Condition> {
    let lower = |s: &String| s.to_ascii_lowercase();
    let mut found: Vec<Condition> = Vec::new();
    found.extend(raw.equals.as_ref().map(|s| Condition::Equals(lower(s))));
    found.extend(raw.one_of.as_ref().map(|v| Condition::In(v.iter().map(lower).collect())));
    found.extend(raw.prefix.as_ref().map(|s| Condition::Prefix(lower(s))));
    found.extend(raw.suffix.as_ref().map(|s| Condition::Suffix(lower(s))));
    found.extend(raw.contains.as_ref().map(|s| Condition::Contains(lower(s))));
    found.extend(raw.at_least.map(Condition::AtLeast));
    found.extend(raw.at_most.map(Condition::AtMost));
    match raw.exists {
        Some(true) => found.push(Condition::Exists),
        Some(false) => {
            errors.push(span, "exists = false is not supported; omit the rule instead");
            return None;
        }
        None => {}
    }
    let keys = "equals, in, prefix, suffix, contains, exists, at_least or at_most";
    match found.len() {
        1 => {
            let c = found.pop();
            match &c {
                Some(Condition::In(v)) if v.is_empty() => {
                    errors.push(span, "'in' needs at least one value");
                    None
                }
                Some(Condition::AtLeast(n) | Condition::AtMost(n)) if !n.is_finite() => {
                    errors.push(span, "numeric bounds must be finite");
                    None
                }
                _ => c,
            }
        }
        0 => {
            errors.push(span, format!("give one condition: {keys}"));
            None
        }
        _ => {
            errors.push(span, format!("give only one condition of {keys}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
version = "1"
agreed_by = ["marketing", "sales"]
primary_model = "b2b"

[signal_types]
page_view = { daily_cap = 10 }
demo_requested = {}
unsubscribe = {}

[models.b2b]
half_life = "14d"
grades = { A = 40, B = 25, C = 10 }

[models.b2b.signals]
page_view = { points = 1, match = [{ property = "url", prefix = "/Pricing", points = 10 }] }
demo_requested = { points = 40, half_life = "30d" }
unsubscribe = { points = -50, decay = false }

[[models.b2b.fit]]
id = "senior"
attribute = "seniority"
in = ["VP", "director"]
points = 15
"#;

    #[test]
    fn compiles_a_minimal_rule_set() {
        let rs = RuleSet::parse(MINIMAL).unwrap();
        assert_eq!(rs.signal_type("page_view").unwrap().daily_cap, Some(10));
        let m = rs.primary();
        assert_eq!(m.signals["unsubscribe"].decay, Decay::None);
        assert_eq!(m.signals["demo_requested"].decay, Decay::HalfLife { millis: 30.0 * 86_400_000.0 });
        assert_eq!(m.fit_rules[0].condition, Condition::In(vec!["vp".into(), "director".into()]));
        let props = BTreeMap::from([("url".to_owned(), "/pricing/teams".to_owned())]);
        assert_eq!(rs.weigh("page_view", &props)[0].points, 10.0);
        assert_eq!(rs.weigh("page_view", &BTreeMap::new())[0].points, 1.0);
        assert!(rs.summary().contains("model b2b (primary)"));
    }

    #[test]
    fn reports_every_error_with_its_line() {
        let broken = MINIMAL
            .replace(
                "demo_requested = { points = 40, half_life = \"30d\" }",
                "demo_requested = { points = 40, half_life = \"soon\" }",
            )
            .replace(
                "unsubscribe = { points = -50, decay = false }",
                "unsubscribe = { points = -50, decay = false }\nwebinar = { points = 5 }",
            )
            .replace("primary_model = \"b2b\"", "primary_model = \"b2c\"");
        let errors = RuleSet::parse(&broken).unwrap_err();
        let lines: Vec<_> = errors.iter().map(|e| (e.line, e.message.clone())).collect();
        assert_eq!(errors.len(), 3, "{lines:?}");
        assert_eq!(errors[0].line, 4);
        assert!(errors[0].message.contains("primary_model 'b2c'"));
        assert_eq!(errors[1].line, 17);
        assert!(errors[1].message.contains("invalid duration 'soon'"));
        assert_eq!(errors[2].line, 19);
        assert!(errors[2].message.contains("'webinar', which is not declared"));
    }

    #[test]
    fn syntax_errors_are_located() {
        let errors = RuleSet::parse("version = \"1\"\nprimary_model = \n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 2);
    }

    #[test]
    fn rejects_bad_conditions_caps_and_grades() {
        let broken = MINIMAL
            .replace("page_view = { daily_cap = 10 }", "page_view = { daily_cap = 0 }")
            .replace("in = [\"VP\", \"director\"]", "in = [\"VP\"]\nequals = \"x\"")
            .replace("A = 40, B = 25", "A = 20, B = 25");
        let messages: Vec<_> = RuleSet::parse(&broken).unwrap_err().into_iter().map(|e| e.message).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("daily_cap")));
        assert!(messages.iter().any(|m| m.contains("only one condition")));
        assert!(messages.iter().any(|m| m.contains("A >= B >= C")));
    }
}
