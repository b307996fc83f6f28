//! Logs and traces.
//!
//! Logs: `RUST_LOG` filter (default `info`), human-readable or JSON
//! (`LEADSCORE_LOG_FORMAT=json`); inside a traced call every line carries
//! the trace id.
//!
//! Traces: OpenTelemetry over OTLP/gRPC when `LEADSCORE_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; service name from
//! `OTEL_SERVICE_NAME` (default `leadscore`); the share of new traces kept
//! from `LEADSCORE_TRACE_SAMPLE_RATIO` or `OTEL_TRACES_SAMPLER_ARG` (default
//! 1.0; a caller's sampling decision is followed). Spans are batched and
//! sent by a small runtime of their own, and flushed on shutdown.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    pub endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl TraceSettings {
    /// From the environment; `None` when no endpoint is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let Some(endpoint) = set("LEADSCORE_OTLP_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT")) else {
            return Ok(None);
        };
        let sample_ratio = match set("LEADSCORE_TRACE_SAMPLE_RATIO").or_else(|| set("OTEL_TRACES_SAMPLER_ARG")) {
            None => 1.0,
            Some(text) => text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("trace sample ratio must be a number from 0 to 1, not '{text}'"))?,
        };
        Ok(Some(Self {
            endpoint,
            service_name: set("OTEL_SERVICE_NAME").unwrap_or_else(|| "leadscore".into()),
            sample_ratio,
        }))
    }
}

/// Keeps the trace pipeline alive; `shutdown` flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    pub fn provider(&self) -> Option<&SdkTracerProvider> {
        self.provider.as_ref()
    }

    /// Sends the spans still buffered and stops the exporter. Blocks: call
    /// it outside async code or from `spawn_blocking`.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("leadscore: flushing traces failed: {e}");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Builds the OTLP trace pipeline. Spans are exported from a one-thread
/// runtime owned by the returned `Telemetry` (the SDK's batch processor
/// runs on a plain thread, which cannot drive the gRPC client itself).
pub fn tracer_provider(settings: &TraceSettings) -> Result<Telemetry, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("trace exporter runtime: {e}"))?;
    let exporter = {
        let _inside = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("OTLP exporter for {}: {e}", settings.endpoint))?
    };
    let exporter = OnRuntime { inner: Arc::new(exporter), runtime: runtime.handle().clone() };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
        .with_resource(resource)
        .build();
    Ok(Telemetry { provider: Some(provider), runtime: Some(runtime) })
}

/// Runs each export on the exporter's own runtime.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = self.inner.clone();
        match self.runtime.spawn(async move { inner.export(batch).await }).await {
            Ok(result) => result,
            Err(e) => Err(OTelSdkError::InternalFailure(format!("span export task: {e}"))),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// The subscriber: filter, log lines (with the trace id inside a traced
/// span) and, given a provider, OpenTelemetry spans.
pub fn subscriber(
    provider: Option<&SdkTracerProvider>,
    json: bool,
    filter: EnvFilter,
) -> impl tracing::Subscriber + Send + Sync {
    let otel = provider.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("leadscore")));
    // Colours only for a person at a terminal: redirected logs stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(|| EscapingWriter(std::io::stderr()));
    let logs = if json { fmt.json().with_current_span(false).with_span_list(true).boxed() } else { fmt.boxed() };
    Registry::default().with(filter).with(otel).with(logs)
}

/// Sets the global subscriber from the environment (a second call keeps
/// the first); returns the trace pipeline to shut down at exit.
pub fn init() -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LEADSCORE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let (telemetry, problem) = match TraceSettings::from_env() {
        Ok(Some(settings)) => match tracer_provider(&settings) {
            Ok(t) => (t, None),
            Err(e) => (Telemetry { provider: None, runtime: None }, Some(e)),
        },
        Ok(None) => (Telemetry { provider: None, runtime: None }, None),
        Err(e) => (Telemetry { provider: None, runtime: None }, Some(e)),
    };
    install_propagator();
    let _ = tracing::subscriber::set_global_default(subscriber(telemetry.provider(), json, filter));
    if let Some(problem) = problem {
        tracing::error!("traces are off: {problem}");
    } else if telemetry.provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    telemetry
}

/// Makes incoming `traceparent`/`tracestate` metadata understood.
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
}

/// The W3C trace context of incoming gRPC metadata (`traceparent`,
/// `tracestate`), made the parent of `span`.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// The trace id of the current span, when it is traced.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let id = span.span_context();
    id.is_valid().then(|| id.trace_id().to_string())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn trace_settings_follow_the_environment() {
        assert_eq!(TraceSettings::from_vars(vars(&[])).unwrap(), None);
        let s = TraceSettings::from_vars(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])).unwrap().unwrap();
        assert_eq!((s.endpoint.as_str(), s.service_name.as_str(), s.sample_ratio), ("http://c:4317", "leadscore", 1.0));
        let s = TraceSettings::from_vars(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("LEADSCORE_OTLP_ENDPOINT", "http://mine:4317"),
            ("OTEL_SERVICE_NAME", "scoring-eu"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.endpoint.as_str(), s.service_name.as_str(), s.sample_ratio),
            ("http://mine:4317", "scoring-eu", 0.25)
        );
        let bad = vars(&[("LEADSCORE_OTLP_ENDPOINT", "http://c:4317"), ("LEADSCORE_TRACE_SAMPLE_RATIO", "2")]);
        assert!(TraceSettings::from_vars(bad).unwrap_err().contains("from 0 to 1"));
    }
}

/// Writes log lines with every control character but the final newline,
/// and every character that changes how a line reads (line and paragraph
/// separators, bidirectional controls), escaped as `\uXXXX`: an id or
/// message from a caller cannot forge or disguise log lines.
pub struct EscapingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let body = text.strip_suffix('\n');
        let mut out = String::with_capacity(text.len());
        for c in body.unwrap_or(&text).chars() {
            // Tabs, and the ESC of the formatter's own colours (it escapes
            // ESC in field values itself), pass.
            match crate::text::escaped(c).filter(|_| !matches!(c, '\t' | '\x1b')) {
                Some(escape) => out.push_str(&escape),
                None => out.push(c),
            }
        }
        if body.is_some() {
            out.push('\n');
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod escaping_tests {
    use std::io::Write;

    #[test]
    fn forged_lines_and_bidi_controls_are_escaped() {
        let mut out = super::EscapingWriter(Vec::new());
        out.write_all("lead_id=a\nFAKE LINE\u{2028}x\u{202e}y\n".as_bytes()).unwrap();
        assert_eq!(String::from_utf8(out.0).unwrap(), "lead_id=a\\u000aFAKE LINE\\u2028x\\u202ey\n");
        // In a JSON log line the escapes stay valid JSON.
        let mut out = super::EscapingWriter(Vec::new());
        out.write_all("{\"lead_id\":\"a\u{2028}b\"}\n".as_bytes()).unwrap();
        let line = String::from_utf8(out.0).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(parsed["lead_id"], "a\u{2028}b");
    }
}
