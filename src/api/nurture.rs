//! `leadscore.v1.Nurture`: trigger delivery to marketing automation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp_to_proto, trigger_to_proto};
use super::error::{ApiError, Violations};
use super::pb::{self, nurture_server::Nurture};
use super::state::AppState;
use crate::domain::webhook::EndpointSpec;
use crate::engine::{StoreError, audit, triggers, webhooks};

const DEFAULT_IN_FLIGHT: u32 = 100;
const MAX_IN_FLIGHT: u32 = 10_000;
const MAX_IDS: usize = 1000;

pub struct NurtureService {
    state: Arc<AppState>,
}

impl NurtureService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// Group and consumer names (`domain::nurture::is_consumer_name`).
fn name(raw: &str, field: &str, v: &mut Violations) {
    if !crate::domain::nurture::is_consumer_name(raw) {
        v.add(field, crate::domain::nurture::CONSUMER_NAME_RULE);
    }
}

/// A group the operator configured (`trigger_groups`): a misspelled name
/// must not create a consumer group that keeps every trigger forever.
fn configured(state: &AppState, group: &str) -> Result<(), Status> {
    if state.trigger_groups.iter().any(|g| g == group) {
        return Ok(());
    }
    Err(ApiError::NotFound(format!(
        "no consumer group '{}'; the configured groups (trigger_groups) are: {}",
        super::error::bounded(group, 64),
        state.trigger_groups.join(", ")
    ))
    .into())
}

/// 1 to `MAX_IDS` ids, each 1 to `max_len` bytes.
fn ids(raw: &[String], field: &str, max_len: usize, what: &str, v: &mut Violations) {
    if raw.is_empty() || raw.len() > MAX_IDS {
        v.add(field, format!("send 1 to {MAX_IDS} ids (got {})", raw.len()));
    }
    if let Some(i) = raw.iter().position(|id| id.is_empty() || id.len() > max_len) {
        v.add(format!("{field}[{i}]"), format!("not {what}"));
    }
}

/// The `limit` of a listing: 0 for the default of 100, at most 1000.
fn listing_limit(limit: u32, v: &mut Violations) -> usize {
    if limit > 1000 {
        v.add("limit", "at most 1000");
    }
    if limit == 0 { 100 } else { limit as usize }
}

/// A configured webhook endpoint, by name.
fn endpoint<'a>(state: &'a AppState, name: &str) -> Result<&'a EndpointSpec, Status> {
    if let Some(spec) = state.webhooks.iter().find(|w| w.name == name) {
        return Ok(spec);
    }
    let known: Vec<&str> = state.webhooks.iter().map(|w| w.name.as_str()).collect();
    Err(ApiError::NotFound(format!(
        "no webhook endpoint '{}'; the configured endpoints (webhooks) are: {}",
        super::error::bounded(name, 64),
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    ))
    .into())
}

fn millis_to_proto(ms: i64) -> Option<pbjson_types::Timestamp> {
    (ms > 0).then(|| timestamp_to_proto(crate::domain::Timestamp::from_millis(ms)))
}

fn webhook_status_to_proto(
    spec: &EndpointSpec,
    s: &webhooks::Status,
    now: crate::domain::Timestamp,
) -> pb::WebhookStatus {
    pb::WebhookStatus {
        endpoint: spec.name.clone(),
        url: spec.shown_url(),
        events: spec.events.clone(),
        delivered: s.counters.delivered,
        failed: s.counters.failed,
        retried: s.counters.retried,
        dead_letters: s.dead_letters,
        replaying: s.replaying,
        backlog: s.backlog,
        backlog_capped: s.backlog_capped,
        oldest_pending_age: s.oldest_pending.map(|at| convert::duration_to_proto((now.millis() - at.millis()).max(0))),
        last_error: s.counters.last_error.clone(),
        last_error_at: millis_to_proto(s.counters.last_error_at_ms),
        last_success_at: millis_to_proto(s.counters.last_success_at_ms),
        max_attempts: spec.retry.max_attempts,
    }
}

fn letter_to_proto(l: &crate::store::WebhookLetter) -> pb::WebhookDeadLetter {
    pb::WebhookDeadLetter {
        event_id: l.event_id.clone(),
        lead_id: l.lead_id.clone(),
        event_type: l.event_type.clone(),
        occurred_at: millis_to_proto(l.occurred_at_ms),
        attempts: l.attempts,
        last_error: l.last_error.clone(),
        dead_at: millis_to_proto(l.dead_at_ms),
        body: l.body.clone(),
    }
}

type TriggerStream = Pin<Box<dyn Stream<Item = Result<pb::StreamTriggersResponse, Status>> + Send>>;

/// Triggers for one consumer, as many as it has room for. A consumer that
/// goes away leaves what it held to be redelivered after the visibility
/// timeout.
struct TriggerPoller {
    state: Arc<AppState>,
    group: String,
    consumer: String,
    max_in_flight: u64,
    /// The consumer held `max_in_flight` unacknowledged triggers last time.
    full: bool,
}

impl super::polling::Poller for TriggerPoller {
    type Item = pb::StreamTriggersResponse;

    fn full(&self) -> bool {
        self.full
    }

    fn next(&mut self) -> futures::future::BoxFuture<'_, Result<Vec<Self::Item>, StoreError>> {
        Box::pin(async move {
            let delivered = triggers::deliver(&self.state, &self.group, &self.consumer, self.max_in_flight).await?;
            self.full = delivered.full;
            Ok(delivered
                .triggers
                .iter()
                .map(|d| pb::StreamTriggersResponse { trigger: Some(trigger_to_proto(d)) })
                .collect())
        })
    }
}

#[tonic::async_trait]
impl Nurture for NurtureService {
    type StreamTriggersStream = TriggerStream;

    #[tracing::instrument(name = "StreamTriggers", skip_all, fields(group, consumer))]
    async fn stream_triggers(
        &self,
        request: Request<pb::StreamTriggersRequest>,
    ) -> Result<Response<Self::StreamTriggersStream>, Status> {
        let connection = request.remote_addr().map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let token = request.extensions().get::<crate::auth::Caller>().map_or("anonymous", |c| c.0.as_str()).to_owned();
        let req = request.into_inner();
        let mut v = Violations::default();
        name(&req.group, "group", &mut v);
        name(&req.consumer, "consumer", &mut v);
        if req.max_in_flight > MAX_IN_FLIGHT {
            v.add("max_in_flight", format!("at most {MAX_IN_FLIGHT}"));
        }
        v.into_result(())?;
        configured(&self.state, &req.group)?;
        tracing::Span::current().record("group", req.group.as_str()).record("consumer", req.consumer.as_str());
        self.state.metrics.trigger_group(&req.group);
        let max_in_flight = u64::from(if req.max_in_flight == 0 { DEFAULT_IN_FLIGHT } else { req.max_in_flight });
        // Fails now, not in the stream, when the store is down.
        triggers::in_flight(&self.state, &req.group, &req.consumer).await.map_err(ApiError::from)?;
        let slot = self.state.trigger_streams.open(&connection, &token)?;
        let poller = TriggerPoller {
            state: self.state.clone(),
            group: req.group,
            consumer: req.consumer,
            max_in_flight,
            full: false,
        };
        // Woken when a trigger is fired anywhere; on its own only to take
        // over triggers another consumer held past the visibility timeout.
        let visibility = Duration::from_millis(self.state.delivery.visibility_timeout_ms.max(0) as u64);
        let fallback = (visibility / 2).min(Duration::from_secs(15)).max(self.state.limits.feed_poll_interval);
        let wake =
            self.state.trigger_streams.subscribe(self.state.core().clone(), self.state.limits.feed_poll_interval);
        let stream =
            super::polling::stream(&self.state, 64, poller, super::polling::Wait::Wake { wake, fallback, slot });
        Ok(Response::new(Box::pin(stream) as TriggerStream))
    }

    #[tracing::instrument(name = "AckTriggers", skip_all, fields(group))]
    async fn ack_triggers(
        &self,
        request: Request<pb::AckTriggersRequest>,
    ) -> Result<Response<pb::AckTriggersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        name(&req.group, "group", &mut v);
        ids(&req.trigger_ids, "trigger_ids", 128, "a trigger id", &mut v);
        v.into_result(())?;
        configured(&self.state, &req.group)?;
        let acknowledged = triggers::ack(&self.state, &req.group, &req.trigger_ids).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::AckTriggersResponse { acknowledged }))
    }

    #[tracing::instrument(name = "ListDeadLetters", skip_all, fields(group))]
    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        name(&req.group, "group", &mut v);
        let limit = listing_limit(req.limit, &mut v);
        v.into_result(())?;
        configured(&self.state, &req.group)?;
        let dead = triggers::dead_letters(&self.state, &req.group, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListDeadLettersResponse { triggers: dead.iter().map(trigger_to_proto).collect() }))
    }

    #[tracing::instrument(name = "ReplayDeadLetters", skip_all, fields(group))]
    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let token = super::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        name(&req.group, "group", &mut v);
        ids(&req.trigger_ids, "trigger_ids", 128, "a trigger id", &mut v);
        v.into_result(())?;
        configured(&self.state, &req.group)?;
        let replayed = triggers::replay(&self.state, &req.group, &req.trigger_ids).await.map_err(ApiError::from)?;
        if replayed > 0 {
            let details = [("asked", req.trigger_ids.len().to_string()), ("replayed", replayed.to_string())];
            let event = audit::event(&self.state, "dead_letters.replayed", "", &token, &req.group, &details);
            audit::record(&self.state, event).await;
        }
        Ok(Response::new(pb::ReplayDeadLettersResponse { replayed }))
    }

    #[tracing::instrument(name = "ListTriggerDefinitions", skip_all)]
    async fn list_trigger_definitions(
        &self,
        _: Request<pb::ListTriggerDefinitionsRequest>,
    ) -> Result<Response<pb::ListTriggerDefinitionsResponse>, Status> {
        let rules = self.state.rules();
        let definitions = rules
            .triggers
            .iter()
            .map(|t| pb::TriggerDefinition {
                id: t.id.clone(),
                on: t.on.to_string(),
                when: t.when.as_ref().map(|(w, _)| w.clone()).unwrap_or_default(),
                cooldown: Some(convert::duration_to_proto(t.cooldown_ms)),
                program: t.program.clone(),
            })
            .collect();
        Ok(Response::new(pb::ListTriggerDefinitionsResponse { rule_set_version: rules.version.clone(), definitions }))
    }

    #[tracing::instrument(name = "GetWebhookStatus", skip_all)]
    async fn get_webhook_status(
        &self,
        request: Request<pb::GetWebhookStatusRequest>,
    ) -> Result<Response<pb::GetWebhookStatusResponse>, Status> {
        let req = request.into_inner();
        let specs: Vec<&EndpointSpec> = if req.endpoint.is_empty() {
            self.state.webhooks.iter().collect()
        } else {
            vec![endpoint(&self.state, &req.endpoint)?]
        };
        let now = self.state.clock.now();
        let mut endpoints = Vec::with_capacity(specs.len());
        for spec in specs {
            let status = webhooks::status(&self.state, spec).await.map_err(ApiError::from)?;
            endpoints.push(webhook_status_to_proto(spec, &status, now));
        }
        Ok(Response::new(pb::GetWebhookStatusResponse { endpoints }))
    }

    #[tracing::instrument(name = "ListWebhookDeadLetters", skip_all, fields(endpoint))]
    async fn list_webhook_dead_letters(
        &self,
        request: Request<pb::ListWebhookDeadLettersRequest>,
    ) -> Result<Response<pb::ListWebhookDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        let limit = listing_limit(req.limit, &mut v);
        v.into_result(())?;
        let spec = endpoint(&self.state, &req.endpoint)?;
        let letters = webhooks::dead_letters(&self.state, &spec.name, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListWebhookDeadLettersResponse { letters: letters.iter().map(letter_to_proto).collect() }))
    }

    #[tracing::instrument(name = "ReplayWebhookDeadLetters", skip_all, fields(endpoint))]
    async fn replay_webhook_dead_letters(
        &self,
        request: Request<pb::ReplayWebhookDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayWebhookDeadLettersResponse>, Status> {
        let token = super::token_name(&request);
        let req = request.into_inner();
        let mut v = Violations::default();
        ids(&req.event_ids, "event_ids", 160, "a webhook event id", &mut v);
        v.into_result(())?;
        let spec = endpoint(&self.state, &req.endpoint)?;
        let replayed = webhooks::replay(&self.state, &spec.name, &req.event_ids).await.map_err(ApiError::from)?;
        if replayed > 0 {
            let details = [("asked", req.event_ids.len().to_string()), ("replayed", replayed.to_string())];
            let event = audit::event(&self.state, "webhook_dead_letters.replayed", "", &token, &spec.name, &details);
            audit::record(&self.state, event).await;
        }
        Ok(Response::new(pb::ReplayWebhookDeadLettersResponse { replayed }))
    }
}
