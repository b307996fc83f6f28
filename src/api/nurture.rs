//! `leadscore.v1.Nurture`: trigger delivery to marketing automation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::convert::{self, timestamp_to_proto};
use super::error::{ApiError, Violations};
use super::pb::{self, nurture_server::Nurture};
use super::state::AppState;
use crate::domain::Delivery;
use crate::engine::{StoreError, triggers};

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

fn ids(raw: &[String], v: &mut Violations) {
    if raw.is_empty() || raw.len() > MAX_IDS {
        v.add("trigger_ids", format!("send 1 to {MAX_IDS} ids (got {})", raw.len()));
    }
    if let Some(i) = raw.iter().position(|id| id.is_empty() || id.len() > 128) {
        v.add(format!("trigger_ids[{i}]"), "not a trigger id");
    }
}

pub fn trigger_to_proto(d: &Delivery) -> pb::NurtureTrigger {
    let (lead_id, visitor_id) = convert::subject_ids(&d.lead_id);
    let t = &d.trigger;
    pb::NurtureTrigger {
        trigger_id: d.trigger_id.clone(),
        definition_id: t.definition_id.clone(),
        program: t.program.clone(),
        lead_id,
        visitor_id,
        fired_at: Some(timestamp_to_proto(t.fired_at)),
        reason: t.reason.clone(),
        score: Some(convert::score_snapshot_to_proto(&t.score)),
        stage: convert::stage_to_proto(t.stage).into(),
        delivery_count: d.delivery_count,
        owner: t.breach.as_ref().map(|b| b.owner.clone()).unwrap_or_default(),
        handed_over_at: t.breach.as_ref().map(|b| timestamp_to_proto(b.handed_at)),
        due: t.breach.as_ref().map(|b| timestamp_to_proto(b.due)),
        late_by: t.breach.as_ref().map(|b| convert::duration_to_proto(b.late_by_ms)),
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
        ids(&req.trigger_ids, &mut v);
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
        if req.limit > 1000 {
            v.add("limit", "at most 1000");
        }
        v.into_result(())?;
        configured(&self.state, &req.group)?;
        let limit = if req.limit == 0 { 100 } else { req.limit as usize };
        let dead = triggers::dead_letters(&self.state, &req.group, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::ListDeadLettersResponse { triggers: dead.iter().map(trigger_to_proto).collect() }))
    }

    #[tracing::instrument(name = "ReplayDeadLetters", skip_all, fields(group))]
    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::default();
        name(&req.group, "group", &mut v);
        ids(&req.trigger_ids, &mut v);
        v.into_result(())?;
        configured(&self.state, &req.group)?;
        let replayed = triggers::replay(&self.state, &req.group, &req.trigger_ids).await.map_err(ApiError::from)?;
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
}
