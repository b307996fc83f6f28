//! A lead's stored state as one compact record (protobuf, format 2): the
//! only place that knows how a `LeadState` is laid out in Redis.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prost::Message;

use crate::domain::attribution::{Journey, Model, Touch, WonDeal};
use crate::domain::expansion::{Deal as ExpansionDeal, Kind, Status};
use crate::domain::ledger::HistoryEntry;
use crate::domain::profiles::{ModelScore, Month, ScoreHistoryEntry};
use crate::domain::sla::Pending;
use crate::domain::state::{CohortPlace, Contributions, FirstTouch, LeadState};
use crate::domain::{
    AccountId, Breach, Cause, FiredTrigger, LeadId, LeadLedger, LeadSnapshot, ScoreSnapshot, Stage, StageChange,
    Timestamp, TypeTally,
};
use crate::store::StoreError;

/// The record layout this build reads and writes.
pub const FORMAT: u32 = 2;

#[derive(Clone, PartialEq, Message)]
struct LeadRecord {
    #[prost(uint32, tag = "1")]
    format: u32,
    #[prost(int64, tag = "2")]
    created_at: i64,
    #[prost(uint32, tag = "3")]
    stage: u32,
    #[prost(int64, tag = "4")]
    stage_since: i64,
    #[prost(int64, optional, tag = "5")]
    last_engaged_at: Option<i64>,
    #[prost(uint64, tag = "6")]
    recorded: u64,
    #[prost(string, optional, tag = "7")]
    merged_into: Option<String>,
    #[prost(string, optional, tag = "8")]
    account_id: Option<String>,
    #[prost(btree_map = "string, string", tag = "9")]
    attributes: BTreeMap<String, String>,
    #[prost(btree_map = "string, int64", tag = "10")]
    trigger_fired: BTreeMap<String, i64>,
    /// Model names: the order of every `TypeRecord::sums`.
    #[prost(string, repeated, tag = "11")]
    models: Vec<String>,
    #[prost(message, repeated, tag = "12")]
    types: Vec<TypeRecord>,
    #[prost(fixed64, repeated, tag = "13")]
    seen: Vec<u64>,
    #[prost(int64, repeated, tag = "14")]
    seen_at: Vec<i64>,
    /// Newest first.
    #[prost(message, repeated, tag = "15")]
    history: Vec<SignalRecord>,
    /// Newest first.
    #[prost(message, repeated, tag = "16")]
    stages: Vec<StageRecord>,
    #[prost(message, optional, tag = "17")]
    cohort: Option<CohortRecord>,
    #[prost(int64, optional, tag = "18")]
    first_touch_at: Option<i64>,
    #[prost(string, repeated, tag = "19")]
    first_touch: Vec<String>,
    #[prost(uint32, tag = "20")]
    funnel_reached: u32,
    #[prost(bool, tag = "21")]
    reached_mql: bool,
    #[prost(int64, optional, tag = "22")]
    untouched_at: Option<i64>,
    #[prost(uint32, tag = "23")]
    untouched_stage: u32,
    /// Newest first.
    #[prost(message, repeated, tag = "24")]
    score_history: Vec<ScoreEntryRecord>,
    /// Model names: the order of every `ScoreEntryRecord::hundredths`.
    #[prost(string, repeated, tag = "25")]
    score_models: Vec<String>,
    /// Signal type names: what `SignalRecord::type_index` and
    /// `ScoreEntryRecord::signal_type` point into.
    #[prost(string, repeated, tag = "26")]
    signal_types: Vec<String>,
    /// Property names and values of the history, each once: what
    /// `SignalRecord::property_refs` point into.
    #[prost(string, repeated, tag = "27")]
    strings: Vec<String>,
    /// Bit i (of byte i / 8, lowest first): `history[i]`'s fingerprint is
    /// also remembered for de-duplication, since its arrival. `seen` and
    /// `seen_at` hold only the fingerprints this does not cover.
    #[prost(bytes = "vec", tag = "28")]
    seen_in_history: Vec<u8>,
    /// The attribution journey's touches, oldest first.
    #[prost(message, repeated, tag = "29")]
    touches: Vec<TouchRecord>,
    /// `CREDITED_STAGES` reached: their indexes, and when (milliseconds
    /// after `created_at`).
    #[prost(uint32, repeated, tag = "30")]
    reached_stages: Vec<u32>,
    #[prost(sint64, repeated, tag = "31")]
    reached_at: Vec<i64>,
    /// Won deals kept, newest first.
    #[prost(message, repeated, tag = "32")]
    deals: Vec<DealRecord>,
    #[prost(uint64, tag = "33")]
    deals_won: u64,
    /// The time-decay half-life the journey's credit was shared with.
    #[prost(int64, tag = "34")]
    credit_half_life_ms: i64,
    /// The journey dropped touches: its credit stays as given.
    #[prost(bool, tag = "35")]
    journey_settled: bool,
    /// A hand-over waiting for sales: when (absolute milliseconds) and its
    /// deadline.
    #[prost(int64, optional, tag = "36")]
    handed_at: Option<i64>,
    #[prost(int64, tag = "37")]
    handover_due: i64,
    #[prost(bool, tag = "38")]
    handover_breached: bool,
    /// The customer's expansion deals, newest first.
    #[prost(message, repeated, tag = "39")]
    expansion: Vec<ExpansionRecord>,
    /// `funnel_shares` and `credit_shares` hold every share since the lead
    /// was created (false in records of releases that kept none).
    #[prost(bool, tag = "40")]
    contributions_kept: bool,
    /// The lead's shares of funnel counters, one per index of these
    /// parallel lists: the UTC day (after the day of `created_at`), the
    /// group and the counter (`codec::funnel_field` of an empty group) as
    /// indexes into `strings`, and the amount when whole.
    #[prost(sint64, repeated, tag = "41")]
    share_days: Vec<i64>,
    #[prost(uint32, repeated, tag = "44")]
    share_groups: Vec<u32>,
    #[prost(uint32, repeated, tag = "45")]
    share_counters: Vec<u32>,
    #[prost(sint64, repeated, tag = "46")]
    share_wholes: Vec<i64>,
    /// Amounts that are not whole: the share's index and the amount.
    #[prost(uint32, repeated, tag = "47")]
    share_fraction_at: Vec<u32>,
    #[prost(double, repeated, tag = "48")]
    share_fractions: Vec<f64>,
    /// Credit shares, kept only once the journey is settled.
    #[prost(message, repeated, tag = "42")]
    credit_shares: Vec<CreditShare>,
    #[prost(bool, tag = "49")]
    credits_kept: bool,
    /// Identified visitors merged into the lead, newest first.
    #[prost(string, repeated, tag = "43")]
    visitors: Vec<String>,
}

/// The lead's share of a credit counter: the UTC day, the model's key, the
/// counter's field (`codec::credit_field`) and the amount.
#[derive(Clone, PartialEq, Message)]
struct CreditShare {
    #[prost(sint64, tag = "1")]
    day: i64,
    #[prost(string, tag = "2")]
    model: String,
    #[prost(string, tag = "3")]
    field: String,
    #[prost(int64, tag = "4")]
    by: i64,
}

/// The lead's funnel shares as the record keeps them.
#[derive(Default)]
struct Shares {
    days: Vec<i64>,
    groups: Vec<u32>,
    counters: Vec<u32>,
    wholes: Vec<i64>,
    fraction_at: Vec<u32>,
    fractions: Vec<f64>,
}

/// An expansion deal: the CRM's id, kind (1 upsell, 2 cross-sell), status
/// (1 open, 2 won, 3 lost), amount in micros, and when it opened and
/// closed (milliseconds after the lead's `created_at`).
#[derive(Clone, PartialEq, Message)]
struct ExpansionRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(uint32, tag = "3")]
    status: u32,
    #[prost(int64, tag = "4")]
    micros: i64,
    #[prost(sint64, tag = "5")]
    opened_at: i64,
    #[prost(sint64, optional, tag = "6")]
    closed_at: Option<i64>,
}

/// A touch: milliseconds after the lead's `created_at`, and its source,
/// channel and campaign as indexes into `LeadRecord::strings`.
#[derive(Clone, PartialEq, Message)]
struct TouchRecord {
    #[prost(sint64, tag = "1")]
    at: i64,
    #[prost(uint32, repeated, tag = "2")]
    values: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct DealRecord {
    /// Milliseconds after the lead's `created_at`.
    #[prost(sint64, tag = "1")]
    at: i64,
    #[prost(int64, tag = "2")]
    micros: i64,
    /// An expansion (upsell, cross-sell), not new business.
    #[prost(bool, tag = "3")]
    expansion: bool,
}

/// A score history entry, in hundredths of a point.
#[derive(Clone, PartialEq, Message)]
struct ScoreEntryRecord {
    /// Milliseconds after the lead's `created_at`.
    #[prost(sint64, tag = "1")]
    at: i64,
    /// `signal:<type>` as the type's index + 1; 0: see `cause`.
    #[prost(uint32, tag = "2")]
    signal_type: u32,
    #[prost(string, tag = "3")]
    cause: String,
    /// Per model of `LeadRecord::score_models`: behaviour, fit.
    #[prost(sint64, repeated, tag = "4")]
    hundredths: Vec<i64>,
}

/// One signal type: its tally and its per-day counters.
#[derive(Clone, PartialEq, Message)]
struct TypeRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint64, tag = "2")]
    counted: u64,
    #[prost(int64, optional, tag = "3")]
    last_at: Option<i64>,
    /// In `LeadRecord::models` order; NaN where the model has no sum.
    #[prost(double, repeated, tag = "4")]
    sums: Vec<f64>,
    #[prost(sint64, repeated, tag = "5")]
    days: Vec<i64>,
    #[prost(uint32, repeated, tag = "6")]
    day_counts: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct SignalRecord {
    /// The event id's fingerprint.
    #[prost(fixed64, tag = "1")]
    print: u64,
    /// Index into `LeadRecord::signal_types`.
    #[prost(uint32, tag = "2")]
    type_index: u32,
    /// Milliseconds after the lead's `created_at` (negative: before).
    #[prost(sint64, tag = "3")]
    occurred_at: i64,
    /// Arrival, as milliseconds after `occurred_at` (usually small).
    #[prost(sint64, tag = "4")]
    arrived_after: i64,
    /// As written before `property_refs` (still read).
    #[prost(btree_map = "string, string", tag = "5")]
    properties: BTreeMap<String, String>,
    /// Per property, the indexes of its name and its value in
    /// `LeadRecord::strings`.
    #[prost(uint32, repeated, tag = "6")]
    property_refs: Vec<u32>,
}

#[derive(Clone, PartialEq, Message)]
struct StageRecord {
    #[prost(uint32, tag = "1")]
    from: u32,
    #[prost(uint32, tag = "2")]
    to: u32,
    /// A rule id, or with `manual` the actor.
    #[prost(string, tag = "3")]
    cause: String,
    #[prost(bool, tag = "4")]
    manual: bool,
    #[prost(string, tag = "5")]
    reason: String,
    #[prost(string, tag = "6")]
    rule_set_version: String,
    #[prost(double, tag = "7")]
    total: f64,
    #[prost(double, tag = "8")]
    behavior: f64,
    #[prost(double, tag = "9")]
    fit: f64,
    #[prost(uint32, tag = "10")]
    grade: u32,
    #[prost(int64, tag = "11")]
    at: i64,
    #[prost(double, optional, tag = "12")]
    deal_amount: Option<f64>,
}

#[derive(Clone, PartialEq, Message)]
struct CohortRecord {
    #[prost(string, tag = "1")]
    month: String,
    #[prost(uint32, tag = "2")]
    stage: u32,
    #[prost(bool, tag = "3")]
    reached_mql: bool,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    scores: Vec<ScoreRecord>,
}

#[derive(Clone, PartialEq, Message)]
struct ScoreRecord {
    #[prost(string, tag = "1")]
    model: String,
    #[prost(double, tag = "2")]
    behavior: f64,
    #[prost(double, tag = "3")]
    fit: f64,
}

fn stage_code(stage: Stage) -> u32 {
    Stage::ALL.iter().position(|s| *s == stage).unwrap_or(0) as u32
}

fn stage_record(c: &StageChange) -> StageRecord {
    let (cause, manual) = match &c.cause {
        Cause::Rule { rule_id } => (rule_id.clone(), false),
        Cause::Manual { actor } => (actor.clone(), true),
    };
    StageRecord {
        from: stage_code(c.from),
        to: stage_code(c.to),
        cause,
        manual,
        reason: c.reason.clone(),
        rule_set_version: c.rule_set_version.clone(),
        total: c.score.total,
        behavior: c.score.behavior,
        fit: c.score.fit,
        grade: u32::from(c.score.grade),
        at: c.at.millis(),
        deal_amount: c.deal_amount,
    }
}

fn stage_of(code: u32) -> Result<Stage, String> {
    Stage::ALL.get(code as usize).copied().ok_or_else(|| format!("stage code {code} is unknown"))
}

fn snapshot(total: f64, behavior: f64, fit: f64, grade: u32) -> ScoreSnapshot {
    ScoreSnapshot { total, behavior, fit, grade: char::from_u32(grade).unwrap_or('D') }
}

fn stage_change(s: StageRecord) -> Result<StageChange, String> {
    Ok(StageChange {
        from: stage_of(s.from)?,
        to: stage_of(s.to)?,
        cause: if s.manual { Cause::Manual { actor: s.cause } } else { Cause::Rule { rule_id: s.cause } },
        reason: s.reason,
        rule_set_version: s.rule_set_version,
        score: snapshot(s.total, s.behavior, s.fit, s.grade),
        at: Timestamp::from_millis(s.at),
        deal_amount: s.deal_amount,
    })
}

/// A fired trigger as the trigger stream keeps it.
#[derive(Clone, PartialEq, Message)]
struct TriggerRecord {
    #[prost(string, tag = "1")]
    definition_id: String,
    #[prost(string, tag = "2")]
    program: String,
    #[prost(string, tag = "3")]
    lead_id: String,
    #[prost(int64, tag = "4")]
    fired_at: i64,
    #[prost(string, tag = "5")]
    reason: String,
    #[prost(double, tag = "6")]
    total: f64,
    #[prost(double, tag = "7")]
    behavior: f64,
    #[prost(double, tag = "8")]
    fit: f64,
    #[prost(uint32, tag = "9")]
    grade: u32,
    #[prost(uint32, tag = "10")]
    stage: u32,
    /// An `sla_breached` trigger's hand-over (tags 11 to 14).
    #[prost(bool, tag = "11")]
    breach: bool,
    #[prost(string, tag = "12")]
    owner: String,
    #[prost(int64, tag = "13")]
    handed_at: i64,
    #[prost(int64, tag = "14")]
    due: i64,
    #[prost(int64, tag = "15")]
    late_by: i64,
}

/// A change feed entry's record (protobuf, like the lead's stage history).
pub fn encode_change(change: &StageChange) -> Vec<u8> {
    stage_record(change).encode_to_vec()
}

/// Errors describe the entry, never quote it.
pub fn decode_change(bytes: &[u8]) -> Result<StageChange, String> {
    stage_change(StageRecord::decode(bytes).map_err(|_| "not a stage change record".to_owned())?)
}

/// A trigger stream entry's payload.
pub fn encode_trigger(t: &FiredTrigger) -> Vec<u8> {
    TriggerRecord {
        definition_id: t.definition_id.clone(),
        program: t.program.clone(),
        lead_id: t.lead_id.clone(),
        fired_at: t.fired_at.millis(),
        reason: t.reason.clone(),
        total: t.score.total,
        behavior: t.score.behavior,
        fit: t.score.fit,
        grade: u32::from(t.score.grade),
        stage: stage_code(t.stage),
        breach: t.breach.is_some(),
        owner: t.breach.as_ref().map(|b| b.owner.clone()).unwrap_or_default(),
        handed_at: t.breach.as_ref().map_or(0, |b| b.handed_at.millis()),
        due: t.breach.as_ref().map_or(0, |b| b.due.millis()),
        late_by: t.breach.as_ref().map_or(0, |b| b.late_by_ms),
    }
    .encode_to_vec()
}

pub fn decode_trigger(bytes: &[u8]) -> Result<FiredTrigger, String> {
    let r = TriggerRecord::decode(bytes).map_err(|_| "not a trigger record".to_owned())?;
    Ok(FiredTrigger {
        definition_id: r.definition_id,
        program: r.program,
        lead_id: r.lead_id,
        fired_at: Timestamp::from_millis(r.fired_at),
        reason: r.reason,
        score: snapshot(r.total, r.behavior, r.fit, r.grade),
        stage: stage_of(r.stage)?,
        breach: r.breach.then(|| Breach {
            owner: r.owner,
            handed_at: Timestamp::from_millis(r.handed_at),
            due: Timestamp::from_millis(r.due),
            late_by_ms: r.late_by,
        }),
    })
}

fn scores_record(scores: &[ModelScore]) -> Vec<ScoreRecord> {
    scores.iter().map(|s| ScoreRecord { model: s.model.clone(), behavior: s.behavior, fit: s.fit }).collect()
}

/// What the stored value starts with: the version as 16 hex digits (the
/// compare-and-set token `apply.lua` reads with `GETRANGE`); empty for
/// version 0 (the lead must not exist).
pub fn version_prefix(version: u64) -> Vec<u8> {
    if version == 0 { Vec::new() } else { format!("{version:016x}").into_bytes() }
}

/// The version and the record of a stored value.
pub fn split_version(value: &[u8]) -> Option<(u64, &[u8])> {
    let (prefix, record) = value.split_at_checked(16)?;
    let version = u64::from_str_radix(std::str::from_utf8(prefix).ok()?, 16).ok()?;
    Some((version, record))
}

/// The record of a lead's state.
pub fn encode(state: &LeadState) -> Vec<u8> {
    let lead = &state.lead;
    let mut models: Vec<String> = Vec::new();
    for tally in lead.tallies.values() {
        for model in tally.sums.keys() {
            if !models.contains(model) {
                models.push(model.clone());
            }
        }
    }
    let mut names: Vec<&String> = lead.tallies.keys().chain(lead.daily.keys()).collect();
    names.sort();
    names.dedup();
    let types = names
        .into_iter()
        .map(|name| {
            let tally = lead.tallies.get(name);
            let days = lead.daily.get(name);
            TypeRecord {
                name: name.clone(),
                counted: tally.map_or(0, |t| t.counted),
                last_at: tally.and_then(|t| t.last_at).map(Timestamp::millis),
                sums: tally
                    .map(|t| models.iter().map(|m| t.sums.get(m).copied().unwrap_or(f64::NAN)).collect())
                    .unwrap_or_default(),
                days: days.map(|d| d.keys().copied().collect()).unwrap_or_default(),
                day_counts: days.map(|d| d.values().copied().collect()).unwrap_or_default(),
            }
        })
        .collect();
    let created = lead.created_at.millis();
    // Fingerprints remembered since their signal's arrival are marked on its
    // history entry instead of listed apart.
    let mut remembered: HashMap<u64, i64> = state.ledger.seen().into_iter().map(|(f, at)| (f, at.millis())).collect();
    let mut seen_in_history = vec![0u8; state.ledger.history().len().div_ceil(8)];
    for (i, h) in state.ledger.history().enumerate() {
        if remembered.get(&h.print) == Some(&h.arrived_at_ms) {
            remembered.remove(&h.print);
            seen_in_history[i / 8] |= 1 << (i % 8);
        }
    }
    if seen_in_history.iter().all(|b| *b == 0) {
        seen_in_history.clear();
    }
    let (seen, seen_at): (Vec<u64>, Vec<i64>) = state
        .ledger
        .seen()
        .into_iter()
        .filter(|(f, _)| remembered.contains_key(f))
        .map(|(f, at)| (f, at.millis()))
        .unzip();
    let mut strings: Vec<String> = Vec::new();
    let mut string_at: HashMap<String, u32> = HashMap::new();
    let mut string_index = |text: &str| -> u32 {
        if let Some(i) = string_at.get(text) {
            return *i;
        }
        strings.push(text.to_owned());
        string_at.insert(text.to_owned(), (strings.len() - 1) as u32);
        (strings.len() - 1) as u32
    };
    let mut signal_types: Vec<String> = Vec::new();
    let mut type_index = |name: &str| -> u32 {
        match signal_types.iter().position(|t| t == name) {
            Some(i) => i as u32,
            None => {
                signal_types.push(name.to_owned());
                (signal_types.len() - 1) as u32
            }
        }
    };
    let history: Vec<SignalRecord> = state
        .ledger
        .history()
        .map(|h| SignalRecord {
            print: h.print,
            type_index: type_index(&h.signal_type),
            occurred_at: h.occurred_at_ms - created,
            arrived_after: h.arrived_at_ms - h.occurred_at_ms,
            properties: BTreeMap::new(),
            property_refs: h.properties.iter().flat_map(|(k, v)| [string_index(k), string_index(v)]).collect(),
        })
        .collect();
    let created_day = lead.created_at.utc_day();
    let mut shares = Shares::default();
    for (i, ((day, group, counter), by)) in state.contributions.funnel.iter().enumerate() {
        shares.days.push(day - created_day);
        shares.groups.push(string_index(group));
        shares.counters.push(string_index(&super::codec::funnel_field("", *counter)));
        if by.fract() == 0.0 && by.abs() < 9e15 {
            shares.wholes.push(*by as i64);
        } else {
            shares.wholes.push(0);
            shares.fraction_at.push(i as u32);
            shares.fractions.push(*by);
        }
    }
    let journey = &state.journey;
    let touches: Vec<TouchRecord> = journey
        .touches
        .iter()
        .map(|t| TouchRecord {
            at: t.at.millis() - created,
            values: t.values.iter().map(|v| string_index(v)).collect(),
        })
        .collect();
    let (reached_stages, reached_at): (Vec<u32>, Vec<i64>) = journey
        .reached
        .iter()
        .enumerate()
        .filter_map(|(i, at)| Some((i as u32, at.as_ref()?.millis() - created)))
        .unzip();
    let deals = journey
        .deals
        .iter()
        .map(|d| DealRecord { at: d.at.millis() - created, micros: d.micros, expansion: d.expansion })
        .collect();
    let expansion = state
        .expansion
        .iter()
        .map(|d| ExpansionRecord {
            id: d.id.clone(),
            kind: match d.kind {
                Kind::Upsell => 1,
                Kind::CrossSell => 2,
            },
            status: match d.status {
                Status::Open => 1,
                Status::Won => 2,
                Status::Lost => 3,
            },
            micros: d.micros,
            opened_at: d.opened_at.millis() - created,
            closed_at: d.closed_at.map(|t| t.millis() - created),
        })
        .collect();
    let mut score_models: Vec<String> = Vec::new();
    for entry in &state.score_history {
        for s in &entry.scores {
            if !score_models.contains(&s.model) {
                score_models.push(s.model.clone());
            }
        }
    }
    let score_history = state
        .score_history
        .iter()
        .map(|e| {
            let signal_type = e.cause.strip_prefix("signal:").map_or(0, |t| type_index(t) + 1);
            let mut hundredths = Vec::with_capacity(score_models.len() * 2);
            for model in &score_models {
                let s = e.scores.iter().find(|s| &s.model == model);
                hundredths.push(s.map_or(i64::MIN, |s| (s.behavior * 100.0).round() as i64));
                hundredths.push(s.map_or(i64::MIN, |s| (s.fit * 100.0).round() as i64));
            }
            ScoreEntryRecord {
                at: e.at.millis() - created,
                signal_type,
                cause: if signal_type == 0 { e.cause.clone() } else { String::new() },
                hundredths,
            }
        })
        .collect();
    let record = LeadRecord {
        format: FORMAT,
        created_at: lead.created_at.millis(),
        stage: stage_code(lead.stage),
        stage_since: lead.stage_since.millis(),
        last_engaged_at: lead.last_engaged_at.map(Timestamp::millis),
        recorded: lead.recorded,
        merged_into: lead.merged_into.as_ref().map(|id| id.as_str().to_owned()),
        account_id: lead.account_id.as_ref().map(|id| id.as_str().to_owned()),
        attributes: lead.attributes.clone(),
        trigger_fired: lead.trigger_fired.iter().map(|(k, v)| (k.clone(), v.millis())).collect(),
        models,
        types,
        seen,
        seen_at,
        history,
        stages: state.stages.iter().map(stage_record).collect(),
        cohort: state.cohort.as_ref().map(|c| CohortRecord {
            month: c.month.key(),
            stage: stage_code(c.stage),
            reached_mql: c.reached_mql,
            groups: c.groups.clone(),
            scores: scores_record(&c.scores),
        }),
        first_touch_at: state.first_touch.as_ref().map(|t| t.at.millis()),
        first_touch: state.first_touch.as_ref().map(|t| t.values.to_vec()).unwrap_or_default(),
        funnel_reached: state.funnel_reached as u32,
        reached_mql: state.reached_mql,
        untouched_at: state.untouched_creation.map(|(at, _)| at.millis()),
        untouched_stage: state.untouched_creation.map_or(0, |(_, s)| stage_code(s)),
        score_history,
        score_models,
        signal_types,
        strings,
        seen_in_history,
        touches,
        reached_stages,
        reached_at,
        deals,
        deals_won: journey.deals_won,
        credit_half_life_ms: journey.half_life_ms,
        journey_settled: journey.settled,
        handed_at: state.handover.map(|h| h.handed_at.millis()),
        handover_due: state.handover.map_or(0, |h| h.due.millis()),
        handover_breached: state.handover.is_some_and(|h| h.breached),
        expansion,
        contributions_kept: state.contributions.complete,
        share_days: shares.days,
        share_groups: shares.groups,
        share_counters: shares.counters,
        share_wholes: shares.wholes,
        share_fraction_at: shares.fraction_at,
        share_fractions: shares.fractions,
        credits_kept: state.contributions.credits_kept,
        credit_shares: state
            .contributions
            .credits
            .iter()
            .map(|((day, model, group, counter), by)| CreditShare {
                day: *day,
                model: model.key().to_owned(),
                field: super::codec::credit_field(group, *counter),
                by: *by,
            })
            .collect(),
        visitors: state.visitors.iter().map(|v| v.as_str().to_owned()).collect(),
    };
    record.encode_to_vec()
}

/// A lead's state from its record and version.
pub fn decode(lead_id: &LeadId, version: u64, bytes: &[u8]) -> Result<LeadState, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { lead_id: lead_id.to_string(), detail };
    let r = LeadRecord::decode(bytes).map_err(|e| corrupt(format!("record: {e}")))?;
    if r.format != FORMAT {
        return Err(corrupt(format!("record format {} (this build reads {FORMAT})", r.format)));
    }
    let stage = |code: u32| stage_of(code).map_err(corrupt);
    let at = Timestamp::from_millis;
    let mut lead = LeadSnapshot::new(lead_id.clone(), at(r.created_at));
    lead.stage = stage(r.stage)?;
    lead.stage_since = at(r.stage_since);
    lead.last_engaged_at = r.last_engaged_at.map(at);
    lead.recorded = r.recorded;
    lead.merged_into =
        r.merged_into.map(LeadId::from_stored).transpose().map_err(|e| corrupt(format!("merged-into id {e}")))?;
    lead.account_id = r.account_id.map(AccountId::parse).transpose().map_err(|e| corrupt(format!("account id {e}")))?;
    lead.attributes = r.attributes;
    lead.trigger_fired = r.trigger_fired.into_iter().map(|(k, v)| (k, at(v))).collect();
    for t in r.types {
        if t.counted > 0 || t.last_at.is_some() || !t.sums.is_empty() {
            if t.counted > 0 && t.last_at.is_none() {
                return Err(corrupt(format!("type '{}' has counted signals but no anchor time", t.name)));
            }
            let mut sums = BTreeMap::new();
            for (model, sum) in r.models.iter().zip(&t.sums) {
                if !sum.is_nan() {
                    if !sum.is_finite() {
                        return Err(corrupt(format!("type '{}' has a sum that is not finite", t.name)));
                    }
                    sums.insert(model.clone(), *sum);
                }
            }
            lead.tallies.insert(t.name.clone(), TypeTally { counted: t.counted, last_at: t.last_at.map(at), sums });
        }
        if !t.days.is_empty() {
            if t.days.len() != t.day_counts.len() {
                return Err(corrupt(format!("type '{}' has unmatched day counters", t.name)));
            }
            lead.daily.insert(t.name, t.days.into_iter().zip(t.day_counts).collect());
        }
    }
    if r.seen.len() != r.seen_at.len() {
        return Err(corrupt("unmatched event fingerprints".into()));
    }
    let created = r.created_at;
    let type_name = |i: u32| {
        r.signal_types.get(i as usize).cloned().ok_or_else(|| corrupt(format!("signal type index {i} is unknown")))
    };
    let string = |i: &u32| {
        r.strings.get(*i as usize).cloned().ok_or_else(|| corrupt(format!("property string index {i} is unknown")))
    };
    let history: VecDeque<HistoryEntry> = r
        .history
        .into_iter()
        .map(|h| {
            let occurred = created.saturating_add(h.occurred_at);
            if h.property_refs.len() % 2 != 0 {
                return Err(corrupt("a property without its value".into()));
            }
            let mut properties = h.properties;
            for pair in h.property_refs.chunks(2) {
                properties.insert(string(&pair[0])?, string(&pair[1])?);
            }
            Ok(HistoryEntry {
                print: h.print,
                signal_type: type_name(h.type_index)?,
                occurred_at_ms: occurred,
                properties,
                arrived_at_ms: occurred.saturating_add(h.arrived_after),
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let from_history = history
        .iter()
        .enumerate()
        .filter(|(i, _)| r.seen_in_history.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
        .map(|(_, h)| (h.print, at(h.arrived_at_ms)));
    let score_history: VecDeque<ScoreHistoryEntry> = r
        .score_history
        .into_iter()
        .map(|e| {
            if e.hundredths.len() != 2 * r.score_models.len() {
                return Err(corrupt("score history entry without every model".into()));
            }
            let cause = match e.signal_type {
                0 => e.cause,
                i => format!("signal:{}", type_name(i - 1)?),
            };
            let scores = r
                .score_models
                .iter()
                .zip(e.hundredths.chunks(2))
                .filter(|(_, v)| v[0] != i64::MIN && v[1] != i64::MIN)
                .map(|(model, v)| ModelScore {
                    model: model.clone(),
                    behavior: v[0] as f64 / 100.0,
                    fit: v[1] as f64 / 100.0,
                })
                .collect();
            Ok(ScoreHistoryEntry { at: at(created.saturating_add(e.at)), cause, scores })
        })
        .collect::<Result<_, StoreError>>()?;
    let seen: Vec<(u64, Timestamp)> =
        r.seen.into_iter().zip(r.seen_at.into_iter().map(at)).chain(from_history).collect();
    let ledger = LeadLedger::from_parts(seen, history);
    let stages = r.stages.into_iter().map(|s| stage_change(s).map_err(corrupt)).collect::<Result<VecDeque<_>, _>>()?;
    let scores = |list: Vec<ScoreRecord>| -> Vec<ModelScore> {
        list.into_iter().map(|s| ModelScore { model: s.model, behavior: s.behavior, fit: s.fit }).collect()
    };
    let cohort = match r.cohort {
        Some(c) => Some(CohortPlace {
            month: Month::parse_key(&c.month).ok_or_else(|| corrupt(format!("cohort month '{}'", c.month)))?,
            stage: stage(c.stage)?,
            reached_mql: c.reached_mql,
            groups: c.groups,
            scores: scores(c.scores),
        }),
        None => None,
    };
    let first_touch = match (r.first_touch_at, <[String; 3]>::try_from(r.first_touch)) {
        (Some(t), Ok(values)) => Some(FirstTouch { at: at(t), values }),
        (None, _) => None,
        (Some(_), Err(_)) => return Err(corrupt("first touch without its three values".into())),
    };
    let untouched_creation = match r.untouched_at {
        Some(t) => Some((at(t), stage(r.untouched_stage)?)),
        None => None,
    };
    let mut journey = Journey { deals_won: r.deals_won, half_life_ms: r.credit_half_life_ms, ..Journey::default() };
    for t in &r.touches {
        let values: Vec<String> = t.values.iter().map(string).collect::<Result<_, _>>()?;
        let values = <[String; 3]>::try_from(values).map_err(|_| corrupt("a touch without its three values".into()))?;
        journey.touches.push(Touch { at: at(created.saturating_add(t.at)), values });
    }
    if r.reached_stages.len() != r.reached_at.len() {
        return Err(corrupt("unmatched stages reached".into()));
    }
    for (i, t) in r.reached_stages.iter().zip(&r.reached_at) {
        let slot = journey.reached.get_mut(*i as usize).ok_or_else(|| corrupt(format!("credited stage index {i}")))?;
        *slot = Some(at(created.saturating_add(*t)));
    }
    journey.deals = r
        .deals
        .iter()
        .map(|d| WonDeal { at: at(created.saturating_add(d.at)), micros: d.micros, expansion: d.expansion })
        .collect();
    let mut expansion = Vec::with_capacity(r.expansion.len());
    for d in r.expansion {
        let kind = match d.kind {
            1 => Kind::Upsell,
            2 => Kind::CrossSell,
            k => return Err(corrupt(format!("expansion deal kind {k}"))),
        };
        let status = match d.status {
            1 => Status::Open,
            2 => Status::Won,
            3 => Status::Lost,
            s => return Err(corrupt(format!("expansion deal status {s}"))),
        };
        expansion.push(ExpansionDeal {
            id: d.id,
            kind,
            status,
            micros: d.micros,
            opened_at: at(created.saturating_add(d.opened_at)),
            closed_at: d.closed_at.map(|t| at(created.saturating_add(t))),
        });
    }
    journey.settled = r.journey_settled;
    let mut contributions =
        Contributions { complete: r.contributions_kept, credits_kept: r.credits_kept, ..Default::default() };
    let n = r.share_days.len();
    if [r.share_groups.len(), r.share_counters.len(), r.share_wholes.len()].iter().any(|l| *l != n)
        || r.share_fraction_at.len() != r.share_fractions.len()
    {
        return Err(corrupt("unmatched funnel shares".into()));
    }
    let created_day = Timestamp::from_millis(r.created_at).utc_day();
    let mut amounts: Vec<f64> = r.share_wholes.iter().map(|w| *w as f64).collect();
    for (i, v) in r.share_fraction_at.iter().zip(&r.share_fractions) {
        *amounts.get_mut(*i as usize).ok_or_else(|| corrupt("a funnel share's amount".into()))? = *v;
    }
    for (i, amount) in amounts.into_iter().enumerate() {
        let group = string(&r.share_groups[i])?;
        let counter = string(&r.share_counters[i])?;
        let (_, counter) =
            super::codec::parse_funnel_field(&counter).ok_or_else(|| corrupt("an unreadable funnel share".into()))?;
        contributions.funnel.insert((created_day + r.share_days[i], group, counter), amount);
    }
    for share in r.credit_shares {
        let model = Model::parse_key(&share.model).ok_or_else(|| corrupt("a credit share's model".into()))?;
        let (group, counter) = super::codec::parse_credit_field(&share.field)
            .ok_or_else(|| corrupt("an unreadable credit share".into()))?;
        contributions.credits.insert((share.day, model, group.to_owned(), counter), share.by);
    }
    let visitors = r
        .visitors
        .into_iter()
        .map(|v| LeadId::from_stored(v).map_err(|e| corrupt(format!("a merged visitor's id: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LeadState {
        contributions,
        visitors,
        journey,
        lead,
        version,
        ledger,
        stages,
        cohort,
        first_touch,
        funnel_reached: r.funnel_reached as usize,
        reached_mql: r.reached_mql,
        untouched_creation,
        score_history,
        handover: r.handed_at.map(|t| Pending {
            handed_at: at(t),
            due: at(r.handover_due),
            breached: r.handover_breached,
        }),
        expansion,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A raw history entry: fingerprint, arrival (ms after creation),
    /// properties (name and value numbers).
    type Entry = (u64, i64, Vec<(u8, u8)>);

    /// A lead whose ledger holds `history` (newest first) and remembers
    /// `seen`.
    fn lead_with(history: Vec<Entry>, seen: Vec<(u64, i64)>) -> LeadState {
        let id = LeadId::parse("lead-1").unwrap();
        let created = Timestamp::from_millis(1_764_000_000_000);
        let mut state = LeadState::new(LeadSnapshot::new(id, created));
        let history = history
            .into_iter()
            .map(|(print, arrived, properties)| HistoryEntry {
                print,
                signal_type: "page_view".into(),
                occurred_at_ms: created.millis() + arrived - 5,
                properties: properties
                    .into_iter()
                    .map(|(k, v)| (format!("key{}", k % 4), format!("https://example.com/{}", v % 6)))
                    .collect(),
                arrived_at_ms: created.millis() + arrived,
            })
            .collect();
        let seen = seen.into_iter().map(|(p, at)| (p, Timestamp::from_millis(created.millis() + at)));
        state.ledger = LeadLedger::from_parts(seen, history);
        state.version = 7;
        state
    }

    proptest! {
        /// Fingerprints kept as history marks or apart, property strings
        /// shared: the ledger reads back as it was.
        #[test]
        fn ledgers_round_trip(
            history in proptest::collection::vec((0u64..40, 0i64..100_000, proptest::collection::vec((0u8..8, 0u8..8), 0..4)), 0..24),
            marks in proptest::collection::vec(0u8..3, 24),
            extra in proptest::collection::vec((40u64..80, 0i64..100_000), 0..6),
        ) {
            // Each history print remembered at its arrival, at another time,
            // or not at all; other prints remembered on their own.
            let mut seen: Vec<(u64, i64)> = Vec::new();
            for ((print, arrived, _), mark) in history.iter().zip(&marks) {
                if seen.iter().any(|(p, _)| p == print) {
                    continue;
                }
                match mark {
                    0 => seen.push((*print, *arrived)),
                    1 => seen.push((*print, arrived + 1)),
                    _ => {}
                }
            }
            seen.extend(extra);
            seen.sort();
            seen.dedup_by_key(|(p, _)| *p);
            let state = lead_with(history, seen);
            let bytes = encode(&state);
            let back = decode(&state.lead.lead_id, state.version, &bytes).unwrap();
            prop_assert_eq!(back.ledger.seen(), state.ledger.seen());
            prop_assert_eq!(back, state);
        }
    }

    proptest! {
        /// Touches share the property strings; stages reached, deals and
        /// a pending hand-over read back as they were.
        #[test]
        fn journeys_round_trip(
            touches in proptest::collection::vec((-100_000i64..10_000_000_000, 0u8..5, 0u8..3), 0..40),
            reached in proptest::collection::vec(proptest::option::of(-1_000i64..1_000_000), 5),
            deals in proptest::collection::vec((0i64..1_000_000, 0i64..=1_000_000_000_000_000), 0..12),
            deals_open in proptest::collection::vec((-1_000i64..1_000_000, 0i64..=1_000_000_000_000_000), 0..16),
            handover in proptest::option::of((-1_000i64..1_000_000, 0i64..1_000_000, any::<bool>())),
        ) {
            let mut state = lead_with(vec![(1, 10, vec![(1, 1)])], Vec::new());
            let created = state.lead.created_at;
            for (at, campaign, source) in touches {
                let values = [format!("https://example.com/{source}"), "(none)".to_owned(), format!("c{campaign}")];
                state.journey.add_touch(Touch { at: created.plus_millis(at), values });
            }
            for (slot, at) in state.journey.reached.iter_mut().zip(reached) {
                *slot = at.map(|at| created.plus_millis(at));
            }
            for (at, micros) in deals {
                state.journey.won(created.plus_millis(at), micros, at % 2 == 0);
            }
            for (i, (at, micros)) in deals_open.into_iter().enumerate() {
                let status = [Status::Open, Status::Won, Status::Lost][i % 3];
                let kind = if i % 2 == 0 { Kind::Upsell } else { Kind::CrossSell };
                let closed_at = (status != Status::Open).then(|| created.plus_millis(at + 1000));
                state.expansion.push(ExpansionDeal { id: format!("opp-{i}"), kind, status, micros, opened_at: created.plus_millis(at), closed_at });
            }
            state.journey.half_life_ms = 3 * 86_400_000;
            state.handover = handover.map(|(handed, within, breached)| Pending {
                handed_at: created.plus_millis(handed),
                due: created.plus_millis(handed + within),
                breached,
            });
            let back = decode(&state.lead.lead_id, state.version, &encode(&state)).unwrap();
            prop_assert_eq!(back, state);
        }
    }

    #[test]
    fn records_written_with_properties_inline_still_read() {
        let history = (0..10).map(|i| (i, 1_000 * i as i64, vec![(1, 2), (3, 4)])).collect();
        let state = lead_with(history, vec![(3, 3_000), (99, 5)]);
        let mut record = LeadRecord::decode(encode(&state).as_slice()).unwrap();
        assert_eq!(record.strings.len(), 4, "each name and value once");
        assert_eq!(record.seen, [99], "only the print no history entry covers is listed");
        for h in &mut record.history {
            for pair in h.property_refs.chunks(2) {
                h.properties.insert(record.strings[pair[0] as usize].clone(), record.strings[pair[1] as usize].clone());
            }
            h.property_refs.clear();
        }
        record.strings.clear();
        let back = decode(&state.lead.lead_id, state.version, &record.encode_to_vec()).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn stream_entries_round_trip_and_junk_is_refused() {
        let score = ScoreSnapshot { total: 41.25, behavior: 30.5, fit: 10.75, grade: 'B' };
        for (cause, deal_amount) in [
            (Cause::Rule { rule_id: "mql".into() }, None),
            (Cause::Manual { actor: "jane@crm".into() }, Some(12_500.5)),
        ] {
            let change = StageChange {
                from: Stage::Lead,
                to: Stage::Customer,
                cause,
                reason: "won".into(),
                rule_set_version: "2026.11.1".into(),
                score: score.clone(),
                at: Timestamp::from_millis(1_764_000_000_123),
                deal_amount,
            };
            assert_eq!(decode_change(&encode_change(&change)), Ok(change));
        }
        let trigger = FiredTrigger {
            definition_id: "sales_alert".into(),
            program: "sales-alert".into(),
            lead_id: "lead-42".into(),
            fired_at: Timestamp::from_millis(1_764_000_000_456),
            reason: "entered MQL".into(),
            score,
            stage: Stage::Mql,
            breach: None,
        };
        assert_eq!(decode_trigger(&encode_trigger(&trigger)), Ok(trigger.clone()));
        let breach = Breach {
            owner: "jane@crm".into(),
            handed_at: Timestamp::from_millis(1_764_000_000_000),
            due: Timestamp::from_millis(1_764_086_400_000),
            late_by_ms: 31_000,
        };
        let breached = FiredTrigger { breach: Some(breach), ..trigger };
        assert_eq!(decode_trigger(&encode_trigger(&breached)), Ok(breached));
        assert!(decode_change(b"\xff\xff\xff").is_err());
        assert!(decode_trigger(b"{\"json\": true}").is_err());
    }
}
