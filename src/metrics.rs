//! Prometheus metrics: one registry per service instance, served as text on
//! its own HTTP port (`metrics_addr`), and a tower layer that measures every
//! gRPC call.

use crate::store::TriggerQueue;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::Instrument;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric leadscore exports.
pub struct Metrics {
    registry: Registry,
    /// `method` is `/package.Service/Method`; `code` the gRPC status name.
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    /// Signals by outcome: accepted, duplicate, capped.
    pub signals: IntCounterVec,
    /// Stage changes by from, to and what made them (rule, manual).
    transitions: IntCounterVec,
    /// Follow-up deadlines this replica found passed without a decision.
    sla_breaches: IntCounter,
    erased: IntCounterVec,
    rule_set: IntGaugeVec,
    /// Redis command (or pipeline) latency by operation.
    pub redis_duration: HistogramVec,
    /// Per consumer group, as Redis holds them (the same on every replica).
    triggers: IntGaugeVec,
    /// Consumer groups this replica served, for `triggers`.
    trigger_groups: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Conditions that failed to evaluate, by rule and rule-set version.
    pub rule_errors: IntCounterVec,
    /// gRPC connections open now.
    pub connections_open: IntGauge,
    /// Connections closed by the service, and accept errors, by reason.
    pub connections_closed: IntCounterVec,
    /// Per webhook endpoint, as the store holds them (the same on every replica).
    webhooks: IntGaugeVec,
    webhook_oldest: prometheus::GaugeVec,
    /// From an event (stage change, trigger) to the receiver's 2xx, on the
    /// replica that delivered it.
    webhook_latency: HistogramVec,
    /// When each rule's failures were last logged, and how many since.
    rule_error_log: std::sync::Mutex<std::collections::HashMap<String, (Instant, u64)>>,
}

/// A rule's evaluation failures are logged at most this often.
const RULE_ERROR_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The hook a rule set tells of conditions that fail to evaluate: counted
/// in `leadscore_rule_evaluation_errors_total{rule, rule_set_version}` and
/// logged at WARN, at most once per rule every 10 s with the count since.
pub fn rule_failure_hook(metrics: Arc<Metrics>) -> crate::rules::FailureHook {
    Arc::new(move |version, failure| {
        metrics.rule_errors.with_label_values(&[failure.rule_id.as_str(), version]).inc();
        let now = Instant::now();
        let mut log = metrics.rule_error_log.lock().unwrap_or_else(|p| p.into_inner());
        let due = match log.get_mut(&failure.rule_id) {
            Some((at, count)) => {
                *count += 1;
                (now.duration_since(*at) >= RULE_ERROR_LOG_EVERY).then(|| {
                    *at = now;
                    std::mem::take(count)
                })
            }
            None => {
                // Bounded: one entry per rule id of the loaded rule sets.
                log.insert(failure.rule_id.clone(), (now, 0));
                Some(1)
            }
        };
        if let Some(count) = due {
            tracing::warn!(
                rule = %failure.rule_id,
                rule_set = %version,
                error = %failure.error,
                failures = count,
                "a rule's condition failed to evaluate and was read as not holding"
            );
        }
    })
}

/// Most consumer groups reported (group names come from clients).
const MAX_TRIGGER_GROUPS: usize = 64;

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("leadscore".into()), None).expect("a valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("grpc_requests_total", "gRPC calls handled, by method and status code"),
            &["method", "code"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("grpc_request_duration_seconds", "gRPC call latency until the response headers")
                .buckets(vec![0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["method"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new("grpc_requests_in_flight", "gRPC calls being handled").expect("valid metric");
        let signals = IntCounterVec::new(
            Opts::new("signals_total", "Signals received by RecordSignals, by outcome"),
            &["status"],
        )
        .expect("valid metric");
        let transitions = IntCounterVec::new(
            Opts::new("stage_transitions_total", "Stage changes made by this replica"),
            &["from", "to", "by"],
        )
        .expect("valid metric");
        let sla_breaches = IntCounter::new(
            "sla_breaches_total",
            "Hand-overs to sales whose follow-up deadline ([sla] in the rule file) this replica found passed \
             without a decision",
        )
        .expect("valid metric");
        let erased = IntCounterVec::new(
            Opts::new(
                "leads_erased_total",
                "Leads and visitors this replica erased: by ForgetLead (request) or a retention policy (retention)",
            ),
            &["by"],
        )
        .expect("valid metric");
        for by in ["request", "retention"] {
            erased.with_label_values(&[by]);
        }
        let rule_set = IntGaugeVec::new(Opts::new("rule_set_info", "The active rule set (value 1)"), &["version"])
            .expect("valid metric");
        let redis_duration = HistogramVec::new(
            HistogramOpts::new("redis_command_duration_seconds", "Redis command or pipeline latency, by operation")
                .buckets(vec![
                    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            &["operation"],
        )
        .expect("valid metric");
        let triggers = IntGaugeVec::new(
            Opts::new(
                "triggers",
                "Nurture triggers of a consumer group by state: fired (all groups alike), delivered, pending, \
                 dead_letters, acked, redelivered",
            ),
            &["group", "state"],
        )
        .expect("valid metric");
        let rule_errors = IntCounterVec::new(
            Opts::new(
                "rule_evaluation_errors_total",
                "Conditions that failed to evaluate for a lead (read as not holding), by rule and rule-set version",
            ),
            &["rule", "rule_set_version"],
        )
        .expect("valid metric");
        let connections_open = IntGauge::new("connections_open", "gRPC connections open now").expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "connections_closed_total",
                "gRPC connections closed by the service, by reason: limit (max_connections reached), \
                 handshake_timeout, idle, accept_error (accepting failed, e.g. out of descriptors)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let webhooks = IntGaugeVec::new(
            Opts::new(
                "webhook_events",
                "Webhook endpoints by state: delivered, failed (attempts), retried (attempts), dead_letters (held \
                 now), replaying, backlog",
            ),
            &["endpoint", "state"],
        )
        .expect("valid metric");
        let webhook_oldest = prometheus::GaugeVec::new(
            Opts::new(
                "webhook_oldest_pending_seconds",
                "Age of the oldest change or replayed event waiting for a webhook endpoint (0: none waits)",
            ),
            &["endpoint"],
        )
        .expect("valid metric");
        let webhook_latency = HistogramVec::new(
            HistogramOpts::new(
                "webhook_delivery_latency_seconds",
                "From a stage change or trigger to the webhook receiver's 2xx, retries included",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(Opts::new("build_info", "The running build (value 1)"), &["version"])
            .expect("valid metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(signals.clone()),
            Box::new(transitions.clone()),
            Box::new(sla_breaches.clone()),
            Box::new(erased.clone()),
            Box::new(rule_set.clone()),
            Box::new(redis_duration.clone()),
            Box::new(triggers.clone()),
            Box::new(rule_errors.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_closed.clone()),
            Box::new(webhooks.clone()),
            Box::new(webhook_oldest.clone()),
            Box::new(webhook_latency.clone()),
            Box::new(build),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            duration,
            in_flight,
            signals,
            transitions,
            sla_breaches,
            erased,
            rule_set,
            redis_duration,
            triggers,
            trigger_groups: Default::default(),
            rule_errors,
            rule_error_log: Default::default(),
            connections_open,
            connections_closed,
            webhooks,
            webhook_oldest,
            webhook_latency,
        }
    }

    /// The delivery latency histogram of a webhook endpoint.
    pub fn webhook_latency(&self, endpoint: &str) -> prometheus::Histogram {
        self.webhook_latency.with_label_values(&[endpoint])
    }

    /// Sets a webhook endpoint's figures, read from the store.
    pub fn set_webhook(&self, endpoint: &str, states: &[(&str, u64)], oldest_pending_seconds: f64) {
        for (state, value) in states {
            self.webhooks.with_label_values(&[endpoint, state]).set(i64::try_from(*value).unwrap_or(i64::MAX));
        }
        self.webhook_oldest.with_label_values(&[endpoint]).set(oldest_pending_seconds);
    }

    /// Counts stage changes that were written.
    pub fn stage_changes(&self, changes: &[crate::domain::StageChange]) {
        for c in changes {
            let by = match c.cause {
                crate::domain::Cause::Rule { .. } => "rule",
                crate::domain::Cause::Manual { .. } => "manual",
            };
            self.transitions.with_label_values(&[c.from.as_str(), c.to.as_str(), by]).inc();
        }
    }

    /// Counts erased leads and visitors (`by`: request or retention).
    pub fn erased(&self, by: &str, n: u64) {
        self.erased.with_label_values(&[by]).inc_by(n);
    }

    /// Counts follow-up deadlines found passed.
    pub fn sla_breaches(&self, breaches: u64) {
        self.sla_breaches.inc_by(breaches);
    }

    /// Remembers a consumer group to report its triggers.
    pub fn trigger_group(&self, group: &str) {
        let mut groups = self.trigger_groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.len() < MAX_TRIGGER_GROUPS && !groups.contains(group) {
            groups.insert(group.to_owned());
        }
    }

    /// Reads the trigger figures of the known groups from the store.
    pub async fn refresh_triggers(&self, store: &dyn TriggerQueue) {
        let groups: Vec<String> =
            self.trigger_groups.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        for group in groups {
            let Ok(stats) = store.trigger_stats(&group).await else { continue };
            for (state, value) in [
                ("fired", stats.fired),
                ("delivered", stats.delivered),
                ("pending", stats.pending),
                ("dead_letters", stats.dead_letters),
                ("acked", stats.acked),
                ("redelivered", stats.redelivered),
            ] {
                self.triggers.with_label_values(&[group.as_str(), state]).set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    /// Marks `version` as the active rule set (and no other).
    pub fn set_rule_set(&self, version: &str) {
        self.rule_set.reset();
        self.rule_set.with_label_values(&[version]).set(1);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What is read from the store at each scrape (trigger and webhook figures).
pub type Refresh = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `stop` completes; the figures
/// kept in the store are read at each scrape by `refresh` (bounded by a
/// second).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (metrics, refresh) = (metrics.clone(), refresh.clone());
            async move {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), refresh()).await;
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}

/// Measures every gRPC call (count by method and status, latency, calls in
/// flight), runs it in its server span (see `server_span`) and ends it at
/// its deadline: the caller's `grpc-timeout` or `request_timeout`,
/// whichever is sooner, answered `DEADLINE_EXCEEDED`.
///
/// Every call ends in exactly one counted outcome: the `grpc-status` of a
/// trailers-only response (how tonic answers an error), `OK` otherwise,
/// `DEADLINE_EXCEEDED` at the deadline, and `CANCELLED` when the call is
/// dropped before it answers (the client reset the stream or went away).
/// A stream that fails after its first message counts as `OK`.
#[derive(Clone)]
pub struct MetricsLayer {
    pub metrics: Arc<Metrics>,
    pub request_timeout: std::time::Duration,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone(), request_timeout: self.request_timeout }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    request_timeout: std::time::Duration,
}

/// One call's outcome, counted exactly once: when it answers, or when it
/// is dropped unanswered.
struct Outcome {
    metrics: Arc<Metrics>,
    method: &'static str,
    started: Instant,
    /// When the call's deadline passes; a call dropped this close to it
    /// was given up by a caller whose own clock ran out first.
    deadline: tokio::time::Instant,
    slack: std::time::Duration,
    code: Option<i32>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        let given_up_at_deadline = tokio::time::Instant::now() + self.slack >= self.deadline;
        let code = self.code.unwrap_or(if given_up_at_deadline { 4 } else { 1 });
        self.metrics.in_flight.dec();
        self.metrics.requests.with_label_values(&[self.method, code_name(code)]).inc();
        self.metrics.duration.with_label_values(&[self.method]).observe(self.started.elapsed().as_secs_f64());
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !is_grpc(request.headers()) {
            // The gRPC-over-HTTP/2 spec: not gRPC, so not a call to count.
            let mut response = http::Response::new(R::default());
            *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            response.headers_mut().insert(http::header::ACCEPT, http::HeaderValue::from_static("application/grpc"));
            return Box::pin(async move { Ok(response) });
        }
        let method = known_method(request.uri().path());
        let span = server_span(method, request.headers());
        let caller = caller_timeout(request.headers());
        let timeout = caller.map_or(self.request_timeout, |t| t.min(self.request_timeout));
        // The caller's clock started before ours: it gives up a little sooner.
        let slack = caller.map_or(std::time::Duration::ZERO, |t| (t / 10).max(std::time::Duration::from_millis(20)));
        self.metrics.in_flight.inc();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcome = Outcome { metrics: self.metrics.clone(), method, started, deadline, slack, code: None };
        let future = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut result =
                    match tokio::time::timeout_at(deadline, future).await {
                        Ok(result) => result,
                        Err(_) => Ok(tonic::Status::deadline_exceeded("the call's deadline passed before it finished")
                            .into_http()),
                    };
                if let Ok(response) = &mut result {
                    undecodable_is_invalid_argument(response.headers_mut());
                }
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .unwrap_or(0),
                    Err(_) => 2,
                };
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code);
                if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                    span.record("otel.status_code", "ERROR");
                }
                outcome.code = Some(code);
                drop(outcome);
                result
            }
            .instrument(span),
        )
    }
}

/// Whether a request says it is gRPC (`application/grpc`, `+proto`, …).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v == "application/grpc" || v.starts_with("application/grpc+") || v.starts_with("application/grpc;")
    })
}

/// A request that is not a valid message of its method's type is the
/// caller's mistake: INVALID_ARGUMENT with a plain message, not INTERNAL
/// with the decoder's text (how the codec answers it).
fn undecodable_is_invalid_argument(headers: &mut http::HeaderMap) {
    let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.replace("%20", " ").contains("failed to decode Protobuf message"));
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("the request is not a valid protobuf message of this method's request type"),
        );
    }
}

/// The caller's deadline from `grpc-timeout` (`<up to 8 digits><unit>`,
/// units H, M, S, m, u, n); `None` when absent or malformed.
fn caller_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The server span of a call (OpenTelemetry RPC conventions), continuing
/// the caller's trace from `traceparent`; carries the trace id for logs.
fn server_span(method: &'static str, headers: &http::HeaderMap) -> tracing::Span {
    let name = method.trim_start_matches('/');
    let (service, rpc) = name.split_once('/').unwrap_or((name, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = rpc,
        rpc.grpc.status_code = tracing::field::Empty,
        caller = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, headers);
    if let Some(id) = span.in_scope(crate::telemetry::current_trace_id) {
        span.record("trace_id", id);
    }
    span
}

/// The path of a known RPC, or `other` (paths come from clients: an
/// unbounded label set would be a memory leak).
fn known_method(path: &str) -> &'static str {
    crate::auth::RPCS.iter().map(|(p, _)| *p).find(|m| *m == path).unwrap_or("other")
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.requests.with_label_values(&["/leadscore.v1.LeadScoring/ScoreLead", "NOT_FOUND"]).inc();
        m.set_rule_set("v1");
        m.set_rule_set("v2");
        let text = m.render();
        assert!(
            text.contains(
                "leadscore_grpc_requests_total{code=\"NOT_FOUND\",method=\"/leadscore.v1.LeadScoring/ScoreLead\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("leadscore_rule_set_info{version=\"v2\"} 1"), "{text}");
        assert!(!text.contains("version=\"v1\""), "{text}");
        assert!(text.contains("leadscore_build_info{version="), "{text}");
        assert_eq!(known_method("/x.Y/Z"), "other");
        let timeout = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            caller_timeout(&h)
        };
        assert_eq!(timeout("50m"), Some(std::time::Duration::from_millis(50)));
        assert_eq!(timeout("2S"), Some(std::time::Duration::from_secs(2)));
        assert_eq!(timeout("123456789S"), None);
        assert_eq!(timeout("m"), None);
        assert_eq!(timeout("5x"), None);
        assert_eq!(code_name(5), "NOT_FOUND");
    }
}
