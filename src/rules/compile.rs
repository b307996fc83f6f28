//! Validation and compilation of a parsed rule file into a `RuleSet`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use std::sync::Arc;

use super::file::{
    RawAccounts, RawAttribution, RawBusinessHours, RawMatcher, RawModel, RawProfiles, RawQualificationRule, RawRuleSet,
    RawSignalPoints, RawSla, RawTrigger,
};
use super::qualify::{self, Facts, Needs, QualificationRule};
use super::triggers::{self, TriggerDefinition};
use super::{RuleError, RuleSet, SignalTypeDef, parse_duration};
use crate::domain::account::{AccountPolicy, AccountRule, Aggregate};
use crate::domain::model::{PropertyRefinement, SignalPoints};
use crate::domain::{Condition, Decay, FitRule, GradeThresholds, ScoringModel};
use crate::domain::{LeadId, LeadSnapshot, Stage, Timestamp};

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

    /// Where `part` of a condition is written in the file: within the
    /// condition's `span` (a multi-line condition names the right line);
    /// the condition itself when the part is not found as written.
    fn locate(&self, span: Range<usize>, part: Option<&str>) -> Range<usize> {
        let found = part.and_then(|p| Some((self.source.get(span.clone())?.find(p)?, p.len())));
        match found {
            Some((at, len)) => span.start + at..span.start + at + len,
            None => span,
        }
    }
}

pub(super) fn compile(source: &str, required_approvers: &[String]) -> Result<RuleSet, Vec<RuleError>> {
    let raw: RawRuleSet =
        toml::from_str(source).map_err(|e| vec![RuleError::at(source, e.span(), e.message().trim_end())])?;
    let mut errors = Errors { source, list: Vec::new() };

    let version = raw.version.get_ref();
    if version.trim().is_empty() {
        errors.push(raw.version.span(), "version must not be empty");
    } else if version.len() > 128 || version.chars().any(char::is_control) {
        // It is stored with every stage change and score history entry.
        errors.push(raw.version.span(), "version: at most 128 bytes, no control characters");
    }
    let agreed_by: Vec<String> = raw.agreed_by.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default();
    let missing: Vec<&str> = required_approvers
        .iter()
        .filter(|r| !agreed_by.iter().any(|a| a.trim().eq_ignore_ascii_case(r)))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        let span = raw.agreed_by.as_ref().map_or(0..0, |a| a.span());
        errors.push(span, format!("agreed_by must name every required approver; missing: {}", missing.join(", ")));
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

    let manual_transitions = match &raw.manual_transitions {
        None => default_manual_transitions(),
        Some(table) => manual_transitions(table, &mut errors),
    };
    let daily_caps: BTreeMap<String, Option<u32>> =
        signal_types.iter().map(|(name, def)| (name.clone(), def.daily_cap)).collect();
    let env = Arc::new(cel::Env::stdlib());
    let mut needs = Needs::default();
    let type_names: BTreeSet<String> = signal_types.keys().cloned().collect();
    let model_names: BTreeSet<String> = models.keys().cloned().collect();
    let mut qualification = Vec::new();
    let mut rule_ids = BTreeSet::new();
    for rule in &raw.qualification {
        let span = rule.span();
        if let Some(compiled) =
            qualification_rule(rule.get_ref(), span.clone(), &type_names, &model_names, &mut needs, &mut errors)
        {
            if !rule_ids.insert(compiled.id.clone()) {
                errors.push(span.clone(), format!("qualification rule id '{}' is used twice", compiled.id));
            }
            qualification.push((compiled, rule.get_ref().when.span()));
        }
    }
    let mut trigger_defs = Vec::new();
    let mut trigger_ids = BTreeSet::new();
    for raw in &raw.triggers {
        if let Some(def) = trigger(raw.get_ref(), raw.span(), &type_names, &model_names, &mut needs, &mut errors) {
            if !trigger_ids.insert(def.id.clone()) {
                errors.push(raw.span(), format!("trigger id '{}' is used twice", def.id));
            }
            trigger_defs.push(def);
        }
    }
    // Type errors show only when a condition runs: run each once against a
    // made-up lead whose referenced attributes are all "0".
    if errors.list.is_empty() {
        let now = Timestamp::from_millis(1_700_000_000_000);
        let mut lead = LeadSnapshot::new(LeadId::parse("dry-run").expect("a valid id"), now);
        for (rule, _) in &qualification {
            for name in qualify::referenced_attributes(&rule.when) {
                lead.attributes.insert(name, "0".to_owned());
            }
        }
        let scores: Vec<_> = models.values().map(|m| m.score(&lead, now)).collect();
        let primary = &scores[models.keys().position(|m| *m == primary_model).unwrap_or(0)];
        let facts = Facts { lead: &lead, stage: Stage::Lead, primary, scores: &scores, daily_caps: &daily_caps, now };
        let ctx = qualify::context(&env, &needs, &facts);
        for (rule, span) in &qualification {
            if let Err(e) = rule.dry_run(&ctx) {
                errors.push(span.clone(), format!("rule '{}': {e}", rule.id));
            }
        }
        for (def, raw) in trigger_defs.iter().zip(&raw.triggers) {
            if let (Some((_, program)), Some(when)) = (&def.when, &raw.get_ref().when)
                && let Err(e) = qualify::dry_run_program(program, &ctx)
            {
                errors.push(when.span(), format!("trigger '{}': {e}", def.id));
            }
        }
    }

    let cohort_attributes = cohort_attributes(raw.profiles.as_ref(), &mut errors);
    let accounts = account_policy(raw.accounts.as_ref(), &primary_model, &models, &mut errors);
    let attribution_half_life_ms = attribution_half_life(raw.attribution.as_ref(), &mut errors);
    let sla = raw.sla.as_ref().and_then(|sla| agreement(sla.get_ref(), &mut errors));
    if raw.sla.is_none() {
        for (def, raw) in trigger_defs.iter().zip(&raw.triggers) {
            if def.on == crate::domain::TriggerOn::SlaBreached {
                let message = format!("trigger '{}': on = 'sla_breached' needs an [sla] section", def.id);
                errors.push(raw.get_ref().on.span(), message);
            }
        }
    }

    if errors.list.is_empty() {
        Ok(RuleSet {
            cohort_attributes,
            accounts,
            attribution_half_life_ms,
            sla,
            version: raw.version.into_inner().trim().to_owned(),
            agreed_by,
            primary_model,
            signal_types,
            models,
            half_lives,
            manual_transitions,
            qualification: qualification.into_iter().map(|(r, _)| r).collect(),
            triggers: trigger_defs,
            needs,
            daily_caps,
            cel_env: env,
            on_failure: None,
            digest: {
                use sha2::Digest as _;
                sha2::Sha256::digest(source.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
            },
            source: source.to_owned(),
        })
    } else {
        errors.list.sort_by_key(|e| (e.line, e.column));
        Err(errors.list)
    }
}

fn stage(name: &str, span: &Range<usize>, errors: &mut Errors<'_>) -> Option<Stage> {
    match name.parse::<Stage>() {
        Ok(stage) => Some(stage),
        Err(_) => {
            let names: Vec<_> = Stage::ALL.iter().map(|s| s.as_str()).collect();
            errors.push(span.clone(), format!("unknown stage '{name}'; stages are {}", names.join(", ")));
            None
        }
    }
}

/// Manual moves (`SetStage`) allowed when the rule file lists none: the
/// CRM's usual hand-offs, recycling and disqualification.
pub(super) fn default_manual_transitions() -> BTreeMap<Stage, Vec<Stage>> {
    use Stage::*;
    BTreeMap::from([
        (Anonymous, vec![Lead, Disqualified]),
        (Lead, vec![Mql, Sal, Recycled, Disqualified]),
        (Mql, vec![Sal, Sql, Recycled, Disqualified]),
        (Sal, vec![Sql, Recycled, Disqualified]),
        (Sql, vec![Opportunity, Recycled, Disqualified]),
        (Opportunity, vec![Customer, Recycled, Disqualified]),
        (Customer, vec![Advocate]),
        (Advocate, vec![]),
        (Recycled, vec![Mql, Sal, Disqualified]),
        (Disqualified, vec![Lead]),
    ])
}

fn manual_transitions(
    table: &toml::Spanned<BTreeMap<String, Vec<String>>>,
    errors: &mut Errors<'_>,
) -> BTreeMap<Stage, Vec<Stage>> {
    let span = table.span();
    let mut out: BTreeMap<Stage, Vec<Stage>> = Stage::ALL.iter().map(|s| (*s, Vec::new())).collect();
    for (from, targets) in table.get_ref() {
        let Some(from) = stage(from, &span, errors) else { continue };
        for to in targets {
            let Some(to) = stage(to, &span, errors) else { continue };
            if to == from {
                errors.push(span.clone(), format!("manual_transitions: {from} to itself is not a move"));
            } else if to == Stage::Anonymous {
                errors.push(span.clone(), "manual_transitions: no lead can be moved back to ANONYMOUS");
            } else {
                out.entry(from).or_default().push(to);
            }
        }
    }
    out
}

fn qualification_rule(
    raw: &RawQualificationRule,
    span: Range<usize>,
    signal_types: &BTreeSet<String>,
    models: &BTreeSet<String>,
    needs: &mut Needs,
    errors: &mut Errors<'_>,
) -> Option<QualificationRule> {
    if !is_identifier(&raw.id) {
        errors.push(span.clone(), format!("qualification rule id '{}': {IDENTIFIER_RULE}", raw.id));
    }
    let to = stage(&raw.to, &span, errors)?;
    let from = match &raw.from {
        None => None,
        Some(names) => Some(names.iter().map(|n| stage(n, &span, errors)).collect::<Option<Vec<_>>>()?),
    };
    let reachable = match &from {
        None => Stage::ALL.iter().any(|s| s.is_forward(to)),
        Some(from) => from.iter().any(|s| s.is_forward(to)),
    };
    if !reachable {
        errors.push(
            span,
            format!(
                "rule '{}' can never fire: rules only move leads forward, and {to} is not ahead of its 'from' stages",
                raw.id
            ),
        );
        return None;
    }
    let when = raw.when.get_ref();
    match qualify::compile_condition(&raw.id, when, signal_types, models, needs) {
        Ok(program) => Some(qualify::build(raw.id.clone(), to, from, when.clone(), program)),
        Err(e) => {
            errors.push(errors.locate(raw.when.span(), e.snippet.as_deref()), e.message);
            None
        }
    }
}

fn trigger(
    raw: &RawTrigger,
    span: Range<usize>,
    signal_types: &BTreeSet<String>,
    models: &BTreeSet<String>,
    needs: &mut Needs,
    errors: &mut Errors<'_>,
) -> Option<TriggerDefinition> {
    if !is_identifier(&raw.id) {
        errors.push(span.clone(), format!("trigger id '{}': {IDENTIFIER_RULE}", raw.id));
    }
    let on = match triggers::parse_on(raw.on.get_ref(), signal_types) {
        Ok(on) => on,
        Err(e) => {
            errors.push(raw.on.span(), format!("trigger '{}': {e}", raw.id));
            return None;
        }
    };
    let cooldown_ms = match &raw.cooldown {
        None => 0,
        Some(text) => match parse_duration(text.get_ref()) {
            Ok(ms) => ms,
            Err(e) => {
                errors.push(text.span(), format!("trigger '{}': cooldown: {e}", raw.id));
                0
            }
        },
    };
    let when = match &raw.when {
        None => None,
        Some(when) => match qualify::compile_condition(&raw.id, when.get_ref(), signal_types, models, needs) {
            Ok(program) => Some((when.get_ref().clone(), program)),
            Err(e) => {
                errors.push(
                    errors.locate(when.span(), e.snippet.as_deref()),
                    e.message.replacen("rule '", "trigger '", 1),
                );
                return None;
            }
        },
    };
    let program = if raw.program.trim().is_empty() { raw.id.clone() } else { raw.program.trim().to_owned() };
    Some(TriggerDefinition { id: raw.id.clone(), on, when, cooldown_ms, program })
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

    let fit_rules = fit_rules(&raw.fit, &format!("model '{name}'"), errors);

    let g = raw.grades.get_ref();
    if !([g.a, g.b, g.c].iter().all(|t| t.is_finite()) && g.a >= g.b && g.b >= g.c) {
        errors.push(raw.grades.span(), "grades must be finite with A >= B >= C");
    }
    let grades = GradeThresholds { a: g.a, b: g.b, c: g.c };
    (ScoringModel { name: name.to_owned(), signals, fit_rules, grades }, default_decay)
}

/// Fit rules (`attribute` + one condition + points) of a model or of the
/// accounts section (`scope` names it in errors).
fn fit_rules(raw: &[toml::Spanned<RawMatcher>], scope: &str, errors: &mut Errors<'_>) -> Vec<FitRule> {
    let mut fit_rules = Vec::new();
    let mut ids = BTreeSet::new();
    for rule in raw {
        let span = rule.span();
        let r = rule.get_ref();
        let id = r.id.clone().unwrap_or_default();
        if !is_identifier(&id) {
            errors.push(span.clone(), format!("fit rule needs an id: {IDENTIFIER_RULE}"));
        } else if !ids.insert(id.clone()) {
            errors.push(span.clone(), format!("fit rule id '{id}' is used twice in {scope}"));
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
    fit_rules
}

/// The `[profiles]` section: attributes cohort profiles may filter on.
fn cohort_attributes(raw: Option<&toml::Spanned<RawProfiles>>, errors: &mut Errors<'_>) -> Vec<String> {
    let Some(raw) = raw else { return Vec::new() };
    let names = &raw.get_ref().cohort_attributes;
    let mut seen = BTreeSet::new();
    for name in names {
        if !is_identifier(name) {
            errors.push(raw.span(), format!("cohort attribute '{name}': {IDENTIFIER_RULE}"));
        } else if !seen.insert(name) {
            errors.push(raw.span(), format!("cohort attribute '{name}' is listed twice"));
        }
    }
    if names.len() > MAX_COHORT_ATTRIBUTES {
        errors.push(
            raw.span(),
            format!("at most {MAX_COHORT_ATTRIBUTES} cohort attributes (each multiplies the writes of a score change)"),
        );
    }
    names.clone()
}

/// The `[attribution]` section: the time-decay model's half-life (7 days
/// without one).
fn attribution_half_life(raw: Option<&toml::Spanned<RawAttribution>>, errors: &mut Errors<'_>) -> i64 {
    let default = crate::domain::attribution::DEFAULT_HALF_LIFE_MS;
    let Some(text) = raw.and_then(|r| r.get_ref().half_life.as_ref()) else { return default };
    match half_life(text, errors) {
        Decay::HalfLife { millis } => millis as i64,
        Decay::None => default,
    }
}

/// Longest follow-up agreement: a year of counted time.
const MAX_WITHIN_MS: i64 = 365 * 86_400_000;
/// Holidays a business calendar may list.
pub const MAX_HOLIDAYS: usize = 1000;
/// Working-day names, Monday first.
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The `[sla]` section: the follow-up agreement, in business hours if it
/// says so.
fn agreement(raw: &RawSla, errors: &mut Errors<'_>) -> Option<crate::domain::sla::Agreement> {
    use crate::domain::sla::{Agreement, SlaClock};
    let within_ms = match parse_duration(raw.within.get_ref()) {
        Ok(ms) if ms > 0 && ms <= MAX_WITHIN_MS => Some(ms),
        Ok(_) => {
            errors.push(raw.within.span(), "sla: within must be more than 0 and at most 365d");
            None
        }
        Err(e) => {
            errors.push(raw.within.span(), format!("sla: within: {e}"));
            None
        }
    };
    let owner_attribute = match &raw.owner_attribute {
        None => Some("owner".to_owned()),
        Some(name) => {
            let n = name.get_ref();
            let valid = (1..=64).contains(&n.len())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                errors.push(name.span(), "sla: owner_attribute: letters, digits, '_', '.', '-' (1 to 64 bytes)");
            }
            valid.then(|| n.clone())
        }
    };
    let clock = match &raw.business_hours {
        None => Some(SlaClock::Always),
        Some(hours) => business_hours(hours.get_ref(), errors).map(SlaClock::Business),
    };
    Some(Agreement { clock: clock?, within_ms: within_ms?, owner_attribute: owner_attribute? })
}

/// `[sla.business_hours]`: a time zone, working days, opening hours and
/// holidays.
fn business_hours(raw: &RawBusinessHours, errors: &mut Errors<'_>) -> Option<crate::domain::sla::BusinessHours> {
    use chrono::{NaiveDate, NaiveTime};
    let zone = match raw.zone.get_ref().parse::<chrono_tz::Tz>() {
        Ok(zone) => Some(zone),
        Err(_) => {
            let message = format!(
                "sla: unknown time zone '{}' (an IANA name such as Europe/Berlin or America/New_York)",
                crate::text::bounded(raw.zone.get_ref(), 64)
            );
            errors.push(raw.zone.span(), message);
            None
        }
    };
    let mut working_days = [false; 7];
    let mut days_ok = true;
    for day in raw.days.get_ref() {
        match DAY_NAMES.iter().position(|d| d == day) {
            Some(i) if !working_days[i] => working_days[i] = true,
            Some(_) => {
                errors.push(raw.days.span(), format!("sla: working day '{day}' is listed twice"));
                days_ok = false;
            }
            None => {
                let message =
                    format!("sla: unknown day '{}'; days are {}", crate::text::bounded(day, 16), DAY_NAMES.join(", "));
                errors.push(raw.days.span(), message);
                days_ok = false;
            }
        }
    }
    if days_ok && !working_days.contains(&true) {
        errors.push(raw.days.span(), "sla: business hours need at least one working day");
        days_ok = false;
    }
    let time = |text: &toml::Spanned<String>, what: &str, errors: &mut Errors<'_>| {
        let parsed = NaiveTime::parse_from_str(text.get_ref(), "%H:%M").ok();
        if parsed.is_none() {
            errors.push(text.span(), format!("sla: {what} must be a local time as HH:MM, e.g. \"09:00\""));
        }
        parsed
    };
    let (open, close) = (time(&raw.open, "open", errors), time(&raw.close, "close", errors));
    if let (Some(o), Some(c)) = (open, close)
        && o >= c
    {
        errors.push(raw.close.span(), "sla: close must be later than open on the same day");
        return None;
    }
    if raw.holidays.len() > MAX_HOLIDAYS {
        errors.push(raw.holidays[MAX_HOLIDAYS].span(), format!("sla: at most {MAX_HOLIDAYS} holidays"));
        return None;
    }
    let mut holidays = BTreeSet::new();
    let mut holidays_ok = true;
    for day in &raw.holidays {
        // Duplicate dates are harmless.
        match NaiveDate::parse_from_str(day.get_ref(), "%Y-%m-%d") {
            Ok(date) => {
                holidays.insert(date);
            }
            Err(_) => {
                errors.push(day.span(), "sla: holidays are dates as YYYY-MM-DD, e.g. \"2026-12-25\"");
                holidays_ok = false;
            }
        }
    }
    if !(days_ok && holidays_ok) {
        return None;
    }
    Some(crate::domain::sla::BusinessHours { zone: zone?, working_days, open: open?, close: close?, holidays })
}

/// Cohort attributes a rule set may declare.
pub const MAX_COHORT_ATTRIBUTES: usize = 8;

/// The `[accounts]` section; without one, accounts sum the primary model's
/// behaviour scores and no account qualifies.
fn account_policy(
    raw: Option<&toml::Spanned<RawAccounts>>,
    primary_model: &str,
    models: &BTreeMap<String, ScoringModel>,
    errors: &mut Errors<'_>,
) -> AccountPolicy {
    let default = AccountPolicy {
        model: primary_model.to_owned(),
        aggregate: Aggregate::Sum,
        engaged_at: 1.0,
        fit_rules: Vec::new(),
        rules: Vec::new(),
    };
    let Some(raw) = raw else { return default };
    let r = raw.get_ref();
    let model = match &r.model {
        Some(m) if !models.contains_key(m.get_ref()) => {
            errors.push(m.span(), format!("accounts.model '{}' is not defined under [models]", m.get_ref()));
            primary_model.to_owned()
        }
        Some(m) => m.get_ref().clone(),
        None => primary_model.to_owned(),
    };
    let top = r.top.as_ref().map(|t| match usize::try_from(*t.get_ref()).ok().filter(|n| (1..=1000).contains(n)) {
        Some(n) => n,
        None => {
            errors.push(t.span(), "accounts.top must be 1 to 1000");
            1
        }
    });
    let aggregate = match (r.aggregate.as_ref().map(|a| (a.get_ref().as_str(), a.span())), top) {
        (None | Some(("sum", _)), None) => Aggregate::Sum,
        (Some(("sum", span)), Some(_)) => {
            errors.push(span, "accounts.top goes with aggregate = \"top\"");
            Aggregate::Sum
        }
        (Some(("top", _)), top) | (None, top @ Some(_)) => Aggregate::Top(top.unwrap_or(3)),
        (Some((other, span)), _) => {
            errors.push(span, format!("accounts.aggregate must be \"sum\" or \"top\", not \"{other}\""));
            Aggregate::Sum
        }
    };
    let engaged_at = match &r.engaged_at {
        Some(e) if !e.get_ref().is_finite() => {
            errors.push(e.span(), "accounts.engaged_at must be finite");
            1.0
        }
        Some(e) => *e.get_ref(),
        None => default.engaged_at,
    };
    let mut rules = Vec::new();
    let mut ids = BTreeSet::new();
    for rule in &r.qualify {
        let q = rule.get_ref();
        if !is_identifier(&q.id) {
            errors.push(rule.span(), format!("account rule id: {IDENTIFIER_RULE}"));
        } else if !ids.insert(q.id.clone()) {
            errors.push(rule.span(), format!("account rule id '{}' is used twice", q.id));
        }
        if q.min_score.is_none() && q.min_engaged_leads.is_none() && q.min_fit.is_none() {
            errors.push(rule.span(), format!("account rule '{}' needs min_score, min_engaged_leads or min_fit", q.id));
        }
        if [q.min_score, q.min_fit].iter().flatten().any(|v| !v.is_finite()) {
            errors.push(rule.span(), format!("account rule '{}': minimums must be finite", q.id));
        }
        rules.push(AccountRule {
            id: q.id.clone(),
            min_score: q.min_score,
            min_engaged_leads: q.min_engaged_leads,
            min_fit: q.min_fit,
        });
    }
    AccountPolicy { model, aggregate, engaged_at, fit_rules: fit_rules(&r.fit, "[accounts]", errors), rules }
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
    fn the_follow_up_agreement() {
        use crate::domain::sla::SlaClock;
        let hour = 3_600_000;
        let rules = compile(&format!("{MINIMAL}\n[sla]\nwithin = \"24h\"\n"), &[]).unwrap();
        let sla = rules.sla.unwrap();
        assert_eq!((sla.within_ms, &sla.clock, sla.owner_attribute.as_str()), (24 * hour, &SlaClock::Always, "owner"));
        assert!(compile(MINIMAL, &[]).unwrap().sla.is_none());
        let business = format!(
            "{MINIMAL}\n[sla]\nwithin = \"8h\"\nowner_attribute = \"crm_owner\"\n[sla.business_hours]\n\
             zone = \"Europe/Berlin\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n\
             open = \"09:00\"\nclose = \"17:30\"\nholidays = [\"2026-12-25\", \"2026-12-26\"]\n"
        );
        let sla = compile(&business, &[]).unwrap().sla.unwrap();
        assert_eq!(sla.owner_attribute, "crm_owner");
        assert_eq!(
            sla.to_string(),
            "within 8h of business hours: Europe/Berlin, mon tue wed thu fri 09:00-17:30, 2 holidays"
        );
        for (from, to, expected) in [
            ("within = \"8h\"", "within = \"0s\"", "more than 0"),
            ("within = \"8h\"", "within = \"400d\"", "at most 365d"),
            ("Europe/Berlin", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
            ("\"fri\"]", "\"fri\", \"fri\"]", "'fri' is listed twice"),
            ("\"fri\"]", "\"friday\"]", "unknown day 'friday'"),
            ("days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]", "days = []", "at least one working day"),
            ("close = \"17:30\"", "close = \"08:00\"", "close must be later than open"),
            ("open = \"09:00\"", "open = \"9am\"", "open must be a local time as HH:MM"),
            ("\"2026-12-26\"", "\"26.12.2026\"", "holidays are dates as YYYY-MM-DD"),
            ("owner_attribute = \"crm_owner\"", "owner_attribute = \"crm owner\"", "owner_attribute"),
            ("open = ", "opens = ", "unknown field `opens`"),
        ] {
            let errors = compile(&business.replace(from, to), &[]).unwrap_err();
            assert!(errors.iter().any(|e| e.message.contains(expected)), "{to}: {errors:?}");
        }
        let many: Vec<String> = (0..=MAX_HOLIDAYS).map(|d| format!("\"{}\"", 2000 + d / 360)).collect();
        let errors =
            compile(&business.replace("\"2026-12-25\", ", &format!("{}, ", many.join(", "))), &[]).unwrap_err();
        assert!(errors.iter().any(|e| e.message.contains("at most 1000 holidays")), "{errors:?}");
        // A breach trigger needs an agreement to breach.
        let trigger = "\n[[triggers]]\nid = \"escalate\"\non = \"sla_breached\"\n";
        let errors = compile(&format!("{MINIMAL}{trigger}"), &[]).unwrap_err();
        assert!(errors.iter().any(|e| e.message.contains("needs an [sla] section")), "{errors:?}");
        let rules = compile(&format!("{MINIMAL}{trigger}\n[sla]\nwithin = \"1h\"\n"), &[]).unwrap();
        assert_eq!(rules.breach_triggers().count(), 1);
    }

    #[test]
    fn the_attribution_half_life() {
        let day = 86_400_000;
        let rules = compile(&format!("{MINIMAL}\n[attribution]\nhalf_life = \"3d\"\n"), &[]).unwrap();
        assert_eq!(rules.attribution_half_life_ms, 3 * day);
        assert_eq!(compile(MINIMAL, &[]).unwrap().attribution_half_life_ms, 7 * day);
        for (bad, expected) in [("0d", "more than 0"), ("soon", "invalid duration 'soon'")] {
            let errors = compile(&format!("{MINIMAL}\n[attribution]\nhalf_life = \"{bad}\"\n"), &[]).unwrap_err();
            assert!(errors.iter().any(|e| e.message.contains(expected)), "{bad}: {errors:?}");
        }
        let errors = compile(&format!("{MINIMAL}\n[attribution]\nhalflife = \"3d\"\n"), &[]).unwrap_err();
        assert!(errors.iter().any(|e| e.message.contains("halflife")), "{errors:?}");
    }

    #[test]
    fn profiles_and_accounts_sections() {
        let good = format!(
            "{MINIMAL}\n[profiles]\ncohort_attributes = [\"industry\"]\n\n[accounts]\naggregate = \"top\"\ntop = 2\n\
             engaged_at = 10\n\n[[accounts.fit]]\nid = \"big\"\nattribute = \"employees\"\nat_least = 1000\npoints = 5\n\n\
             [[accounts.qualify]]\nid = \"mqa\"\nmin_score = 50\n"
        );
        let rules = compile(&good, &[]).unwrap();
        assert_eq!(rules.cohort_attributes, ["industry"]);
        assert_eq!(rules.accounts.aggregate, Aggregate::Top(2));
        assert_eq!((rules.accounts.model.as_str(), rules.accounts.rules.len()), ("b2b", 1));
        let defaults = compile(MINIMAL, &[]).unwrap();
        assert_eq!((defaults.accounts.aggregate, defaults.accounts.rules.len()), (Aggregate::Sum, 0));

        let bad = format!(
            "{MINIMAL}\n[profiles]\ncohort_attributes = [\"a b\", \"x\", \"x\"]\n\n[accounts]\nmodel = \"nope\"\n\
             aggregate = \"median\"\ntop = 0\n\n[[accounts.qualify]]\nid = \"empty\"\n"
        );
        let messages: Vec<String> = compile(&bad, &[]).unwrap_err().into_iter().map(|e| e.message).collect();
        for expected in [
            "cohort attribute 'a b'",
            "listed twice",
            "accounts.model 'nope'",
            "accounts.top must be",
            "needs min_score",
        ] {
            assert!(messages.iter().any(|m| m.contains(expected)), "{expected}: {messages:?}");
        }
    }

    #[test]
    fn versions_are_plain_text() {
        let bad = MINIMAL.replacen("version = \"1\"", "version = \"1\\u001f2\"", 1);
        let errors = compile(&bad, &[]).unwrap_err();
        assert!(errors[0].message.contains("no control characters"), "{errors:?}");
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
