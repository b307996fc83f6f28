//! Traces: an in-process OTLP collector receives the spans of a
//! `RecordSignals` call that continues the caller's trace.
//!
//! A test binary of its own: the subscriber is process-wide, as in the
//! service, and no other test's spans or callsites interfere.

#[allow(dead_code)]
#[path = "it/helpers.rs"]
mod helpers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use leadscore::api::pb;
use leadscore::telemetry::{TraceSettings, install_propagator, subscriber, tracer_provider};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing_subscriber::EnvFilter;

use helpers::{RedisServer, TestApp, now_millis, record, settings, signal};

/// Keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()).and_then(|v| match &v.value {
        Some(Value::StringValue(s)) => Some(s.clone()),
        Some(Value::IntValue(i)) => Some(i.to_string()),
        Some(Value::BoolValue(b)) => Some(b.to_string()),
        Some(Value::DoubleValue(d)) => Some(d.to_string()),
        _ => None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_signals_call_continues_the_callers_trace_down_to_redis() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let telemetry = tracer_provider(&TraceSettings {
        endpoint: format!("http://127.0.0.1:{port}"),
        service_name: "leadscore-test".into(),
        sample_ratio: 1.0,
    })
    .unwrap();
    install_propagator();
    tracing::subscriber::set_global_default(subscriber(telemetry.provider(), false, EnvFilter::new("info"))).unwrap();

    let redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    let mut client = app.client().await;
    let email = "ada.lovelace@example.com";
    let attributes: HashMap<String, String> =
        [("email".to_string(), email.to_string()), ("seniority".to_string(), "vp".to_string())].into();
    client
        .upsert_lead(pb::UpsertLeadRequest {
            lead: Some(pb::Lead { lead_id: "traced".into(), attributes, ..Default::default() }),
        })
        .await
        .unwrap();
    let mut s = signal("t1", "traced", "page_view", now_millis());
    s.properties.insert("url".into(), format!("https://example.com/?who={email}"));
    let mut request = tonic::Request::new(record(vec![s]));
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    client.record_signals(request).await.unwrap();
    app.stop().await;
    // Flush: the spans reach the collector before shutdown returns.
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let spans = collector.0.lock().unwrap().clone();
    let in_trace: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == TRACE_ID).collect();
    let server = in_trace.iter().find(|s| s.name == "leadscore.v1.LeadScoring/RecordSignals").unwrap_or_else(|| {
        panic!(
            "no server span in {:?}",
            spans.iter().map(|s| (&s.name, hex(&s.trace_id), hex(&s.parent_span_id))).collect::<Vec<_>>()
        )
    });
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN, "the server span is the caller's child");
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(server, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(attribute(server, "rpc.service").as_deref(), Some("leadscore.v1.LeadScoring"));
    assert_eq!(attribute(server, "rpc.method").as_deref(), Some("RecordSignals"));
    assert_eq!(attribute(server, "rpc.grpc.status_code").as_deref(), Some("0"));

    // Redis spans descend from the server span.
    let by_id: HashMap<String, &Span> = in_trace.iter().map(|s| (hex(&s.span_id), *s)).collect();
    let descends = |span: &Span| {
        let mut parent = hex(&span.parent_span_id);
        while let Some(p) = by_id.get(&parent) {
            if std::ptr::eq(*p, *server) {
                return true;
            }
            parent = hex(&p.parent_span_id);
        }
        false
    };
    let redis_spans: Vec<&&Span> =
        in_trace.iter().filter(|s| attribute(s, "db.system").as_deref() == Some("redis")).collect();
    assert!(!redis_spans.is_empty(), "no Redis span in {:?}", in_trace.iter().map(|s| &s.name).collect::<Vec<_>>());
    assert!(redis_spans.iter().all(|s| descends(s) && s.kind == 3), "Redis spans are client children of the call");
    assert!(redis_spans.iter().any(|s| attribute(s, "db.operation.name").as_deref() == Some("EVALSHA")));

    // No personal data anywhere.
    for span in &spans {
        for a in &span.attributes {
            let value = format!("{:?}", a.value);
            assert!(!value.contains(email) && !value.contains("lovelace"), "{} = {value} in {}", a.key, span.name);
        }
    }
}
