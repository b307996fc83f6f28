//! `Application`: builds the service from settings, binds the listener
//! (port 0 in tests), serves until told to stop, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::api::pb::lead_scoring_server::LeadScoringServer;
use crate::api::pb::nurture_server::NurtureServer;
use crate::api::pb::profiles_server::ProfilesServer;
use crate::api::pb::qualification_server::QualificationServer;
use crate::api::{AppState, Limits, NurtureService, ProfilesService, QualificationService, ScoringService, pb};
use crate::config::{Settings, redacted_url};
use crate::domain::{Clock, IngestPolicy, SystemClock};
use crate::gate::GateLayer;
use crate::rules::{RuleError, RuleSet};
use crate::store::redis::{RedisSettings, RedisStore};
use crate::store::{DeliveryPolicy, FeedPolicy, LeadStore, MemoryStore, StoreError};

/// gRPC service names whose health is reported (plus "" for the server).
const SERVICE_NAMES: [&str; 4] =
    ["leadscore.v1.LeadScoring", "leadscore.v1.Qualification", "leadscore.v1.Nurture", "leadscore.v1.Profiles"];

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot read rule file {path}: {source}")]
    RulesUnreadable { path: String, source: std::io::Error },
    #[error("rule file {path} is invalid:\n{}", errors.iter().map(|e| format!("  {path}: {e}")).collect::<Vec<_>>().join("\n"))]
    RulesInvalid { path: String, errors: Vec<RuleError> },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Security(String),
    #[error("{0}")]
    DataFormat(String),
    #[error("{0}")]
    Webhook(String),
}

/// The bytes of a configured file (`key` names the setting in the error).
fn read(key: &str, path: &std::path::Path) -> Result<Vec<u8>, StartupError> {
    std::fs::read(path).map_err(|e| StartupError::Security(format!("cannot read {key} {}: {e}", path.display())))
}

/// How to reach Redis, TLS files read; `None` without a Redis URL.
pub fn redis_settings(settings: &Settings) -> Result<Option<RedisSettings>, StartupError> {
    let Some(url) = settings.redis_url.clone() else { return Ok(None) };
    let ca = settings.redis_tls_ca.as_deref().map(|p| read("redis_tls_ca", p)).transpose()?;
    let client = match (&settings.redis_tls_cert, &settings.redis_tls_key) {
        (Some(cert), Some(key)) => Some((read("redis_tls_cert", cert)?, read("redis_tls_key", key)?)),
        _ => None,
    };
    Ok(Some(RedisSettings {
        url,
        key_prefix: settings.redis_key_prefix.clone(),
        partitions: settings.redis_partitions,
        command_timeout: settings.redis_timeout.duration(),
        tls: crate::store::redis::RedisTls { ca, client },
    }))
}

/// How callers are authenticated and the connection protected.
pub struct Security {
    pub tokens: Option<Arc<crate::auth::Tokens>>,
    pub tls: Option<ServerTlsConfig>,
}

/// Refuses a TLS file that holds no PEM object of the kind `key` names,
/// naming the file and what is wrong.
fn check_pem(key: &str, path: &std::path::Path, pem: &[u8]) -> Result<(), StartupError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let problem = if key == "tls_key" {
        PrivateKeyDer::from_pem_slice(pem).err().map(|e| format!("no PEM private key: {e}"))
    } else {
        let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
        match certs {
            Ok(certs) if certs.is_empty() => Some("no PEM certificate in it".to_owned()),
            Ok(_) => None,
            Err(e) => Some(format!("not a PEM certificate: {e}")),
        }
    };
    match problem {
        Some(why) => Err(StartupError::Security(format!("{key} {}: {why}", path.display()))),
        None => Ok(()),
    }
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text = format!("{text}: {next}");
        }
        source = s.source();
    }
    text
}

/// Reads the token file (or `LEADSCORE_AUTH_TOKENS`) and the TLS files, and
/// refuses an unauthenticated service on a non-loopback address unless
/// `insecure` is set.
pub fn load_security(settings: &Settings) -> Result<Security, StartupError> {
    let token_text = match &settings.auth_tokens_file {
        Some(path) => Some(String::from_utf8_lossy(&read("auth_tokens_file", path)?).into_owned()),
        None => std::env::var("LEADSCORE_AUTH_TOKENS").ok().filter(|t| !t.trim().is_empty()),
    };
    let open_reflection = settings.reflection == crate::config::Reflection::Open;
    let tokens = token_text
        .map(|text| crate::auth::Tokens::parse(&text).map_err(|e| StartupError::Security(e.to_string())))
        .transpose()?
        .map(|t| Arc::new(t.with_open_reflection(open_reflection)));
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => {
            let (cert_pem, key_pem) = (read("tls_cert", cert)?, read("tls_key", key)?);
            check_pem("tls_cert", cert, &cert_pem)?;
            check_pem("tls_key", key, &key_pem)?;
            let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
            if let Some(ca) = &settings.tls_client_ca {
                let ca_pem = read("tls_client_ca", ca)?;
                check_pem("tls_client_ca", ca, &ca_pem)?;
                config = config.client_ca_root(Certificate::from_pem(ca_pem));
            }
            // Bad PEM shows now rather than when serving starts, with the
            // reason (e.g. a key that does not match the certificate).
            Server::builder().tls_config(config.clone()).map_err(|e| {
                StartupError::Security(format!(
                    "TLS configuration ({} and {}): {}",
                    cert.display(),
                    key.display(),
                    error_chain(&e)
                ))
            })?;
            Some(config)
        }
        _ => None,
    };
    let loopback = settings.grpc_addr.ip().is_loopback();
    if tokens.is_none() && !loopback && !settings.insecure {
        return Err(StartupError::Security(format!(
            "refusing to serve on {} without authentication: configure bearer tokens (auth_tokens_file or \
             LEADSCORE_AUTH_TOKENS), or pass --insecure (LEADSCORE_INSECURE=true) to accept unauthenticated calls \
             from the network",
            settings.grpc_addr
        )));
    }
    match (&tokens, &tls) {
        (None, _) if !loopback => tracing::warn!("serving WITHOUT authentication (--insecure)"),
        (Some(t), None) if !loopback => {
            tracing::warn!(tokens = t.len(), "bearer tokens travel in clear text: configure tls_cert/tls_key")
        }
        (Some(t), _) => tracing::info!(tokens = t.len(), "bearer-token authentication on"),
        _ => {}
    }
    if tls.is_some() {
        tracing::info!(mtls = settings.tls_client_ca.is_some(), "serving gRPC over TLS");
    }
    Ok(Security { tokens, tls })
}

/// Loads the configured rule file, or the built-in default.
pub fn load_rules(
    path: Option<&std::path::Path>,
    required_approvers: &[String],
) -> Result<(RuleSet, String), StartupError> {
    let (name, source) = match path {
        Some(p) => {
            let source = std::fs::read_to_string(p)
                .map_err(|source| StartupError::RulesUnreadable { path: p.display().to_string(), source })?;
            (p.display().to_string(), source)
        }
        None => ("<built-in rules/default.toml>".to_owned(), crate::DEFAULT_RULES.to_owned()),
    };
    let rules = RuleSet::parse_with_approvers(&source, required_approvers)
        .map_err(|errors| StartupError::RulesInvalid { path: name.clone(), errors })?;
    Ok((rules, name))
}

pub struct Application {
    listener: TcpListener,
    port: u16,
    /// The metrics endpoint's listener, unless it is off.
    metrics_listener: Option<TcpListener>,
    state: Arc<AppState>,
    settings: Settings,
    security: Security,
    /// The rule set's version was recorded with its digest at start-up.
    version_recorded: bool,
    /// Webhook endpoints with their secrets.
    webhooks: Vec<crate::webhook::Endpoint>,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> Result<Self, StartupError> {
        let security = load_security(&settings)?;
        let webhooks = crate::webhook::load_endpoints(&settings.webhooks).map_err(StartupError::Webhook)?;
        let (rules, rules_name) = load_rules(settings.rules.as_deref(), &settings.required_approvers)?;
        tracing::info!(rules = %rules_name, version = %rules.version, digest = %rules.digest.get(..12).unwrap_or_default(), "rule set loaded");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let store: Arc<dyn LeadStore> = match redis_settings(&settings)? {
            Some(redis) => {
                tracing::info!(redis = %redacted_url(&redis.url), custom_ca = redis.tls.ca.is_some(), client_certificate = redis.tls.client.is_some(), "using the Redis store");
                let store = RedisStore::connect(&redis)?.with_latency(metrics.redis_duration.clone());
                match store.check_format().await {
                    Ok(Ok(())) => {}
                    Ok(Err(why)) => return Err(StartupError::DataFormat(why)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot check the stored data's layout yet (Redis unavailable)")
                    }
                }
                Arc::new(store)
            }
            None => {
                tracing::warn!(
                    "no Redis URL configured: using the embedded in-memory store; DATA IS LOST ON EXIT \
                     (set --redis-url or LEADSCORE_REDIS_URL for the store of record)"
                );
                Arc::new(MemoryStore::new())
            }
        };
        let policy = IngestPolicy {
            dedupe_window_ms: settings.dedupe_window.0,
            retention_ms: settings.signal_retention.0,
            history_limit: settings.history_limit,
        };
        let limits = Limits {
            max_batch_size: settings.max_batch_size,
            max_future_skew_ms: 5 * 60_000,
            feed_poll_interval: settings.feed_poll_interval.duration(),
        };
        let feed = FeedPolicy {
            history_limit: settings.stage_history_limit,
            retention_ms: settings.feed_retention.0,
            trigger_retention_ms: settings.trigger_retention.0,
        };
        // A version names one content for good: refuse to serve other rules
        // under a version already used. When the store cannot be asked yet,
        // start anyway (health waits for the store) and say so.
        let version_recorded = match crate::reload::claim_version(store.as_ref(), &rules).await {
            Ok(()) => true,
            Err(Some(why)) => {
                return Err(StartupError::RulesInvalid {
                    path: rules_name,
                    errors: vec![RuleError::at(&rules.source, None, why)],
                });
            }
            // Recorded in the background once the store answers.
            Err(None) => false,
        };
        let mut core = crate::engine::Core::new(
            store,
            clock,
            rules,
            rules_name,
            policy,
            feed,
            settings.required_approvers.clone(),
            metrics,
        );
        core.rescore_on_reload = settings.rescore_on_reload;
        core.audit_retention_ms = settings.audit_retention.0;
        core.erase_unqualified_after_ms = settings.erase_unqualified_after.0;
        core.webhooks = webhooks.iter().map(|w| w.spec.clone()).collect();
        core.currency = settings.currency.clone();
        core.delivery = DeliveryPolicy {
            visibility_timeout_ms: settings.trigger_visibility_timeout.0,
            max_deliveries: settings.trigger_max_deliveries,
        };
        core.profiles = crate::engine::ProfileLimits {
            history_limit: settings.score_history_limit,
            history_age_ms: settings.score_history_age.0,
            funnel_retention_ms: settings.funnel_retention.0,
        };
        let mut state = AppState::new(core, limits);
        state.trigger_groups = settings.trigger_groups.clone();
        state.trigger_streams = Arc::new(crate::api::streams::TriggerStreams::new(crate::api::streams::StreamLimits {
            per_connection: settings.max_trigger_streams_per_connection,
            per_token: settings.max_trigger_streams_per_token,
        }));
        // Spend amounts are never converted: data kept in another currency
        // is refused (checked again on every RecordSpend, should Redis be
        // down now).
        match crate::engine::spend::check_currency(state.core()).await {
            Ok(()) => {}
            Err(e @ crate::engine::spend::SpendError::Currency { .. }) => {
                return Err(StartupError::DataFormat(e.to_string()));
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the stored spend's currency yet (store unavailable)"),
        }
        let state = Arc::new(state);
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .map_err(|source| StartupError::Bind { addr: settings.grpc_addr, source })?;
        let port =
            listener.local_addr().map_err(|source| StartupError::Bind { addr: settings.grpc_addr, source })?.port();
        let metrics_listener = match settings.metrics_socket() {
            Ok(Some(addr)) => {
                Some(TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?)
            }
            _ => None,
        };
        Ok(Self { listener, port, metrics_listener, state, settings, security, version_recorded, webhooks })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The metrics endpoint's port, unless it is off.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port())
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then: health turns NOT_SERVING,
    /// new connections are refused, and in-flight calls get
    /// `shutdown_grace` to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), StartupError> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StoreError::Internal(format!("reflection: {e}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StoreError::Internal(format!("reflection: {e}")))?;

        // NOT_SERVING until the store has answered once.
        set_status(&reporter, ServingStatus::NotServing).await;
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let health_task = tokio::spawn(watch_store_health(
            self.state.store.clone(),
            reporter.clone(),
            self.settings.health_interval.duration(),
            stopping_rx,
        ));

        let reload_task = self.settings.rules.clone().map(|path| {
            tokio::spawn(crate::reload::watch_rule_file(
                self.state.core().clone(),
                path,
                self.settings.rules_reload_interval.duration(),
                stopping_tx.subscribe(),
            ))
        });

        if self.version_recorded {
            crate::engine::audit::started_with(self.state.core()).await;
        } else {
            tokio::spawn(record_version_when_possible(self.state.core().clone(), stopping_tx.subscribe()));
        }
        let sweep_task = tokio::spawn(sweep_every(
            self.state.core().clone(),
            self.settings.inactivity_sweep_interval.duration(),
            stopping_tx.subscribe(),
        ));

        let webhook_tasks = crate::webhook::spawn(
            self.state.core().clone(),
            self.webhooks,
            &crate::webhook::replica_name(),
            self.settings.feed_poll_interval.duration(),
            stopping_tx.subscribe(),
        );

        let metrics_task = self.metrics_listener.map(|listener| {
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            let mut stopping = stopping_tx.subscribe();
            let core = self.state.core().clone();
            tokio::spawn(crate::metrics::serve(
                listener,
                self.state.metrics.clone(),
                Arc::new(move || {
                    let core = core.clone();
                    Box::pin(async move {
                        core.metrics.refresh_triggers(&*core.store).await;
                        crate::webhook::refresh_metrics(&core).await;
                    })
                }),
                async move {
                    let _ = stopping.wait_for(|s| *s).await;
                },
            ))
        });

        let limits = &self.settings;
        let reflection = limits.reflection != crate::config::Reflection::Off;
        // Deadlines are the metrics layer's (it answers DEADLINE_EXCEEDED and
        // counts it); tonic's own timeout would answer CANCELLED uncounted.
        let mut builder = Server::builder()
            // HTTP/1.1 too: Connect's unary JSON (`curl`) and browsers'
            // gRPC-Web.
            .accept_http1(true)
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_keepalive_interval(Some(limits.http2_keepalive_interval.duration()))
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout.duration()));
        if let Some(tls) = self.security.tls {
            builder = builder.tls_config(tls)?;
        }
        let router = builder
            // Connect (unary, JSON or proto) and gRPC-Web become gRPC calls
            // before anything else looks at them: one stack for all three.
            // The dashboard's files (the data it shows comes through the API).
            .layer(crate::dashboard::DashboardLayer)
            .layer(crate::connect::ConnectLayer { methods: pb::METHODS, max_message_size: limits.max_message_size })
            .layer(tonic_web::GrpcWebLayer::new())
            .layer(crate::metrics::MetricsLayer {
                metrics: self.state.metrics.clone(),
                request_timeout: limits.request_timeout.duration(),
            })
            .layer(GateLayer(crate::auth::Authenticate(self.security.tokens)))
            .layer(GateLayer(crate::limits::LoadShed::new(limits.max_in_flight)))
            .add_service(health_service)
            .add_optional_service(reflection.then_some(reflection_v1))
            .add_optional_service(reflection.then_some(reflection_v1alpha))
            .add_service(
                LeadScoringServer::new(ScoringService::new(self.state.clone()))
                    .max_decoding_message_size(limits.max_message_size),
            )
            .add_service(
                QualificationServer::new(QualificationService::new(self.state.clone()))
                    .max_decoding_message_size(limits.max_message_size),
            )
            .add_service(
                NurtureServer::new(NurtureService::new(self.state.clone()))
                    .max_decoding_message_size(limits.max_message_size),
            )
            .add_service(
                ProfilesServer::new(ProfilesService::new(self.state.clone()))
                    .max_decoding_message_size(limits.max_message_size),
            );
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        // Bounded connections (cap, handshake and idle timeouts, accept
        // back-off); small gRPC frames do not wait for Nagle's algorithm.
        let incoming = crate::listener::incoming(
            self.listener,
            crate::listener::ConnectionLimits {
                max_connections: limits.max_connections,
                handshake_timeout: limits.handshake_timeout.duration(),
                idle_timeout: limits.idle_timeout.duration(),
            },
            self.state.metrics.clone(),
        );
        let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        }));
        tracing::info!(addr = %self.settings.grpc_addr, port = self.port, store = self.state.store.kind(), "serving gRPC");

        tokio::select! {
            result = &mut server => {
                let _ = stopping_tx.send(true);
                return result.map_err(|e| StoreError::Internal(format!("server task: {e}")))?.map_err(Into::into);
            }
            () = shutdown => {}
        }
        tracing::info!(grace_ms = self.settings.shutdown_grace.0, "shutting down: draining in-flight calls");
        let _ = stopping_tx.send(true);
        // Long-lived streams (feed watchers, trigger consumers) end now.
        let _ = self.state.stopping.send(true);
        let _ = health_task.await;
        if let Some(task) = reload_task {
            let _ = task.await;
        }
        let _ = sweep_task.await;
        for task in webhook_tasks {
            let _ = task.await;
        }
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        set_status(&reporter, ServingStatus::NotServing).await;
        // Health Watch streams see NOT_SERVING, then end: an open watcher
        // must not hold the drain until its deadline. (Check answers
        // NOT_FOUND from here on, which probes treat as not ready too.)
        let mut reporter = reporter;
        reporter.clear_service_status("").await;
        for name in SERVICE_NAMES {
            reporter.clear_service_status(name).await;
        }
        let _ = stop_tx.send(());
        match tokio::time::timeout(self.settings.shutdown_grace.duration(), &mut server).await {
            Ok(result) => {
                result.map_err(|e| StoreError::Internal(format!("server task: {e}")))??;
                tracing::info!("stopped");
            }
            Err(_) => {
                server.abort();
                tracing::warn!("drain deadline passed; remaining calls were cut off");
            }
        }
        Ok(())
    }
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Runs the sweeps (inactivity triggers, follow-up deadlines) until
/// `stopping` turns true.
async fn sweep_every(state: Arc<crate::engine::Core>, interval: Duration, mut stopping: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.changed() => return,
        }
        match crate::engine::sweep_due(&state).await {
            Ok(swept) => {
                if swept.inactivity_triggers > 0 {
                    tracing::info!(fired = swept.inactivity_triggers, "inactivity triggers fired");
                }
                if swept.breaches > 0 {
                    state.metrics.sla_breaches(swept.breaches);
                    tracing::info!(breaches = swept.breaches, "follow-up deadlines passed without a sales decision");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed; retrying next round"),
        }
        match crate::engine::erasure::sweep_retention(&state).await {
            Ok(0) => {}
            Ok(erased) => tracing::info!(erased, "leads erased by the retention policy"),
            Err(e) => tracing::warn!(error = %e, "retention sweep failed; retrying next round"),
        }
    }
}

/// SERVING only while the store answers.
async fn watch_store_health(
    store: Arc<dyn LeadStore>,
    reporter: HealthReporter,
    interval: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let status = match store.ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(e) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::warn!(error = %e, "store not answering: health is NOT_SERVING");
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            if status == ServingStatus::Serving {
                tracing::info!(store = store.kind(), "store answers: health is SERVING");
            }
            set_status(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// Records the active rule set's version once the store answers (it did
/// not at start-up); a version already used for other rules is logged as
/// an error for the operator: this replica serves them anyway.
async fn record_version_when_possible(state: Arc<crate::engine::Core>, mut stopping: watch::Receiver<bool>) {
    loop {
        match crate::reload::claim_version(state.store.as_ref(), &state.rules().set).await {
            Ok(()) => {
                tracing::info!(version = %state.rules().version, "rule-set version recorded");
                crate::engine::audit::started_with(&state).await;
                return;
            }
            Err(Some(why)) => {
                tracing::error!("{why}; this replica serves these rules until a new version is activated");
                return;
            }
            Err(None) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stopping.changed() => return,
        }
    }
}
