//! `leadscore.v1.Qualification`.

use crate::engine::audit;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{self, feed_change_to_proto, qualification_to_proto, timestamp_to_proto};
use super::error::{ApiError, Violations};
use super::pb::{self, qualification_server::Qualification};
use super::state::AppState;
use crate::domain::expansion;
use crate::domain::state::LeadState;
use crate::domain::{LeadId, Stage};
use crate::engine::jobs::JobState;
use crate::engine::{ExpansionError, SetStageError, StoreError, feed, leads};
use crate::rules::RuleSet;
use crate::transition::{ExpansionRefusal, StageRefusal, StageRequest};
use std::sync::atomic::Ordering::Relaxed;

const DEFAULT_HISTORY: u32 = 20;
const MAX_HISTORY: u32 = 100;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
pub(crate) const MAX_ACTOR_BYTES: usize = 256;
pub(crate) const MAX_REASON_BYTES: usize = 1024;
const MAX_DEAL_ID_BYTES: usize = 256;

pub struct QualificationService {
    state: Arc<AppState>,
}

impl QualificationService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    async fn load(&self, lead_id: &LeadId) -> Result<LeadState, ApiError> {
        leads::load(&self.state, lead_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("lead '{lead_id}' was never seen")))
    }
}

/// A lead's qualification with its newest `history_limit` stage changes.
fn qualification(state: &LeadState, history_limit: u32) -> pb::LeadQualification {
    let history: Vec<_> = state.stages.iter().take(history_limit as usize).cloned().collect();
    qualification_to_proto(&state.lead, &history)
}

fn stage_changed(lead_id: &LeadId, expected: &str, current: &str) -> ApiError {
    ApiError::FailedPrecondition {
        message: format!("lead '{lead_id}' is in stage {current}, not {expected}"),
        reason: "STAGE_CHANGED",
        metadata: vec![("expected_stage".into(), expected.into()), ("current_stage".into(), current.into())],
    }
}

/// Why an expansion deal update was refused, with what the caller can do.
fn expansion_refused(lead_id: &LeadId, refusal: expansion::Refusal) -> ApiError {
    let (message, reason, metadata) = match refusal {
        expansion::Refusal::NotACustomer(stage) => (
            format!("lead '{lead_id}' is in stage {stage}: only a customer (CUSTOMER, ADVOCATE) opens expansion deals"),
            "NOT_A_CUSTOMER",
            vec![("current_stage".to_owned(), stage.as_str().to_owned())],
        ),
        expansion::Refusal::Closed { status, at } => (
            format!("the deal was {} at {at}: a closed deal is final", status.as_str()),
            "DEAL_CLOSED",
            vec![("status".to_owned(), status.as_str().to_owned())],
        ),
        expansion::Refusal::OtherKind(kind) => (
            format!("the deal was opened as {}", kind.key()),
            "DEAL_KIND_CHANGED",
            vec![("kind".to_owned(), kind.key().to_owned())],
        ),
        expansion::Refusal::AmountRequired => {
            ("a deal first seen won needs its amount: a closed deal is final".to_owned(), "AMOUNT_REQUIRED", Vec::new())
        }
        expansion::Refusal::TooManyOpen => (
            format!("lead '{lead_id}' has {} expansion deals open: close some first", expansion::MAX_KEPT),
            "TOO_MANY_OPEN_DEALS",
            Vec::new(),
        ),
    };
    ApiError::FailedPrecondition { message, reason, metadata }
}

fn required_lead_id(raw: String, v: &mut Violations) -> Option<LeadId> {
    convert::lead_id(raw, "lead_id", v)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchQualificationChangesResponse, Status>> + Send>>;

/// The change feed from a cursor, page by page.
struct FeedPoller {
    state: Arc<AppState>,
    cursor: String,
}

impl super::polling::Poller for FeedPoller {
    type Item = pb::WatchQualificationChangesResponse;

    fn next(&mut self) -> futures::future::BoxFuture<'_, Result<Vec<Self::Item>, StoreError>> {
        Box::pin(async move {
            let page = feed::changes(&self.state, &self.cursor, DEFAULT_PAGE as usize).await?;
            self.cursor = page.next_cursor;
            Ok(page
                .changes
                .iter()
                .map(|c| pb::WatchQualificationChangesResponse {
                    change: Some(feed_change_to_proto(c)),
                    cursor: c.cursor.clone(),
                })
                .collect())
        })
    }
}

/// A page's `limit`: 0 for the default, at most `MAX_PAGE`.
fn page_limit(limit: u32) -> Result<usize, Status> {
    if limit > MAX_PAGE {
        let mut v = Violations::default();
        v.add("limit", format!("at most {MAX_PAGE}"));
        return Err(v.into_error().into());
    }
    Ok(if limit == 0 { DEFAULT_PAGE } else { limit } as usize)
}

#[tonic::async_trait]
impl Qualification for QualificationService {
    #[tracing::instrument(name = "GetQualification", skip_all, fields(lead_id))]
    async fn get_qualification(
        &self,
        request: Request<pb::GetQualificationRequest>,
    ) -> Result<Response<pb::GetQualificationResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = required_lead_id(req.lead_id, &mut v);
        if req.history_limit > MAX_HISTORY {
            v.add("history_limit", format!("at most {MAX_HISTORY}"));
        }
        let Some(lead_id) = v.into_result(lead_id)? else { return Err(Status::internal("missing lead id")) };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));
        let limit = if req.history_limit == 0 { DEFAULT_HISTORY } else { req.history_limit };
        let lead = self.load(&lead_id).await?;
        Ok(Response::new(pb::GetQualificationResponse { qualification: Some(qualification(&lead, limit)) }))
    }

    #[tracing::instrument(name = "SetStage", skip_all, fields(lead_id))]
    async fn set_stage(&self, request: Request<pb::SetStageRequest>) -> Result<Response<pb::SetStageResponse>, Status> {
        let token = super::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = required_lead_id(req.lead_id, &mut v);
        let to = convert::stage_from_proto(req.to, "to", &mut v);
        if to.is_none() && v.is_empty() {
            v.add("to", "the target stage is required");
        }
        let expected = convert::stage_from_proto(req.expected_stage, "expected_stage", &mut v);
        if req.actor.trim().is_empty() || req.actor.len() > MAX_ACTOR_BYTES || req.actor.chars().any(char::is_control) {
            v.add("actor", format!("who made the decision: 1 to {MAX_ACTOR_BYTES} bytes without control characters"));
        }
        if req.reason.len() > MAX_REASON_BYTES {
            v.add("reason", format!("at most {MAX_REASON_BYTES} bytes"));
        }
        if let Some(amount) = req.deal_amount {
            if to.is_some_and(|to| to != Stage::Customer) {
                v.add("deal_amount", "only a move to STAGE_CUSTOMER carries a deal amount");
            } else if !amount.is_finite() || !(0.0..=crate::domain::spend::MAX_AMOUNT.units()).contains(&amount) {
                v.add("deal_amount", "a finite amount from 0 to 1,000,000,000");
            }
        }
        let (Some(lead_id), Some(to)) = v.into_result((lead_id, to))? else {
            return Err(Status::internal("missing lead id or stage"));
        };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));

        let rules = self.state.rules();
        let request = StageRequest {
            to,
            expected,
            actor: req.actor.trim().to_owned(),
            reason: req.reason,
            deal_amount: req.deal_amount,
        };
        let actor = request.actor.clone();
        let lead = match crate::engine::set_stage(&self.state, &rules, &lead_id, request).await {
            Ok((lead, change)) => {
                tracing::info!(lead_id = %lead_id, from = %change.from, to = %change.to, "stage set");
                let mut details = vec![
                    ("from", change.from.as_str().to_owned()),
                    ("to", change.to.as_str().to_owned()),
                    // The reason is free text about a person: it stays with
                    // the lead (its stage history), not in the trail.
                    ("reason_given", (!change.reason.trim().is_empty()).to_string()),
                ];
                if let Some(amount) = change.deal_amount {
                    details.push(("deal_amount", amount.to_string()));
                }
                let event = audit::event(&self.state, "stage.set", &actor, &token, lead_id.as_str(), &details);
                audit::record(&self.state, event).await;
                lead
            }
            Err(SetStageError::Store(e)) => return Err(ApiError::from(e).into()),
            Err(SetStageError::Refused(StageRefusal::NotFound)) => {
                return Err(ApiError::NotFound(format!("lead '{lead_id}' was never seen")).into());
            }
            Err(SetStageError::Refused(StageRefusal::Changed { expected, current })) => {
                return Err(stage_changed(&lead_id, expected.as_str(), current.as_str()).into());
            }
            Err(SetStageError::Refused(StageRefusal::NotAllowed { from, to, allowed })) => {
                let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::FailedPrecondition {
                    message: format!(
                        "the rule set does not allow moving a lead from {from} to {to}; allowed: {}",
                        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                    ),
                    reason: "TRANSITION_NOT_ALLOWED",
                    metadata: vec![
                        ("from".into(), from.as_str().into()),
                        ("to".into(), to.as_str().into()),
                        ("allowed_targets".into(), names.join(",")),
                    ],
                }
                .into());
            }
        };
        let state = self.load(&lead.lead_id).await?;
        Ok(Response::new(pb::SetStageResponse { qualification: Some(qualification(&state, DEFAULT_HISTORY)) }))
    }

    #[tracing::instrument(name = "RecordExpansion", skip_all, fields(lead_id))]
    async fn record_expansion(
        &self,
        request: Request<pb::RecordExpansionRequest>,
    ) -> Result<Response<pb::RecordExpansionResponse>, Status> {
        let token = super::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let lead_id = required_lead_id(req.lead_id, &mut v);
        let deal_id = req.deal_id.trim().to_owned();
        if deal_id.is_empty() || deal_id.len() > MAX_DEAL_ID_BYTES || deal_id.chars().any(char::is_control) {
            v.add(
                "deal_id",
                format!("the CRM's opportunity id: 1 to {MAX_DEAL_ID_BYTES} bytes without control characters"),
            );
        }
        let kind = convert::expansion_kind_from_proto(req.kind, &mut v);
        let status = convert::deal_status_from_proto(req.status, &mut v);
        if let Some(amount) = req.amount
            && (!amount.is_finite() || !(0.0..=crate::domain::spend::MAX_AMOUNT.units()).contains(&amount))
        {
            v.add("amount", "a finite amount from 0 to 1,000,000,000");
        }
        if req.actor.trim().is_empty() || req.actor.len() > MAX_ACTOR_BYTES || req.actor.chars().any(char::is_control) {
            v.add("actor", format!("who reported it: 1 to {MAX_ACTOR_BYTES} bytes without control characters"));
        }
        let (Some(lead_id), Some(kind), Some(status)) = v.into_result((lead_id, kind, status))? else {
            return Err(Status::internal("missing lead id, kind or status"));
        };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));
        let update =
            expansion::Update { id: deal_id, kind, status, micros: req.amount.map(crate::domain::attribution::micros) };
        let rules = self.state.rules();
        let (deal, changed) = match crate::engine::record_expansion(&self.state, &rules, &lead_id, update).await {
            Ok(answer) => answer,
            Err(ExpansionError::Store(e)) => return Err(ApiError::from(e).into()),
            Err(ExpansionError::Refused(ExpansionRefusal::NotFound)) => {
                return Err(ApiError::NotFound(format!("lead '{lead_id}' was never seen")).into());
            }
            Err(ExpansionError::Refused(ExpansionRefusal::Refused(refusal))) => {
                return Err(expansion_refused(&lead_id, refusal).into());
            }
        };
        if changed {
            tracing::info!(lead_id = %lead_id, deal_id = %deal.id, status = deal.status.as_str(), actor = %req.actor.trim(), "expansion deal recorded");
            let details = [
                ("deal_id", deal.id.clone()),
                ("kind", convert::expansion_kind_to_proto(deal.kind).as_str_name().to_owned()),
                ("status", deal.status.as_str().to_owned()),
                ("amount", (deal.micros as f64 / 1e6).to_string()),
            ];
            let event =
                audit::event(&self.state, "expansion.recorded", req.actor.trim(), &token, lead_id.as_str(), &details);
            audit::record(&self.state, event).await;
        }
        Ok(Response::new(pb::RecordExpansionResponse { deal: Some(convert::expansion_deal_to_proto(&deal)), changed }))
    }

    #[tracing::instrument(name = "ListQualificationChanges", skip_all)]
    async fn list_qualification_changes(
        &self,
        request: Request<pb::ListQualificationChangesRequest>,
    ) -> Result<Response<pb::ListQualificationChangesResponse>, Status> {
        let req = request.into_inner();
        let limit = page_limit(req.limit)?;
        let page = feed::changes(&self.state, &req.after_cursor, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListQualificationChangesResponse {
            changes: page.changes.iter().map(feed_change_to_proto).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    #[tracing::instrument(name = "ListAuditEvents", skip_all)]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let req = request.into_inner();
        let limit = page_limit(req.limit)?;
        let page = audit::list(&self.state, &req.after_cursor, limit).await.map_err(ApiError::from)?;
        let events = page
            .events
            .into_iter()
            .map(|(id, e)| pb::AuditEvent {
                id,
                at: Some(convert::timestamp_to_proto(e.at)),
                action: e.action,
                actor: e.actor,
                token: e.token,
                subject: e.subject,
                details: e.details.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::ListAuditEventsResponse { events, next_cursor: page.next_cursor }))
    }

    type WatchQualificationChangesStream = WatchStream;

    #[tracing::instrument(name = "WatchQualificationChanges", skip_all)]
    async fn watch_qualification_changes(
        &self,
        request: Request<pb::WatchQualificationChangesRequest>,
    ) -> Result<Response<Self::WatchQualificationChangesStream>, Status> {
        // A bad cursor is refused now rather than in the stream.
        let after = feed::start(&self.state, &request.into_inner().after_cursor).await.map_err(ApiError::from)?;
        let poller = FeedPoller { state: self.state.clone(), cursor: after };
        let stream = super::polling::stream(&self.state, DEFAULT_PAGE as usize, poller, super::polling::Wait::Poll);
        Ok(Response::new(Box::pin(stream) as WatchStream))
    }

    #[tracing::instrument(name = "GetRuleSet", skip_all)]
    async fn get_rule_set(
        &self,
        _: Request<pb::GetRuleSetRequest>,
    ) -> Result<Response<pb::GetRuleSetResponse>, Status> {
        let rules = self.state.rules();
        Ok(Response::new(pb::GetRuleSetResponse {
            version: rules.version.clone(),
            agreed_by: rules.agreed_by.clone(),
            source: rules.source.clone(),
            loaded_at: Some(timestamp_to_proto(rules.loaded_at)),
            origin: rules.origin.clone(),
        }))
    }

    #[tracing::instrument(name = "ValidateRuleSet", skip_all)]
    async fn validate_rule_set(
        &self,
        request: Request<pb::ValidateRuleSetRequest>,
    ) -> Result<Response<pb::ValidateRuleSetResponse>, Status> {
        let source = request.into_inner().source;
        let parsed = RuleSet::parse_with_approvers(&source, &self.state.required_approvers);
        // A version already used for other content would be refused.
        let parsed = match parsed {
            Ok(rules) => match crate::engine::version_clash(&self.state, &rules).await.map_err(ApiError::from)? {
                Some(known) => {
                    let line = source.lines().position(|l| l.trim_start().starts_with("version")).unwrap_or(0);
                    let offset: usize = source.lines().take(line).map(|l| l.len() + 1).sum();
                    Err(vec![crate::rules::RuleError::at(
                        &source,
                        Some(offset..offset),
                        crate::reload::version_taken(&rules, known.as_str()),
                    )])
                }
                None => Ok(rules),
            },
            Err(errors) => Err(errors),
        };
        let response = match parsed {
            Ok(rules) => pb::ValidateRuleSetResponse { valid: true, errors: Vec::new(), summary: rules.summary() },
            Err(errors) => pb::ValidateRuleSetResponse {
                valid: false,
                errors: errors
                    .into_iter()
                    .map(|e| pb::RuleSetError { line: e.line as u32, column: e.column as u32, message: e.message })
                    .collect(),
                summary: String::new(),
            },
        };
        Ok(Response::new(response))
    }

    #[tracing::instrument(name = "SimulateRuleSet", skip_all)]
    async fn simulate_rule_set(
        &self,
        request: Request<pb::SimulateRuleSetRequest>,
    ) -> Result<Response<pb::SimulateRuleSetResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        if req.sample_limit > 100 {
            v.add("sample_limit", "at most 100");
        }
        let candidate = match RuleSet::parse_with_approvers(&req.source, &self.state.required_approvers) {
            Ok(rules) => Some(rules),
            Err(errors) => {
                for e in errors.iter().take(20) {
                    v.add("source", e.to_string());
                }
                None
            }
        };
        let Some(candidate) = v.into_result(candidate)? else { return Err(Status::internal("missing rule set")) };
        let sample = if req.sample_limit == 0 { 5 } else { req.sample_limit as usize };
        let simulation = crate::engine::simulate_now(&self.state, &candidate, sample).await.map_err(ApiError::from)?;
        Ok(Response::new(simulation_to_proto(&candidate.version, &simulation)))
    }

    #[tracing::instrument(name = "Rescore", skip_all)]
    async fn rescore(&self, request: Request<pb::RescoreRequest>) -> Result<Response<pb::RescoreResponse>, Status> {
        let token = super::token_name(&request);
        let (job, started) = crate::engine::start_rescore(self.state.core().clone());
        if started {
            let details = [("job_id", job.id.clone())];
            let event = audit::event(&self.state, "rescore.started", "", &token, &job.rule_set_version, &details);
            audit::record(&self.state, event).await;
        }
        Ok(Response::new(pb::RescoreResponse { job_id: job.id.clone(), started }))
    }

    #[tracing::instrument(name = "GetRescoreJob", skip_all)]
    async fn get_rescore_job(
        &self,
        request: Request<pb::GetRescoreJobRequest>,
    ) -> Result<Response<pb::GetRescoreJobResponse>, Status> {
        let id = request.into_inner().job_id;
        let job = self
            .state
            .jobs
            .get(&id)
            .ok_or_else(|| ApiError::NotFound(format!("no rescore job '{id}' on this replica")))?;
        let (state, finished_at) = job.state();
        let (state, error, superseded_by) = match state {
            JobState::Running => (pb::RescoreState::Running, String::new(), String::new()),
            JobState::Done => (pb::RescoreState::Done, String::new(), String::new()),
            JobState::Failed(e) => (pb::RescoreState::Failed, e, String::new()),
            JobState::Superseded(by) => (pb::RescoreState::Superseded, String::new(), by),
        };
        let p = &job.progress;
        Ok(Response::new(pb::GetRescoreJobResponse {
            job_id: job.id.clone(),
            state: state.into(),
            processed: p.processed.load(Relaxed),
            total: p.total.load(Relaxed),
            rebuilt: p.rebuilt.load(Relaxed),
            rewritten: p.rewritten.load(Relaxed),
            stage_changes: p.stage_changes.load(Relaxed),
            rule_set_version: job.rule_set_version.clone(),
            started_at: Some(timestamp_to_proto(job.started_at)),
            finished_at: finished_at.map(timestamp_to_proto),
            error,
            superseded_by,
        }))
    }

    #[tracing::instrument(name = "IdentifyVisitor", skip_all, fields(lead_id))]
    async fn identify_visitor(
        &self,
        request: Request<pb::IdentifyVisitorRequest>,
    ) -> Result<Response<pb::IdentifyVisitorResponse>, Status> {
        let token = super::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        let visitor = convert::visitor_id(req.visitor_id, "visitor_id", &mut v);
        let lead_id = required_lead_id(req.lead_id, &mut v);
        let (Some(visitor), Some(lead_id)) = v.into_result((visitor, lead_id))? else {
            return Err(Status::internal("missing visitor or lead id"));
        };
        tracing::Span::current().record("lead_id", tracing::field::display(&lead_id));
        let rules = self.state.rules();
        match crate::engine::identify(&self.state, &rules, &visitor, &lead_id).await.map_err(ApiError::from)? {
            crate::engine::Identified::Merged { lead, merged_signals } => {
                if merged_signals > 0 {
                    let details = [("visitor_id", visitor.to_string()), ("merged_signals", merged_signals.to_string())];
                    let event = audit::event(&self.state, "visitor.identified", "", &token, lead_id.as_str(), &details);
                    audit::record(&self.state, event).await;
                }
                let now = self.state.clock.now();
                let score = convert::score_to_proto(&lead, &rules.primary().score(&lead, now), &rules.version);
                Ok(Response::new(pb::IdentifyVisitorResponse { score: Some(score), merged_signals }))
            }
            crate::engine::Identified::UnknownVisitor => {
                Err(ApiError::NotFound(format!("visitor '{visitor}' sent no signal")).into())
            }
            crate::engine::Identified::AlreadyIdentified(other) => Err(ApiError::FailedPrecondition {
                message: format!("visitor '{visitor}' was already identified as lead '{other}'"),
                reason: "VISITOR_ALREADY_IDENTIFIED",
                metadata: vec![("lead_id".into(), other.to_string())],
            }
            .into()),
        }
    }
}

pub fn simulation_to_proto(version: &str, s: &crate::engine::Simulation) -> pb::SimulateRuleSetResponse {
    pb::SimulateRuleSetResponse {
        version: version.to_owned(),
        leads_evaluated: s.leads_evaluated,
        leads_rebuilt: s.leads_rebuilt,
        transitions: s
            .transitions
            .iter()
            .map(|t| pb::StageTransition {
                from: convert::stage_to_proto(t.from).into(),
                to: convert::stage_to_proto(t.to).into(),
                count: t.count,
                example_lead_ids: t.examples.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        rule_errors: s
            .rule_errors
            .iter()
            .map(|e| pb::RuleEvaluationErrors {
                rule_id: e.rule_id.clone(),
                leads: e.leads,
                example_lead_ids: e.examples.iter().map(ToString::to_string).collect(),
                error: e.error.clone(),
            })
            .collect(),
    }
}
