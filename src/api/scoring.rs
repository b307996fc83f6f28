//! `leadscore.v1.LeadScoring`.

use crate::engine::audit;
use std::collections::HashMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, lead_to_proto, score_to_proto};
use super::error::{ApiError, Violations};
use super::pb::{self, lead_scoring_server::LeadScoring};
use super::state::AppState;
use crate::domain::ScoredSignal;
use crate::domain::{LeadId, LeadSnapshot, Timestamp};
use crate::engine::{LeadBatch, leads};
use crate::rules::RuleSet;

pub struct ScoringService {
    state: Arc<AppState>,
}

impl ScoringService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

fn score(rules: &RuleSet, model: &str, lead: &LeadSnapshot, now: Timestamp) -> Result<pb::LeadScore, ApiError> {
    let mut v = Violations::default();
    check_model(rules, model, &mut v);
    v.into_result(())?;
    let m = rules.model(model).unwrap_or_else(|| rules.primary());
    Ok(score_to_proto(lead, &m.score(lead, now), &rules.version))
}

pub(super) fn check_model(rules: &RuleSet, model: &str, v: &mut Violations) {
    if rules.model(model).is_none() {
        let known: Vec<_> = rules.models.keys().map(String::as_str).collect();
        v.add("model", format!("unknown model '{model}'; the rule set defines: {}", known.join(", ")));
    }
}

#[tonic::async_trait]
impl LeadScoring for ScoringService {
    #[tracing::instrument(name = "UpsertLead", skip_all)]
    async fn upsert_lead(
        &self,
        request: Request<pb::UpsertLeadRequest>,
    ) -> Result<Response<pb::UpsertLeadResponse>, Status> {
        let token = super::token_name(&request);
        let profile = convert::lead_profile(request.into_inner().lead)?;
        tracing::Span::current().record("lead_id", profile.lead_id.as_str());
        let rules = self.state.rules();
        let upserted = crate::engine::upsert_lead(&self.state, &rules, profile).await.map_err(ApiError::from)?;
        if upserted.created || upserted.account_changed || !upserted.attributes_changed.is_empty() {
            let details = [
                ("created", upserted.created.to_string()),
                ("attributes_changed", upserted.attributes_changed.join(" ")),
                ("account_changed", upserted.account_changed.to_string()),
            ];
            let event =
                audit::event(&self.state, "lead.upserted", "", &token, upserted.lead.lead_id.as_str(), &details);
            audit::record(&self.state, event).await;
        }
        let lead = upserted.lead;
        crate::engine::accounts::check_soon(self.state.core(), lead.account_id.clone());
        Ok(Response::new(pb::UpsertLeadResponse { lead: Some(lead_to_proto(&lead)) }))
    }

    #[tracing::instrument(name = "RecordSignals", skip_all, fields(signals))]
    async fn record_signals(
        &self,
        request: Request<pb::RecordSignalsRequest>,
    ) -> Result<Response<pb::RecordSignalsResponse>, Status> {
        let state = &self.state;
        let rules = state.rules();
        let now = state.clock.now();
        let signals = request.into_inner().signals;
        tracing::Span::current().record("signals", signals.len());
        let parsed = convert::signals(
            signals,
            &rules,
            now,
            state.limits.max_batch_size,
            state.limits.max_future_skew_ms,
            state.policy.retention_ms,
        )?;

        // One batch per lead, leads in order of first appearance; remember
        // where each signal went to answer in request order.
        let mut batches: Vec<LeadBatch> = Vec::new();
        let mut batch_of: HashMap<LeadId, usize> = HashMap::new();
        let mut placement = Vec::with_capacity(parsed.len());
        for (lead_id, signal) in parsed {
            let b = *batch_of.entry(lead_id.clone()).or_insert_with(|| {
                batches.push(LeadBatch::new(lead_id, Vec::new()));
                batches.len() - 1
            });
            let visitor = batches[b].lead_id.visitor().unwrap_or_default().to_owned();
            placement.push((b, batches[b].signals.len(), signal.event_id.to_string(), visitor));
            batches[b].signals.push(signal);
        }

        // A visitor already identified as a lead: its signals go to the lead.
        let visitor_batches: HashMap<LeadId, Vec<ScoredSignal>> = batches
            .iter()
            .filter(|b| b.lead_id.visitor().is_some())
            .map(|b| (b.lead_id.clone(), b.signals.clone()))
            .collect();
        let mut outcomes = crate::engine::record_batches(state, &rules, batches).await.map_err(ApiError::from)?;
        let redirected: Vec<(usize, LeadBatch)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(i, o)| {
                let owner = o.merged_into.clone()?;
                Some((i, LeadBatch::new(owner, visitor_batches.get(&o.lead.lead_id)?.clone())))
            })
            .collect();
        if !redirected.is_empty() {
            let (places, batches): (Vec<usize>, Vec<LeadBatch>) = redirected.into_iter().unzip();
            let again = crate::engine::record_batches(state, &rules, batches).await.map_err(ApiError::from)?;
            for (i, outcome) in places.into_iter().zip(again) {
                outcomes[i] = outcome;
            }
        }
        let results = placement
            .into_iter()
            .map(|(b, i, event_id, visitor_id)| {
                let (status, outcome) = match outcomes[b].statuses.get(i) {
                    Some(crate::domain::SignalStatus::Accepted) => (pb::SignalStatus::Accepted, "accepted"),
                    Some(crate::domain::SignalStatus::Duplicate) => (pb::SignalStatus::Duplicate, "duplicate"),
                    Some(crate::domain::SignalStatus::Capped) => (pb::SignalStatus::Capped, "capped"),
                    None => (pb::SignalStatus::Unspecified, "unknown"),
                };
                state.metrics.signals.with_label_values(&[outcome]).inc();
                let lead_id = outcomes[b]
                    .lead
                    .lead_id
                    .visitor()
                    .map_or_else(|| outcomes[b].lead.lead_id.to_string(), |_| String::new());
                pb::SignalResult { event_id, lead_id, status: status.into(), visitor_id }
            })
            .collect();
        // Qualification ran with each lead's write.
        let leads: Vec<_> = outcomes.into_iter().map(|o| o.lead).collect();
        let accounts: std::collections::BTreeSet<_> = leads.iter().filter_map(|l| l.account_id.clone()).collect();
        crate::engine::accounts::check_soon(state.core(), accounts);
        let scores = leads.iter().map(|lead| score(&rules, "", lead, now)).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::RecordSignalsResponse { results, scores }))
    }

    #[tracing::instrument(name = "ScoreLead", skip_all, fields(lead_id))]
    async fn score_lead(
        &self,
        request: Request<pb::ScoreLeadRequest>,
    ) -> Result<Response<pb::ScoreLeadResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = convert::subject(req.lead_id, req.visitor_id, "", &mut v);
        let rules = self.state.rules();
        check_model(&rules, &req.model, &mut v);
        let Some(lead_id) = v.into_result(lead_id)? else {
            return Err(Status::internal("lead id parsed without violation but is missing"));
        };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));
        let lead = leads::scored(&self.state, lead_id)
            .await
            .map_err(ApiError::from)?
            .map_err(|id| ApiError::NotFound(format!("lead '{id}' was never seen")))?;
        let score = score(&rules, &req.model, &lead, self.state.clock.now())?;
        Ok(Response::new(pb::ScoreLeadResponse { score: Some(score) }))
    }

    #[tracing::instrument(name = "ScoreLeads", skip_all, fields(leads))]
    async fn score_leads(
        &self,
        request: Request<pb::ScoreLeadsRequest>,
    ) -> Result<Response<pb::ScoreLeadsResponse>, Status> {
        let req = request.into_inner();
        tracing::Span::current().record("leads", req.lead_ids.len());
        let mut v = Violations::default();
        let max = self.state.limits.max_batch_size;
        if req.lead_ids.is_empty() || req.lead_ids.len() > max {
            v.add("lead_ids", format!("send 1 to {max} lead ids (got {})", req.lead_ids.len()));
        }
        let rules = self.state.rules();
        check_model(&rules, &req.model, &mut v);
        let ids: Vec<_> = req
            .lead_ids
            .into_iter()
            .enumerate()
            .take(max)
            .filter_map(|(i, raw)| convert::lead_id(raw, &format!("lead_ids[{i}]"), &mut v))
            .collect();
        let ids = v.into_result(ids)?;
        let leads = leads::snapshots(&self.state, &ids).await.map_err(ApiError::from)?;
        let now = self.state.clock.now();
        let mut response = pb::ScoreLeadsResponse::default();
        for (id, lead) in ids.into_iter().zip(leads) {
            match lead {
                Some(lead) => response.scores.push(score(&rules, &req.model, &lead, now)?),
                None => response.not_found_lead_ids.push(id.into_inner()),
            }
        }
        Ok(Response::new(response))
    }
}
