//! The rule file as written (TOML), before validation. Spans locate errors.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRuleSet {
    pub version: Spanned<String>,
    pub agreed_by: Option<Spanned<Vec<String>>>,
    pub primary_model: Spanned<String>,
    pub signal_types: Spanned<BTreeMap<String, Spanned<RawSignalType>>>,
    pub models: Spanned<BTreeMap<String, Spanned<RawModel>>>,
    pub manual_transitions: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    #[serde(default)]
    pub qualification: Vec<Spanned<RawQualificationRule>>,
    #[serde(default)]
    pub triggers: Vec<Spanned<RawTrigger>>,
    pub profiles: Option<Spanned<RawProfiles>>,
    pub accounts: Option<Spanned<RawAccounts>>,
    pub attribution: Option<Spanned<RawAttribution>>,
    pub sla: Option<Spanned<RawSla>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSla {
    pub within: Spanned<String>,
    pub owner_attribute: Option<Spanned<String>>,
    pub business_hours: Option<Spanned<RawBusinessHours>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBusinessHours {
    pub zone: Spanned<String>,
    pub days: Spanned<Vec<String>>,
    pub open: Spanned<String>,
    pub close: Spanned<String>,
    #[serde(default)]
    pub holidays: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttribution {
    pub half_life: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfiles {
    #[serde(default)]
    pub cohort_attributes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccounts {
    pub model: Option<Spanned<String>>,
    pub aggregate: Option<Spanned<String>>,
    pub top: Option<Spanned<i64>>,
    pub engaged_at: Option<Spanned<f64>>,
    #[serde(default)]
    pub fit: Vec<Spanned<RawMatcher>>,
    #[serde(default)]
    pub qualify: Vec<Spanned<RawAccountRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccountRule {
    pub id: String,
    pub min_score: Option<f64>,
    pub min_engaged_leads: Option<u32>,
    pub min_fit: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrigger {
    pub id: String,
    pub on: Spanned<String>,
    pub when: Option<Spanned<String>>,
    pub cooldown: Option<Spanned<String>>,
    #[serde(default)]
    pub program: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQualificationRule {
    pub id: String,
    pub to: String,
    pub from: Option<Vec<String>>,
    pub when: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignalType {
    #[serde(default)]
    pub description: String,
    pub daily_cap: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub half_life: Spanned<String>,
    #[serde(default)]
    pub signals: BTreeMap<String, Spanned<RawSignalPoints>>,
    #[serde(default)]
    pub fit: Vec<Spanned<RawMatcher>>,
    pub grades: Spanned<RawGrades>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignalPoints {
    pub points: Spanned<f64>,
    pub half_life: Option<Spanned<String>>,
    pub decay: Option<Spanned<bool>>,
    #[serde(default, rename = "match")]
    pub refinements: Vec<Spanned<RawMatcher>>,
}

/// A condition on one value with its points: a property refinement
/// (`property = …`) or a fit rule (`id = …, attribute = …`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatcher {
    pub id: Option<String>,
    pub property: Option<String>,
    pub attribute: Option<String>,
    pub points: Spanned<f64>,
    pub equals: Option<String>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub contains: Option<String>,
    pub exists: Option<bool>,
    pub at_least: Option<f64>,
    pub at_most: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrades {
    #[serde(rename = "A")]
    pub a: f64,
    #[serde(rename = "B")]
    pub b: f64,
    #[serde(rename = "C")]
    pub c: f64,
}
