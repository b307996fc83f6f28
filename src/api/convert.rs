//! Proto ⇄ domain. Requests are parsed into domain values here, collecting
//! every field violation (with its path, e.g. `signals[3].type`), so a bad
//! request is refused whole before anything is written.

use std::collections::{BTreeMap, HashMap};

use super::error::{self, ApiError, Violations};
use super::pb;
use crate::domain::account::AccountProfile;
use crate::domain::expansion;
use crate::domain::{
    AccountId, Cause, Contribution, EventId, Grade, IdError, LeadId, LeadProfile, LeadSnapshot, QualificationChange,
    Score, ScoreSnapshot, ScoredSignal, Stage, StageChange, Timestamp, VisitorId,
};
use crate::rules::RuleSet;

pub const MAX_ATTRIBUTES: usize = 100;
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 64;
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
pub const MAX_PROPERTIES: usize = 64;
pub const MAX_PROPERTY_KEY_BYTES: usize = 128;
pub const MAX_PROPERTY_VALUE_BYTES: usize = 2048;
/// 9999-12-31T23:59:59Z, the end of the protobuf Timestamp range.
const MAX_SECONDS: i64 = 253_402_300_799;

pub fn timestamp_from_proto(ts: &pbjson_types::Timestamp) -> Result<Timestamp, String> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err("nanos must be within 0..999999999".into());
    }
    if !(0..=MAX_SECONDS).contains(&ts.seconds) {
        return Err("must be between 1970-01-01 and 9999-12-31".into());
    }
    Ok(Timestamp::from_millis(ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000)))
}

pub fn timestamp_to_proto(t: Timestamp) -> pbjson_types::Timestamp {
    let ms = t.millis();
    pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Milliseconds as a protobuf duration (seconds and nanos of one sign).
pub fn duration_to_proto(ms: i64) -> pbjson_types::Duration {
    pbjson_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

fn id<T>(parse: fn(String) -> Result<T, IdError>, raw: String, field: &str, v: &mut Violations) -> Option<T> {
    parse(raw).map_err(|e| v.add(field, format!("{field} {e}"))).ok()
}

pub fn lead_id(raw: String, field: &str, v: &mut Violations) -> Option<LeadId> {
    id(LeadId::parse, raw, field, v)
}

pub fn visitor_id(raw: String, field: &str, v: &mut Violations) -> Option<VisitorId> {
    id(VisitorId::parse, raw, field, v)
}

/// A lead, or a visitor's subject, from a request that names one of the two.
pub fn subject(lead: String, visitor: String, prefix: &str, v: &mut Violations) -> Option<LeadId> {
    match (lead.is_empty(), visitor.is_empty()) {
        (false, true) => lead_id(lead, &format!("{prefix}lead_id"), v),
        (true, false) => visitor_id(visitor, &format!("{prefix}visitor_id"), v).map(|id| LeadId::for_visitor(&id)),
        (true, true) => {
            v.add(format!("{prefix}lead_id"), "set lead_id (or visitor_id for an anonymous visitor)");
            None
        }
        (false, false) => {
            v.add(format!("{prefix}visitor_id"), "set lead_id or visitor_id, not both");
            None
        }
    }
}

/// (lead_id, visitor_id) as the API shows a subject: one of them is empty.
pub fn subject_ids(id: &LeadId) -> (String, String) {
    match id.visitor() {
        Some(visitor) => (String::new(), visitor.to_owned()),
        None => (id.as_str().to_owned(), String::new()),
    }
}

fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ATTRIBUTE_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

pub fn lead_profile(lead: Option<pb::Lead>) -> Result<LeadProfile, ApiError> {
    let mut v = Violations::default();
    let Some(lead) = lead else {
        v.add("lead", "lead is required");
        return Err(v.into_error());
    };
    let lead_id = lead_id(lead.lead_id, "lead.lead_id", &mut v);
    let account_id = if lead.account_id.is_empty() {
        None
    } else {
        id(AccountId::parse, lead.account_id, "lead.account_id", &mut v)
    };
    check_attributes(&lead.attributes, "lead.attributes", &mut v);
    let created_at =
        lead.created_at.as_ref().and_then(|ts| timestamp_from_proto(ts).map_err(|e| v.add("lead.created_at", e)).ok());
    let attributes = lead.attributes.into_iter().collect::<BTreeMap<_, _>>();
    match lead_id {
        Some(lead_id) if v.is_empty() => Ok(LeadProfile { lead_id, account_id, attributes, created_at }),
        _ => Err(v.into_error()),
    }
}

/// Profile attributes of a lead or an account: bounded count, names and
/// value sizes.
fn check_attributes(attributes: &HashMap<String, String>, field: &str, v: &mut Violations) {
    if attributes.len() > MAX_ATTRIBUTES {
        v.add(field, format!("at most {MAX_ATTRIBUTES} attributes (got {})", attributes.len()));
    }
    for (name, value) in attributes {
        if !is_attribute_name(name) {
            v.add(
                format!("{field}[{name:?}]"),
                format!("attribute names use letters, digits, '_', '.', '-' (1 to {MAX_ATTRIBUTE_NAME_BYTES} bytes)"),
            );
        } else if value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            v.add(format!("{field}[{name:?}]"), format!("value over {MAX_ATTRIBUTE_VALUE_BYTES} bytes"));
        }
    }
}

pub fn account_id(raw: String, field: &str, v: &mut Violations) -> Option<AccountId> {
    id(AccountId::parse, raw, field, v)
}

/// An `UpsertAccount` account.
pub fn account_profile(account: Option<pb::Account>) -> Result<AccountProfile, ApiError> {
    let mut v = Violations::default();
    let Some(account) = account else {
        v.add("account", "account is required");
        return Err(v.into_error());
    };
    let account_id = account_id(account.account_id, "account.account_id", &mut v);
    check_attributes(&account.attributes, "account.attributes", &mut v);
    match account_id {
        Some(account_id) if v.is_empty() => {
            Ok(AccountProfile { account_id, attributes: account.attributes.into_iter().collect() })
        }
        _ => Err(v.into_error()),
    }
}

/// A `RecordSignals` batch, parsed and weighed under `rules`, in request order.
pub fn signals(
    signals: Vec<pb::Signal>,
    rules: &RuleSet,
    now: Timestamp,
    max_batch_size: usize,
    max_future_skew_ms: i64,
    retention_ms: i64,
) -> Result<Vec<(LeadId, ScoredSignal)>, ApiError> {
    let mut v = Violations::default();
    if signals.is_empty() {
        v.add("signals", "send at least one signal");
    }
    if signals.len() > max_batch_size {
        v.add("signals", format!("at most {max_batch_size} signals per call (got {})", signals.len()));
        return v.into_result(Vec::new());
    }
    let latest = now.plus_millis(max_future_skew_ms);
    let oldest = now.plus_millis(-retention_ms);
    let mut parsed = Vec::with_capacity(signals.len());
    for (i, s) in signals.into_iter().enumerate() {
        let field = |name: &str| format!("signals[{i}].{name}");
        let event_id = id(EventId::parse, s.event_id, &field("event_id"), &mut v);
        let lead_id = subject(s.lead_id, s.visitor_id, &format!("signals[{i}]."), &mut v);
        let daily_cap = match rules.signal_type(&s.r#type) {
            Some(def) => def.daily_cap,
            None => {
                let known: Vec<_> = rules.signal_types.keys().map(String::as_str).collect();
                v.hint(format!("declared signal types: {}", known.join(", ")));
                v.add(field("type"), format!("unknown signal type '{}'", error::bounded(&s.r#type, 64)));
                None
            }
        };
        let occurred_at = match s.occurred_at.as_ref().map(timestamp_from_proto) {
            None => {
                v.add(field("occurred_at"), "occurred_at is required");
                None
            }
            Some(Err(e)) => {
                v.add(field("occurred_at"), e);
                None
            }
            Some(Ok(t)) if t > latest => {
                v.add(field("occurred_at"), format!("more than {} s in the future", max_future_skew_ms / 1000));
                None
            }
            Some(Ok(t)) if t < oldest => {
                v.add(
                    field("occurred_at"),
                    format!("older than the signal retention window ({})", crate::rules::format_duration(retention_ms)),
                );
                None
            }
            Some(Ok(t)) => Some(t),
        };
        if s.properties.len() > MAX_PROPERTIES {
            v.add(field("properties"), format!("at most {MAX_PROPERTIES} properties (got {})", s.properties.len()));
        }
        for (key, value) in &s.properties {
            if key.is_empty() || key.len() > MAX_PROPERTY_KEY_BYTES || key.chars().any(char::is_control) {
                v.add(
                    format!("signals[{i}].properties[{key:?}]"),
                    format!("property keys are 1 to {MAX_PROPERTY_KEY_BYTES} bytes without control characters"),
                );
            } else if value.len() > MAX_PROPERTY_VALUE_BYTES {
                v.add(
                    format!("signals[{i}].properties[{key:?}]"),
                    format!("value over {MAX_PROPERTY_VALUE_BYTES} bytes"),
                );
            }
        }
        if let (Some(event_id), Some(lead_id), Some(occurred_at)) = (event_id, lead_id, occurred_at)
            && v.is_empty()
        {
            let properties: BTreeMap<_, _> = s.properties.into_iter().collect();
            let weights = rules.weigh(&s.r#type, &properties);
            parsed.push((
                lead_id,
                ScoredSignal { event_id, signal_type: s.r#type, occurred_at, daily_cap, weights, properties },
            ));
        }
    }
    v.into_result(parsed)
}

pub fn stage_to_proto(stage: Stage) -> pb::Stage {
    match stage {
        Stage::Anonymous => pb::Stage::Anonymous,
        Stage::Lead => pb::Stage::Lead,
        Stage::Mql => pb::Stage::Mql,
        Stage::Sal => pb::Stage::Sal,
        Stage::Sql => pb::Stage::Sql,
        Stage::Opportunity => pb::Stage::Opportunity,
        Stage::Customer => pb::Stage::Customer,
        Stage::Advocate => pb::Stage::Advocate,
        Stage::Recycled => pb::Stage::Recycled,
        Stage::Disqualified => pb::Stage::Disqualified,
    }
}

pub fn grade_to_proto(grade: Grade) -> pb::Grade {
    match grade {
        Grade::A => pb::Grade::A,
        Grade::B => pb::Grade::B,
        Grade::C => pb::Grade::C,
        Grade::D => pb::Grade::D,
    }
}

/// Points as the API reports them: two decimals, never `-0`.
pub fn round_points(x: f64) -> f64 {
    let r = (x * 100.0).round() / 100.0;
    if r == 0.0 { 0.0 } else { r }
}

pub fn lead_to_proto(lead: &LeadSnapshot) -> pb::Lead {
    pb::Lead {
        lead_id: lead.lead_id.to_string(),
        account_id: lead.account_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        attributes: lead.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        created_at: Some(timestamp_to_proto(lead.created_at)),
        stage: stage_to_proto(lead.stage).into(),
    }
}

pub fn score_to_proto(lead: &LeadSnapshot, score: &Score, rule_set_version: &str) -> pb::LeadScore {
    let contributions = score
        .contributions
        .iter()
        .map(|c| match c {
            Contribution::Signal { signal_type, counted, last_at, points } => pb::Contribution {
                points: round_points(*points),
                source: Some(pb::contribution::Source::Signal(pb::SignalTypeContribution {
                    r#type: signal_type.clone(),
                    counted: *counted,
                    last_at: last_at.map(timestamp_to_proto),
                })),
            },
            Contribution::FitRule { rule_id, attribute, points } => pb::Contribution {
                points: round_points(*points),
                source: Some(pb::contribution::Source::FitRule(pb::FitRuleContribution {
                    rule_id: rule_id.clone(),
                    attribute: attribute.clone(),
                })),
            },
        })
        .collect();
    let (lead_id, visitor_id) = subject_ids(&lead.lead_id);
    pb::LeadScore {
        lead_id,
        visitor_id,
        model: score.model.clone(),
        total: round_points(score.total),
        behavior: round_points(score.behavior),
        fit: round_points(score.fit),
        grade: grade_to_proto(score.grade).into(),
        stage: stage_to_proto(lead.stage).into(),
        rule_set_version: rule_set_version.to_owned(),
        contributions,
        as_of: Some(timestamp_to_proto(score.as_of)),
    }
}

/// A stage sent by a client; `None` for `STAGE_UNSPECIFIED`.
pub fn stage_from_proto(value: i32, field: &str, v: &mut Violations) -> Option<Stage> {
    match pb::Stage::try_from(value) {
        Ok(pb::Stage::Unspecified) => None,
        Ok(stage) => Some(match stage {
            pb::Stage::Anonymous => Stage::Anonymous,
            pb::Stage::Lead => Stage::Lead,
            pb::Stage::Mql => Stage::Mql,
            pb::Stage::Sal => Stage::Sal,
            pb::Stage::Sql => Stage::Sql,
            pb::Stage::Opportunity => Stage::Opportunity,
            pb::Stage::Customer => Stage::Customer,
            pb::Stage::Advocate => Stage::Advocate,
            pb::Stage::Recycled => Stage::Recycled,
            pb::Stage::Disqualified | pb::Stage::Unspecified => Stage::Disqualified,
        }),
        Err(_) => {
            v.add(field, format!("unknown stage value {value}"));
            None
        }
    }
}

fn grade_from_char(grade: char) -> pb::Grade {
    match grade {
        'A' => pb::Grade::A,
        'B' => pb::Grade::B,
        'C' => pb::Grade::C,
        'D' => pb::Grade::D,
        _ => pb::Grade::Unspecified,
    }
}

pub fn score_snapshot_to_proto(score: &ScoreSnapshot) -> pb::ScoreSnapshot {
    pb::ScoreSnapshot {
        total: round_points(score.total),
        behavior: round_points(score.behavior),
        fit: round_points(score.fit),
        grade: grade_from_char(score.grade).into(),
    }
}

pub fn stage_change_to_proto(change: &StageChange) -> pb::StageChange {
    let (rule_id, actor) = match &change.cause {
        Cause::Rule { rule_id } => (rule_id.clone(), String::new()),
        Cause::Manual { actor } => (String::new(), actor.clone()),
    };
    pb::StageChange {
        from: stage_to_proto(change.from).into(),
        to: stage_to_proto(change.to).into(),
        rule_id,
        actor,
        reason: change.reason.clone(),
        rule_set_version: change.rule_set_version.clone(),
        score: Some(score_snapshot_to_proto(&change.score)),
        at: Some(timestamp_to_proto(change.at)),
        deal_amount: change.deal_amount,
    }
}

pub fn qualification_to_proto(lead: &LeadSnapshot, history: &[StageChange]) -> pb::LeadQualification {
    // The newest change explains the current stage, if it led to it.
    let last = history.first().filter(|c| c.to == lead.stage).map(stage_change_to_proto).unwrap_or_default();
    pb::LeadQualification {
        lead_id: lead.lead_id.to_string(),
        stage: stage_to_proto(lead.stage).into(),
        since: Some(timestamp_to_proto(lead.stage_since)),
        rule_id: last.rule_id,
        actor: last.actor,
        reason: last.reason,
        rule_set_version: last.rule_set_version,
        history: history.iter().map(stage_change_to_proto).collect(),
    }
}

pub fn feed_change_to_proto(change: &QualificationChange) -> pb::QualificationChange {
    match &change.event {
        crate::domain::FeedEvent::Moved { lead_id, change: moved } => {
            let (lead_id, visitor_id) = subject_ids(lead_id);
            pb::QualificationChange {
                change_id: change.id.clone(),
                lead_id,
                visitor_id,
                change: Some(stage_change_to_proto(moved)),
                erased: None,
            }
        }
        crate::domain::FeedEvent::Erased(t) => pb::QualificationChange {
            change_id: change.id.clone(),
            erased: Some(pb::LeadErased { lead_ref: t.lead_ref.clone(), erased_at: Some(timestamp_to_proto(t.at)) }),
            ..Default::default()
        },
    }
}

/// A trigger as consumers and webhooks see it.
pub fn trigger_to_proto(d: &crate::domain::Delivery) -> pb::NurtureTrigger {
    let (lead_id, visitor_id) = subject_ids(&d.lead_id);
    let t = &d.trigger;
    pb::NurtureTrigger {
        trigger_id: d.trigger_id.clone(),
        definition_id: t.definition_id.clone(),
        program: t.program.clone(),
        lead_id,
        visitor_id,
        fired_at: Some(timestamp_to_proto(t.fired_at)),
        reason: t.reason.clone(),
        score: Some(score_snapshot_to_proto(&t.score)),
        stage: stage_to_proto(t.stage).into(),
        delivery_count: d.delivery_count,
        owner: t.breach.as_ref().map(|b| b.owner.clone()).unwrap_or_default(),
        handed_over_at: t.breach.as_ref().map(|b| timestamp_to_proto(b.handed_at)),
        due: t.breach.as_ref().map(|b| timestamp_to_proto(b.due)),
        late_by: t.breach.as_ref().map(|b| duration_to_proto(b.late_by_ms)),
    }
}

pub fn expansion_kind_to_proto(kind: expansion::Kind) -> pb::ExpansionKind {
    match kind {
        expansion::Kind::Upsell => pb::ExpansionKind::Upsell,
        expansion::Kind::CrossSell => pb::ExpansionKind::CrossSell,
    }
}

/// The kind asked for; a violation when unset or unknown.
pub fn expansion_kind_from_proto(value: i32, v: &mut Violations) -> Option<expansion::Kind> {
    match pb::ExpansionKind::try_from(value) {
        Ok(pb::ExpansionKind::Upsell) => Some(expansion::Kind::Upsell),
        Ok(pb::ExpansionKind::CrossSell) => Some(expansion::Kind::CrossSell),
        _ => {
            v.add("kind", "EXPANSION_KIND_UPSELL or EXPANSION_KIND_CROSS_SELL");
            None
        }
    }
}

pub fn deal_status_to_proto(status: expansion::Status) -> pb::DealStatus {
    match status {
        expansion::Status::Open => pb::DealStatus::Open,
        expansion::Status::Won => pb::DealStatus::Won,
        expansion::Status::Lost => pb::DealStatus::Lost,
    }
}

/// The status asked for; a violation when unset or unknown.
pub fn deal_status_from_proto(value: i32, v: &mut Violations) -> Option<expansion::Status> {
    match pb::DealStatus::try_from(value) {
        Ok(pb::DealStatus::Open) => Some(expansion::Status::Open),
        Ok(pb::DealStatus::Won) => Some(expansion::Status::Won),
        Ok(pb::DealStatus::Lost) => Some(expansion::Status::Lost),
        _ => {
            v.add("status", "DEAL_STATUS_OPEN, DEAL_STATUS_WON or DEAL_STATUS_LOST");
            None
        }
    }
}

pub fn expansion_deal_to_proto(deal: &expansion::Deal) -> pb::ExpansionDeal {
    pb::ExpansionDeal {
        deal_id: deal.id.clone(),
        kind: expansion_kind_to_proto(deal.kind).into(),
        status: deal_status_to_proto(deal.status).into(),
        amount: deal.micros as f64 / 1e6,
        opened_at: Some(timestamp_to_proto(deal.opened_at)),
        closed_at: deal.closed_at.map(timestamp_to_proto),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_reject_out_of_range() {
        let t = Timestamp::from_millis(1_763_812_345_678);
        assert_eq!(timestamp_from_proto(&timestamp_to_proto(t)), Ok(t));
        assert!(timestamp_from_proto(&pbjson_types::Timestamp { seconds: -1, nanos: 0 }).is_err());
        assert!(timestamp_from_proto(&pbjson_types::Timestamp { seconds: 0, nanos: -1 }).is_err());
        assert!(timestamp_from_proto(&pbjson_types::Timestamp { seconds: i64::MAX, nanos: 0 }).is_err());
    }

    #[test]
    fn rounding() {
        assert_eq!(round_points(12.345_678), 12.35);
        assert_eq!(round_points(-0.001), 0.0);
        assert!(round_points(-0.001).is_sign_positive());
    }
}
