//! `leadscore.v1.Profiles`: score profiles, cohort figures, the funnel and
//! account scores.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, grade_to_proto, round_points, score_to_proto, stage_change_to_proto, timestamp_to_proto};
use super::error::{self, ApiError, Violations};
use super::pb::{self, profiles_server::Profiles};
use super::qualification::{MAX_ACTOR_BYTES, MAX_REASON_BYTES};
use super::state::AppState;
use crate::domain::attribution::Model;
use crate::domain::profiles::{CohortQuery, Funnel, FunnelGroupBy, Month, NO_VALUE};
use crate::domain::spend::{CampaignRow, Micros, SpendEntry};
use crate::domain::time::MILLIS_PER_DAY;
use crate::domain::{Stage, Timestamp};
use crate::engine::accounts;
use crate::engine::profiles::{self, ScoreProfile};
use crate::engine::spend;
use crate::rules::RuleSet;

const DEFAULT_HISTORY: u32 = 20;
const MAX_HISTORY: u32 = 1000;
/// Recent signals a score profile returns, at most.
const MAX_RECENT_SIGNALS: u32 = 100;
const DEFAULT_BUCKETS: u32 = 10;
const MAX_BUCKETS: u32 = 100;
/// Longest cohort period, in months.
pub const MAX_COHORT_MONTHS: i64 = 36;
/// Longest funnel period, in days.
pub const MAX_FUNNEL_DAYS: i64 = 400;
/// Leads listed in `top_leads`.
const TOP_LEADS: usize = 5;

pub struct ProfilesService {
    state: Arc<AppState>,
}

/// Hand-overs `ListHandovers` returns by default, and at most.
const DEFAULT_HANDOVERS: u32 = 50;
const MAX_HANDOVERS: u32 = 500;

impl ProfilesService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The model's name (the primary's for ""), or a violation.
fn check_model(rules: &RuleSet, model: &str, v: &mut Violations) -> String {
    super::scoring::check_model(rules, model, v);
    rules.model(model).map(|m| m.name.clone()).unwrap_or_default()
}

fn required_time(ts: Option<&pbjson_types::Timestamp>, field: &str, v: &mut Violations) -> Option<Timestamp> {
    match ts {
        None => {
            v.add(field, "required");
            None
        }
        Some(ts) => convert::timestamp_from_proto(ts).map_err(|e| v.add(field, e)).ok(),
    }
}

fn required_month(ts: Option<&pbjson_types::Timestamp>, field: &str, v: &mut Violations) -> Option<Month> {
    let at = required_time(ts, field, v)?;
    let month = Month::starting_at(at);
    if month.is_none() {
        let start = Month::of(at).start();
        v.add(
            field,
            format!("cohorts are whole UTC months: give the first instant of a month, e.g. {}", rfc3339(start)),
        );
    }
    month
}

fn required_day(ts: Option<&pbjson_types::Timestamp>, field: &str, v: &mut Violations) -> Option<i64> {
    let at = required_time(ts, field, v)?;
    if at.millis().rem_euclid(MILLIS_PER_DAY) != 0 {
        v.add(field, "periods are whole UTC days: give midnight UTC, e.g. 2026-11-01T00:00:00Z");
        return None;
    }
    Some(at.utc_day())
}

/// Whole UTC days `from..to` (at most `MAX_FUNNEL_DAYS`).
fn days(
    from: Option<&pbjson_types::Timestamp>,
    to: Option<&pbjson_types::Timestamp>,
    v: &mut Violations,
) -> (Option<i64>, Option<i64>) {
    let from = required_day(from, "from", v);
    let to = required_day(to, "to", v);
    if let (Some(from), Some(to)) = (from, to) {
        if to <= from {
            v.add("to", "must be after from");
        } else if to - from > MAX_FUNNEL_DAYS {
            v.add("to", format!("a period spans at most {MAX_FUNNEL_DAYS} days"));
        }
    }
    (from, to)
}

/// `None` for UNSPECIFIED.
fn group_by(value: i32, v: &mut Violations) -> Option<FunnelGroupBy> {
    match pb::FunnelGroupBy::try_from(value) {
        Ok(pb::FunnelGroupBy::Unspecified) => None,
        Ok(pb::FunnelGroupBy::Source) => Some(FunnelGroupBy::Source),
        Ok(pb::FunnelGroupBy::Channel) => Some(FunnelGroupBy::Channel),
        Ok(pb::FunnelGroupBy::Campaign) => Some(FunnelGroupBy::Campaign),
        Err(_) => {
            v.add("group_by", format!("unknown value {value}"));
            None
        }
    }
}

/// Longest campaign, source or channel name in spend, in bytes.
const MAX_SPEND_NAME: usize = 256;

/// A campaign, source or channel name; empty is `(none)` unless required.
fn spend_name(raw: String, field: String, required: bool, v: &mut Violations) -> Option<String> {
    if raw.is_empty() {
        if required {
            v.add(field, "required");
            return None;
        }
        return Some(NO_VALUE.to_owned());
    }
    if raw.len() > MAX_SPEND_NAME {
        v.add(field, format!("at most {MAX_SPEND_NAME} bytes (got {})", raw.len()));
        return None;
    }
    if raw.chars().any(char::is_control) {
        v.add(field, "no control characters");
        return None;
    }
    Some(raw)
}

/// A `YYYY-MM-DD` UTC day, as days since the epoch.
fn spend_day(raw: &str, field: String, v: &mut Violations) -> Option<i64> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    match chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(day) if raw.len() == 10 && day >= epoch => Some(day.signed_duration_since(epoch).num_days()),
        _ => {
            v.add(field, format!("a UTC day from 1970-01-01, YYYY-MM-DD (got '{}')", error::bounded(raw, 32)));
            None
        }
    }
}

fn spend_entries(spend: Vec<pb::SpendEntry>, currency: &str, max: usize) -> Result<Vec<SpendEntry>, ApiError> {
    let mut v = Violations::default();
    if spend.is_empty() {
        v.add("spend", "send at least one entry");
    }
    if spend.len() > max {
        v.add("spend", format!("at most {max} entries per call (got {})", spend.len()));
        return v.into_result(Vec::new());
    }
    let mut seen = std::collections::HashSet::new();
    let mut entries = Vec::with_capacity(spend.len());
    for (i, e) in spend.into_iter().enumerate() {
        let field = |name: &str| format!("spend[{i}].{name}");
        let campaign = spend_name(e.campaign, field("campaign"), true, &mut v);
        let source = spend_name(e.source, field("source"), false, &mut v);
        let channel = spend_name(e.channel, field("channel"), false, &mut v);
        let day = spend_day(&e.day, field("day"), &mut v);
        let amount = Micros::parse(&e.amount).map_err(|why| v.add(field("amount"), format!("amount {why}"))).ok();
        if !e.currency.is_empty() && e.currency != currency {
            v.add(
                field("currency"),
                format!(
                    "this deployment records amounts in {currency} (got '{}'): convert before sending",
                    error::bounded(&e.currency, 16)
                ),
            );
        }
        if let (Some(c), Some(s), Some(ch), Some(d)) = (&campaign, &source, &channel, day)
            && !seen.insert((c.clone(), s.clone(), ch.clone(), d))
        {
            v.add(field("day"), "the campaign's day through this source and channel is already in this call");
        }
        if let (Some(campaign), Some(source), Some(channel), Some(day), Some(amount)) =
            (campaign, source, channel, day, amount)
        {
            entries.push(SpendEntry { campaign, source, channel, day, amount });
        }
    }
    v.into_result(entries)
}

/// Money to the cent, as reported.
fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn campaign_row_to_proto(r: &CampaignRow) -> pb::CampaignRow {
    pb::CampaignRow {
        value: r.value.clone(),
        spend: r.spend.units(),
        leads: millionths(r.leads),
        mqls: millionths(r.mqls),
        sqls: millionths(r.sqls),
        opportunities: millionths(r.opportunities),
        customers: millionths(r.customers),
        won_revenue: cents(r.won_revenue),
        cost_per_lead: r.cost_per_lead().map(cents),
        cost_per_mql: r.cost_per_mql().map(cents),
        cost_per_sql: r.cost_per_sql().map(cents),
        cost_per_opportunity: r.cost_per_opportunity().map(cents),
        cost_per_customer: r.cost_per_customer().map(cents),
        roi: r.roi().map(|x| (x * 10_000.0).round() / 10_000.0),
        expansion_revenue: cents(r.expansion_revenue),
    }
}

fn model_to_proto(model: Model) -> pb::AttributionModel {
    match model {
        Model::FirstTouch => pb::AttributionModel::FirstTouch,
        Model::LastTouch => pb::AttributionModel::LastTouch,
        Model::Linear => pb::AttributionModel::Linear,
        Model::TimeDecay => pb::AttributionModel::TimeDecay,
        Model::PositionBased => pb::AttributionModel::PositionBased,
    }
}

/// Shares of leads to the millionth, as kept.
fn millionths(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn funnel_to_proto(funnel: &Funnel) -> pb::Funnel {
    pb::Funnel {
        stages: Stage::ALL
            .iter()
            .map(|&stage| pb::StageEntries {
                stage: convert::stage_to_proto(stage).into(),
                entered: funnel.entered.get(&stage).copied().unwrap_or(0),
                reached: funnel.passed.get(&stage).copied().unwrap_or(0),
                median_time_to_stage: funnel.median_time_to(stage).map(convert::duration_to_proto),
            })
            .collect(),
        conversions: funnel
            .conversions()
            .into_iter()
            .map(|(from, to, rate)| pb::Conversion {
                from: convert::stage_to_proto(from).into(),
                to: convert::stage_to_proto(to).into(),
                rate: round_rate(rate),
            })
            .collect(),
        reopened_leads: funnel.reopened,
        won_revenue: round_points(funnel.won_revenue),
        won_deals: funnel.won_deals,
        handovers_on_time: funnel.handovers_on_time,
        handovers_late: funnel.handovers_late,
        sla_attainment: funnel.sla_attainment().map(round_rate),
        speed_to_lead_median: funnel.speed_to_lead(0.5).map(convert::duration_to_proto),
        speed_to_lead_p90: funnel.speed_to_lead(0.9).map(convert::duration_to_proto),
        sla_breaches: funnel.sla_breaches,
        expansion: funnel
            .expansion
            .iter()
            .filter(|(_, e)| !e.is_empty())
            .map(|(kind, e)| pb::ExpansionFunnel {
                kind: convert::expansion_kind_to_proto(*kind).into(),
                opened: e.opened,
                pipeline: cents(e.pipeline),
                won: e.won,
                revenue: cents(e.revenue),
                lost: e.lost,
            })
            .collect(),
        expansion_revenue: cents(funnel.expansion_total().revenue),
    }
}

fn round_rate(rate: f64) -> f64 {
    (rate * 10_000.0).round() / 10_000.0
}

#[tonic::async_trait]
impl Profiles for ProfilesService {
    #[tracing::instrument(name = "GetScoreProfile", skip_all, fields(lead_id))]
    async fn get_score_profile(
        &self,
        request: Request<pb::GetScoreProfileRequest>,
    ) -> Result<Response<pb::GetScoreProfileResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = convert::lead_id(req.lead_id, "lead_id", &mut v);
        let rules = self.state.rules();
        let model = check_model(&rules, &req.model, &mut v);
        if req.history_limit > MAX_HISTORY {
            v.add("history_limit", format!("at most {MAX_HISTORY}"));
        }
        if req.signal_limit > MAX_RECENT_SIGNALS {
            v.add("signal_limit", format!("at most {MAX_RECENT_SIGNALS}"));
        }
        let Some(lead_id) = v.into_result(lead_id)? else { return Err(Status::internal("missing lead id")) };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));
        let limit = if req.history_limit == 0 { DEFAULT_HISTORY } else { req.history_limit } as usize;
        let signal_limit = req.signal_limit as usize;
        let ScoreProfile { lead, history, stages, signals } =
            profiles::score_profile(&self.state, &lead_id, limit, signal_limit)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::NotFound(format!("lead '{lead_id}' was never seen")))?;
        let now = self.state.clock.now();
        let m = rules.model(&model).unwrap_or_else(|| rules.primary());
        let score = m.score(&lead, now);
        let score_history = history
            .iter()
            .filter_map(|entry| {
                let s = entry.score(&model)?;
                Some(pb::ScoreHistoryEntry {
                    at: Some(timestamp_to_proto(entry.at)),
                    total: round_points(s.total()),
                    behavior: round_points(s.behavior),
                    fit: round_points(s.fit),
                    cause: entry.cause.clone(),
                })
            })
            .collect();
        Ok(Response::new(pb::GetScoreProfileResponse {
            stage: convert::stage_to_proto(lead.stage).into(),
            grade: grade_to_proto(score.grade).into(),
            score: Some(score_to_proto(&lead, &score, &rules.version)),
            score_history,
            stage_history: stages.iter().map(stage_change_to_proto).collect(),
            recent_signals: signals.iter().map(kept_signal).collect(),
        }))
    }

    #[tracing::instrument(name = "ExportLead", skip_all, fields(lead_id))]
    async fn export_lead(
        &self,
        request: Request<pb::ExportLeadRequest>,
    ) -> Result<Response<pb::ExportLeadResponse>, Status> {
        let token = crate::api::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = convert::subject(req.lead_id, req.visitor_id, "", &mut v);
        let Some(lead_id) = v.into_result(lead_id)? else { return Err(Status::internal("missing lead id")) };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));
        let export = profiles::export(&self.state, &lead_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("lead '{lead_id}' was never seen")))?;
        let rules = self.state.rules();
        let now = self.state.clock.now();
        // Who read a person's whole record is worth answering for too.
        let event = crate::engine::audit::event(&self.state, "lead.exported", "", &token, lead_id.as_str(), &[]);
        crate::engine::audit::record(&self.state, event).await;
        Ok(Response::new(export_to_proto(&export, &rules, now)))
    }

    #[tracing::instrument(name = "ForgetLead", skip_all)]
    async fn forget_lead(
        &self,
        request: Request<pb::ForgetLeadRequest>,
    ) -> Result<Response<pb::ForgetLeadResponse>, Status> {
        let token = crate::api::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = convert::subject(req.lead_id, req.visitor_id, "", &mut v);
        let actor = erasure_actor(&req.actor, &req.reason, &mut v);
        let Some(lead_id) = v.into_result(lead_id)? else { return Err(Status::internal("missing lead id")) };
        let requested = crate::engine::erasure::Requested::by_request(actor, &token, !req.reason.trim().is_empty());
        let receipt =
            crate::engine::erasure::forget(&self.state, &lead_id, &requested).await.map_err(ApiError::from)?;
        Ok(Response::new(receipt_to_proto(&receipt)))
    }

    #[tracing::instrument(name = "ForgetLeads", skip_all)]
    async fn forget_leads(
        &self,
        request: Request<pb::ForgetLeadsRequest>,
    ) -> Result<Response<pb::ForgetLeadsResponse>, Status> {
        let token = crate::api::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let max = self.state.limits.max_batch_size;
        let asked = req.lead_ids.len() + req.visitor_ids.len();
        if asked == 0 || asked > max {
            v.add("lead_ids", format!("1 to {max} leads and visitors per call (got {asked})"));
        }
        let mut subjects: Vec<crate::domain::LeadId> = Vec::with_capacity(asked.min(max));
        if asked <= max {
            for (i, raw) in req.lead_ids.into_iter().enumerate() {
                subjects.extend(convert::lead_id(raw, &format!("lead_ids[{i}]"), &mut v));
            }
            for (i, raw) in req.visitor_ids.into_iter().enumerate() {
                let field = format!("visitor_ids[{i}]");
                let visitor = convert::visitor_id(raw, &field, &mut v);
                subjects.extend(visitor.map(|id| crate::domain::LeadId::for_visitor(&id)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = subjects.iter().find(|id| !seen.insert(*id)) {
            v.add("lead_ids", format!("{} is asked for more than once", crate::text::bounded(&twice.to_string(), 300)));
        }
        let actor = erasure_actor(&req.actor, &req.reason, &mut v);
        let subjects = v.into_result(subjects)?;
        let requested = crate::engine::erasure::Requested::by_request(actor, &token, !req.reason.trim().is_empty());
        let batch =
            crate::engine::erasure::forget_many(&self.state, &subjects, &requested).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ForgetLeadsResponse {
            receipts: batch.receipts.iter().map(receipt_to_proto).collect(),
            webhook_letters: u32::try_from(batch.webhook_letters).unwrap_or(u32::MAX),
            audit_events: u32::try_from(batch.audit_events).unwrap_or(u32::MAX),
        }))
    }

    #[tracing::instrument(name = "GetCohortScoreProfile", skip_all)]
    async fn get_cohort_score_profile(
        &self,
        request: Request<pb::GetCohortScoreProfileRequest>,
    ) -> Result<Response<pb::GetCohortScoreProfileResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let rules = self.state.rules();
        let from = required_month(req.created_from.as_ref(), "created_from", &mut v);
        let to = required_month(req.created_to.as_ref(), "created_to", &mut v);
        if let (Some(from), Some(to)) = (from, to) {
            let months = from.until(to).count() as i64;
            if months == 0 {
                v.add("created_to", "must be after created_from");
            } else if months > MAX_COHORT_MONTHS {
                v.add("created_to", format!("a cohort spans at most {MAX_COHORT_MONTHS} months"));
            }
        }
        let model = check_model(&rules, &req.model, &mut v);
        let filter = if req.attribute_filter.is_empty() {
            None
        } else {
            match req.attribute_filter.split_once('=') {
                Some((name, value)) if rules.cohort_attributes.iter().any(|a| a == name) => {
                    Some((name.to_owned(), value.to_owned()))
                }
                Some((name, _)) => {
                    let declared = if rules.cohort_attributes.is_empty() {
                        "none (declare them under [profiles] cohort_attributes)".to_owned()
                    } else {
                        rules.cohort_attributes.join(", ")
                    };
                    v.add(
                        "attribute_filter",
                        format!("'{name}' is not a cohort attribute; the rule set declares: {declared}"),
                    );
                    None
                }
                None => {
                    v.add("attribute_filter", "write name=value, e.g. industry=software");
                    None
                }
            }
        };
        if req.buckets > MAX_BUCKETS {
            v.add("buckets", format!("at most {MAX_BUCKETS}"));
        }
        let (Some(from), Some(to)) = v.into_result((from, to))? else { return Err(Status::internal("missing period")) };
        let buckets = if req.buckets == 0 { DEFAULT_BUCKETS } else { req.buckets } as usize;
        let query = CohortQuery { from, to, model: model.clone(), filter, buckets };
        let profile = profiles::cohort(&self.state, &query).await.map_err(ApiError::from)?;
        let [p50, p75, p90, p99] = profile.percentiles.map(round_points);
        Ok(Response::new(pb::GetCohortScoreProfileResponse {
            lead_count: profile.lead_count,
            histogram: profile
                .histogram
                .iter()
                .map(|b| pb::HistogramBucket { lower: b.lower, upper: b.upper, count: b.count })
                .collect(),
            p50,
            p75,
            p90,
            p99,
            min: round_points(profile.min),
            max: round_points(profile.max),
            count_by_stage: profile
                .by_stage
                .iter()
                .map(|(stage, count)| pb::StageCount { stage: convert::stage_to_proto(*stage).into(), count: *count })
                .collect(),
            mql_rate: round_rate(profile.mql_rate()),
            model,
            as_of: Some(timestamp_to_proto(self.state.clock.now())),
        }))
    }

    #[tracing::instrument(name = "GetFunnel", skip_all)]
    async fn get_funnel(
        &self,
        request: Request<pb::GetFunnelRequest>,
    ) -> Result<Response<pb::GetFunnelResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let (from, to) = days(req.from.as_ref(), req.to.as_ref(), &mut v);
        let group_by = group_by(req.group_by, &mut v);
        let (Some(from), Some(to)) = v.into_result((from, to))? else { return Err(Status::internal("missing period")) };
        let counters = profiles::funnel(&self.state, from, to).await.map_err(ApiError::from)?;
        let groups = group_by
            .map(|g| {
                counters
                    .by(g)
                    .iter()
                    .map(|(value, funnel)| pb::FunnelGroup {
                        value: value.clone(),
                        funnel: Some(funnel_to_proto(funnel)),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Response::new(pb::GetFunnelResponse { total: Some(funnel_to_proto(&counters.total())), groups }))
    }

    #[tracing::instrument(name = "ListHandovers", skip_all)]
    async fn list_handovers(
        &self,
        request: Request<pb::ListHandoversRequest>,
    ) -> Result<Response<pb::ListHandoversResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        if req.limit > MAX_HANDOVERS {
            v.add("limit", format!("at most {MAX_HANDOVERS}"));
        }
        v.into_result(())?;
        let limit = if req.limit == 0 { DEFAULT_HANDOVERS } else { req.limit } as usize;
        let desk = profiles::desk(&self.state, limit).await.map_err(ApiError::from)?;
        let now = self.state.clock.now();
        let handovers = desk
            .entries
            .into_iter()
            .map(|e| {
                let (lead_id, _) = convert::subject_ids(&e.lead.lead_id);
                pb::Handover {
                    lead_id,
                    handed_over_at: Some(timestamp_to_proto(e.pending.handed_at)),
                    due: Some(timestamp_to_proto(e.pending.due)),
                    age: Some(convert::duration_to_proto(e.age_ms)),
                    waiting: Some(convert::duration_to_proto(
                        now.millis().saturating_sub(e.pending.handed_at.millis()).max(0),
                    )),
                    overdue: e.overdue,
                    owner: e.owner,
                    score: Some(convert::score_snapshot_to_proto(&e.score)),
                    source: e.source,
                }
            })
            .collect();
        let agreement = desk.agreement.map(|a| a.to_string()).unwrap_or_default();
        Ok(Response::new(pb::ListHandoversResponse { waiting: desk.waiting, handovers, agreement }))
    }

    #[tracing::instrument(name = "RecordSpend", skip_all, fields(entries))]
    async fn record_spend(
        &self,
        request: Request<pb::RecordSpendRequest>,
    ) -> Result<Response<pb::RecordSpendResponse>, Status> {
        let token = crate::api::token_name(&request);
        let entries =
            spend_entries(request.into_inner().spend, &self.state.currency, self.state.limits.max_batch_size)?;
        tracing::Span::current().record("entries", entries.len());
        spend::record(self.state.core(), &entries).await.map_err(|e| match e {
            spend::SpendError::Store(e) => ApiError::Store(e),
            e @ spend::SpendError::Currency { .. } => ApiError::FailedPrecondition {
                message: e.to_string(),
                reason: "CURRENCY_MISMATCH",
                metadata: Vec::new(),
            },
        })?;
        // Spend is business data, not personal: campaigns and days named.
        let mut campaigns: Vec<&str> = entries.iter().map(|e| e.campaign.as_str()).collect();
        campaigns.sort_unstable();
        campaigns.dedup();
        let (first, last) = (entries.iter().map(|e| e.day).min(), entries.iter().map(|e| e.day).max());
        let day =
            |d: Option<i64>| d.map(|d| Timestamp::from_millis(d * MILLIS_PER_DAY).to_string()).unwrap_or_default();
        let details = [
            ("entries", entries.len().to_string()),
            ("campaigns", campaigns.join(" ")),
            ("from_day", day(first)),
            ("to_day", day(last)),
        ];
        let event =
            crate::engine::audit::event(&self.state, "spend.recorded", "", &token, &self.state.currency, &details);
        crate::engine::audit::record(&self.state, event).await;
        Ok(Response::new(pb::RecordSpendResponse { recorded: entries.len() as u32 }))
    }

    #[tracing::instrument(name = "GetCampaignReport", skip_all)]
    async fn get_campaign_report(
        &self,
        request: Request<pb::GetCampaignReportRequest>,
    ) -> Result<Response<pb::GetCampaignReportResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let (from, to) = days(req.from.as_ref(), req.to.as_ref(), &mut v);
        let group_by = group_by(req.group_by, &mut v).unwrap_or(FunnelGroupBy::Campaign);
        let model = match pb::AttributionModel::try_from(req.model) {
            Ok(pb::AttributionModel::Unspecified | pb::AttributionModel::FirstTouch) => Model::FirstTouch,
            Ok(pb::AttributionModel::LastTouch) => Model::LastTouch,
            Ok(pb::AttributionModel::Linear) => Model::Linear,
            Ok(pb::AttributionModel::TimeDecay) => Model::TimeDecay,
            Ok(pb::AttributionModel::PositionBased) => Model::PositionBased,
            Err(_) => {
                v.add("model", format!("unknown value {}", req.model));
                Model::FirstTouch
            }
        };
        let (Some(from), Some(to)) = v.into_result((from, to))? else { return Err(Status::internal("missing period")) };
        let report =
            spend::campaign_report(self.state.core(), from, to, group_by, model).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::GetCampaignReportResponse {
            rows: report.rows.iter().map(campaign_row_to_proto).collect(),
            total: Some(campaign_row_to_proto(&report.total)),
            currency: self.state.currency.clone(),
            model: model_to_proto(model).into(),
        }))
    }

    #[tracing::instrument(name = "UpsertAccount", skip_all, fields(account_id))]
    async fn upsert_account(
        &self,
        request: Request<pb::UpsertAccountRequest>,
    ) -> Result<Response<pb::UpsertAccountResponse>, Status> {
        let token = crate::api::token_name(&request);
        let account = convert::account_profile(request.into_inner().account)?;
        tracing::Span::current().record("account_id", account.account_id.as_str());
        accounts::upsert(self.state.core(), &account).await.map_err(ApiError::from)?;
        let names: Vec<&str> = account.attributes.keys().map(String::as_str).collect();
        let details = [("attributes", names.join(" "))];
        let event = crate::engine::audit::event(
            &self.state,
            "account.upserted",
            "",
            &token,
            account.account_id.as_str(),
            &details,
        );
        crate::engine::audit::record(&self.state, event).await;
        Ok(Response::new(pb::UpsertAccountResponse {
            account: Some(pb::Account {
                account_id: account.account_id.to_string(),
                attributes: account.attributes.into_iter().collect(),
            }),
        }))
    }

    #[tracing::instrument(name = "GetAccountScore", skip_all, fields(account_id))]
    async fn get_account_score(
        &self,
        request: Request<pb::GetAccountScoreRequest>,
    ) -> Result<Response<pb::GetAccountScoreResponse>, Status> {
        let mut v = Violations::default();
        let account_id = convert::account_id(request.into_inner().account_id, "account_id", &mut v);
        let Some(account_id) = v.into_result(account_id)? else { return Err(Status::internal("missing account id")) };
        tracing::Span::current().record("account_id", account_id.as_str());
        let rules = self.state.rules();
        let view =
            accounts::evaluate(&self.state, &rules, &account_id).await.map_err(ApiError::from)?.ok_or_else(|| {
                ApiError::NotFound(format!("account '{account_id}' was never upserted nor named by a lead"))
            })?;
        let lead = |l: &crate::domain::account::AccountLead| pb::AccountLead {
            lead_id: l.lead_id.to_string(),
            behavior: round_points(l.behavior),
            stage: convert::stage_to_proto(l.stage).into(),
            counted: l.counted,
            engaged: l.engaged,
        };
        let score = &view.score;
        let (qualified_rule_id, qualified_at) = match &view.stored.qualified {
            Some((rule, at)) => (rule.clone(), Some(timestamp_to_proto(*at))),
            None => (String::new(), None),
        };
        Ok(Response::new(pb::GetAccountScoreResponse {
            account_id: account_id.to_string(),
            score: round_points(score.total()),
            behavior: round_points(score.behavior),
            fit: round_points(score.fit),
            engaged_leads: score.engaged_leads,
            lead_count: score.leads.len() as u32,
            top_leads: score.leads.iter().take(TOP_LEADS).map(lead).collect(),
            qualified: view.stored.qualified.is_some(),
            qualified_rule_id,
            qualified_at,
            leads: score.leads.iter().map(lead).collect(),
            fit_rules: score
                .fit_rules
                .iter()
                .map(|(rule_id, attribute, _)| pb::FitRuleContribution {
                    rule_id: rule_id.clone(),
                    attribute: attribute.clone(),
                })
                .collect(),
            fit_points: score.fit_rules.iter().map(|r| round_points(r.2)).collect(),
            model: rules.accounts.model.clone(),
            as_of: Some(timestamp_to_proto(view.as_of)),
            aggregate: rules.accounts.aggregate.to_string(),
        }))
    }
}

fn rfc3339(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at.millis())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Everything stored about a lead, as the API shows it.
fn export_to_proto(export: &profiles::Export, rules: &RuleSet, now: Timestamp) -> pb::ExportLeadResponse {
    let state = &export.state;
    let lead = &state.lead;
    let (_, visitor_id) = convert::subject_ids(&lead.lead_id);
    let models: Vec<&str> = std::iter::once(rules.primary().name.as_str())
        .chain(rules.models.keys().map(String::as_str).filter(|m| *m != rules.primary().name))
        .collect();
    let scores = models
        .iter()
        .filter_map(|m| rules.model(m))
        .map(|m| score_to_proto(lead, &m.score(lead, now), &rules.version))
        .collect();
    let mut histories: Vec<pb::ModelScoreHistory> = Vec::new();
    for entry in &state.score_history {
        for s in &entry.scores {
            let point = pb::ScoreHistoryEntry {
                at: Some(timestamp_to_proto(entry.at)),
                total: round_points(s.total()),
                behavior: round_points(s.behavior),
                fit: round_points(s.fit),
                cause: entry.cause.clone(),
            };
            match histories.iter_mut().find(|h| h.model == s.model) {
                Some(h) => h.entries.push(point),
                None => histories.push(pb::ModelScoreHistory { model: s.model.clone(), entries: vec![point] }),
            }
        }
    }
    pb::ExportLeadResponse {
        lead: Some(convert::lead_to_proto(lead)),
        visitor_id,
        merged_into_lead_id: lead.merged_into.as_ref().map(|l| l.to_string()).unwrap_or_default(),
        stage_since: Some(timestamp_to_proto(lead.stage_since)),
        last_engaged_at: lead.last_engaged_at.map(timestamp_to_proto),
        scores,
        signals: state.ledger.history().map(kept_signal).collect(),
        signals_recorded: lead.recorded,
        remembered_event_ids: u32::try_from(state.ledger.seen().len()).unwrap_or(u32::MAX),
        score_history: histories,
        stage_history: state.stages.iter().map(stage_change_to_proto).collect(),
        touches: state
            .journey
            .touches
            .iter()
            .map(|t| pb::KeptTouch {
                at: Some(timestamp_to_proto(t.at)),
                source: t.values[0].clone(),
                channel: t.values[1].clone(),
                campaign: t.values[2].clone(),
            })
            .collect(),
        expansion_deals: state.expansion.iter().map(convert::expansion_deal_to_proto).collect(),
        handed_over_at: state.handover.as_ref().map(|h| timestamp_to_proto(h.handed_at)),
        follow_up_due: state.handover.as_ref().map(|h| timestamp_to_proto(h.due)),
        triggers_last_fired: lead.trigger_fired.iter().map(|(k, at)| (k.clone(), timestamp_to_proto(*at))).collect(),
        triggers: export.triggers.iter().map(convert::trigger_to_proto).collect(),
        exported_at: Some(timestamp_to_proto(now)),
        identified_visitor_ids: state.visitors.iter().filter_map(|v| v.visitor()).map(str::to_owned).collect(),
    }
}

/// The erasure requester's name, trimmed, with a violation when it or the
/// reason is out of bounds.
fn erasure_actor<'a>(actor: &'a str, reason: &str, v: &mut Violations) -> &'a str {
    let actor = actor.trim();
    if actor.is_empty() || actor.len() > MAX_ACTOR_BYTES || actor.chars().any(char::is_control) {
        v.add("actor", format!("who asks for the erasure: 1 to {MAX_ACTOR_BYTES} bytes without control characters"));
    }
    if reason.len() > MAX_REASON_BYTES {
        v.add("reason", format!("at most {MAX_REASON_BYTES} bytes"));
    }
    actor
}

/// An erasure's receipt as the API gives it.
fn receipt_to_proto(receipt: &crate::engine::erasure::Receipt) -> pb::ForgetLeadResponse {
    let r = &receipt.removed;
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    pb::ForgetLeadResponse {
        lead_ref: receipt.lead_ref.clone(),
        erased_at: Some(convert::timestamp_to_proto(receipt.erased_at)),
        found: receipt.found,
        attributes: n(r.attributes),
        signals: n(r.signals),
        event_ids: n(r.event_ids),
        stage_changes: n(r.stage_changes),
        score_history: n(r.score_history),
        touches: n(r.touches),
        expansion_deals: n(r.expansion_deals),
        visitors: n(r.visitors.len()),
        aggregate_counters: n(r.aggregate_counters),
        aggregates_exact: r.exact,
        webhook_letters: u32::try_from(receipt.webhook_letters).unwrap_or(u32::MAX),
        audit_events: u32::try_from(receipt.audit_events).unwrap_or(u32::MAX),
    }
}

/// A signal of a lead's raw history as the API shows it.
fn kept_signal(h: &crate::domain::ledger::HistoryEntry) -> pb::KeptSignal {
    let ms = |ms: i64| Some(timestamp_to_proto(Timestamp::from_millis(ms)));
    pb::KeptSignal {
        r#type: h.signal_type.clone(),
        occurred_at: ms(h.occurred_at_ms),
        recorded_at: ms(h.arrived_at_ms),
        properties: h.properties.clone().into_iter().collect(),
    }
}
