//! Settings, merged in this order (later wins): built-in defaults < config
//! file (`--config FILE` or `LEADSCORE_CONFIG`) < `LEADSCORE_<KEY>`
//! environment variables < command-line flags. Keys are the field names
//! below; durations are written like `30s`, `14d`, `1d12h`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::rules::{format_duration, parse_duration};

/// A duration written as text (`"7d"`), kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub i64);

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(Millis).map_err(serde::de::Error::custom)
    }
}

impl Millis {
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the gRPC server listens on.
    pub grpc_addr: SocketAddr,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `off`
    /// for none.
    pub metrics_addr: String,
    /// Redis URL (`redis://[user:password@]host:port[/db]`); unset for the
    /// embedded in-memory store.
    pub redis_url: Option<String>,
    /// Rule-set file; unset for the built-in `rules/default.toml`.
    pub rules: Option<PathBuf>,
    /// Prefix of every Redis key.
    pub redis_key_prefix: String,
    /// Number of key partitions (hash tags). Fixed for the life of a
    /// deployment's data.
    pub redis_partitions: u32,
    /// Bound on each Redis call, connecting included.
    pub redis_timeout: Millis,
    /// Most signals per RecordSignals, most ids per ScoreLeads.
    pub max_batch_size: usize,
    /// How long a seen event_id is remembered for de-duplication.
    pub dedupe_window: Millis,
    /// Oldest occurred_at accepted.
    pub signal_retention: Millis,
    /// Raw signals kept per lead (for rescoring); 0 keeps none.
    pub history_limit: usize,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Millis,
    /// How often the health check pings the store.
    pub health_interval: Millis,
    /// Teams every rule set's `agreed_by` must name.
    pub required_approvers: Vec<String>,
    /// Stage changes kept per lead.
    pub stage_history_limit: usize,
    /// How long the qualification change feed keeps changes.
    pub feed_retention: Millis,
    /// How often a WatchQualificationChanges stream looks for new changes.
    pub feed_poll_interval: Millis,
    /// How often the rule file is checked for changes (SIGHUP also reloads).
    pub rules_reload_interval: Millis,
    /// Rescore every lead when a reloaded rule set is activated.
    pub rescore_on_reload: bool,
    /// ISO 4217 code of every spend amount (one currency per deployment).
    pub currency: String,
    /// How long fired nurture triggers are kept in the trigger stream.
    pub trigger_retention: Millis,
    /// A trigger delivered and not acknowledged for this long is delivered again.
    pub trigger_visibility_timeout: Millis,
    /// Deliveries after which an unacknowledged trigger becomes a dead letter.
    pub trigger_max_deliveries: u64,
    /// How often each replica looks for leads due an inactivity trigger.
    pub inactivity_sweep_interval: Millis,
    /// Score history entries kept per lead (newest first); 0 keeps none.
    pub score_history_limit: usize,
    /// Score history entries older than this are dropped.
    pub score_history_age: Millis,
    /// How long the funnel's daily counters are kept.
    pub funnel_retention: Millis,
    /// File of bearer tokens (`<name> <scopes> <token>` per line); the
    /// `LEADSCORE_AUTH_TOKENS` variable may hold the same lines instead.
    pub auth_tokens_file: Option<PathBuf>,
    /// Serve without authentication on a non-loopback address.
    pub insecure: bool,
    /// PEM certificate chain and private key: serve gRPC over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mTLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Calls handled at once; more are refused with RESOURCE_EXHAUSTED.
    /// 0: no limit.
    pub max_in_flight: usize,
    /// Largest request message accepted, in bytes.
    pub max_message_size: usize,
    /// Calls one HTTP/2 connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Longest a call may take when its caller sets no shorter deadline
    /// (`grpc-timeout`).
    pub request_timeout: Millis,
    /// HTTP/2 pings on idle connections, and how long to wait for the answer.
    pub http2_keepalive_interval: Millis,
    pub http2_keepalive_timeout: Millis,
    /// gRPC connections open at once; one more is closed at once. 0: no limit.
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes.
    pub handshake_timeout: Millis,
    /// Time a connection may send nothing (not even a keepalive answer)
    /// before it is closed; longer than `http2_keepalive_interval`.
    pub idle_timeout: Millis,
    /// Consumer groups that receive nurture triggers. Each is created on
    /// first use; any other name is NOT_FOUND (a typo creates nothing).
    pub trigger_groups: Vec<String>,
    /// `StreamTriggers` calls open at once per connection and per token
    /// (callers without a token share one count).
    pub max_trigger_streams_per_connection: usize,
    pub max_trigger_streams_per_token: usize,
    /// gRPC reflection: `open` (no token needed), `authenticated` (any
    /// valid token) or `off`.
    pub reflection: Reflection,
    /// PEM CA bundle to trust for `rediss://` (default: the system's).
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate and key for Redis servers that require one.
    pub redis_tls_cert: Option<PathBuf>,
    pub redis_tls_key: Option<PathBuf>,
    /// How long audit events are kept.
    pub audit_retention: Millis,
    /// Retention: leads (and anonymous visitors) that never reached MQL
    /// are erased after this long without a counted signal or a stage
    /// change; 0 (the default) keeps them.
    pub erase_unqualified_after: Millis,
    /// HTTP endpoints that receive qualification changes and nurture
    /// triggers, signed (`[[webhooks]]` tables; docs/configuration.md, "Webhooks").
    pub webhooks: Vec<WebhookSettings>,
}

/// One webhook endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// `[a-z0-9_-]`, 1 to 32 characters; names its state, dead letters and
    /// metrics (renaming starts it afresh).
    pub name: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// What it receives: `stage_changed`, `stage_changed(MQL)`, `triggers`,
    /// `trigger(<id>)`, `program(<program>)`.
    pub events: Vec<String>,
    /// File holding the signing secret (`whsec_…`), or two while one is
    /// rotated (each delivery is signed with both).
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding the same, instead of a file.
    pub secret_env: Option<String>,
    /// Requests per second at most; 0: no limit.
    pub rate_limit: f64,
    /// Requests in flight at once (to different leads).
    pub max_concurrent: usize,
    /// Longest wait for the receiver's answer.
    pub timeout: Millis,
    /// Attempts per event; after the last failed one it is a dead letter.
    pub max_attempts: u32,
    /// Wait before the second attempt (at most; doubles each attempt, with
    /// jitter) and the longest wait, `Retry-After` included.
    pub retry_backoff: Millis,
    pub max_backoff: Millis,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            events: Vec::new(),
            secret_file: None,
            secret_env: None,
            rate_limit: 0.0,
            max_concurrent: 4,
            timeout: Millis(10_000),
            max_attempts: 8,
            retry_backoff: Millis(1_000),
            max_backoff: Millis(300_000),
        }
    }
}

impl WebhookSettings {
    fn validate(&self) -> Result<(), String> {
        let name_ok = (1..=32).contains(&self.name.len())
            && self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!(
                "name '{}' must be 1 to 32 of a-z, 0-9, _ and -",
                crate::text::bounded(&self.name, 40)
            ));
        }
        let url: http::Uri =
            self.url.parse().map_err(|_| format!("url '{}' is not a URL", crate::text::bounded(&self.url, 200)))?;
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("url must not hold credentials (user:password@): put a token in the path or query".into());
        }
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
            return Err(format!(
                "url '{}' must be http:// or https:// with a host",
                crate::text::bounded(&self.url, 200)
            ));
        }
        crate::domain::webhook::EventFilter::parse(&self.events)?;
        if self.secret_file.is_some() == self.secret_env.is_some() {
            return Err("set one of secret_file or secret_env".into());
        }
        if !self.rate_limit.is_finite() || self.rate_limit < 0.0 {
            return Err("rate_limit must be 0 (no limit) or a number of requests per second".into());
        }
        if !(1..=256).contains(&self.max_concurrent) {
            return Err("max_concurrent must be 1 to 256".into());
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err("max_attempts must be 1 to 100".into());
        }
        if self.timeout.0 <= 0 || self.retry_backoff.0 <= 0 || self.max_backoff.0 < self.retry_backoff.0 {
            return Err("timeout and retry_backoff must be longer than 0s, max_backoff at least retry_backoff".into());
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        const DAY: i64 = 86_400_000;
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: "127.0.0.1:9090".into(),
            redis_url: None,
            rules: None,
            redis_key_prefix: "ls".into(),
            redis_partitions: 64,
            redis_timeout: Millis(2_000),
            max_batch_size: 1000,
            dedupe_window: Millis(7 * DAY),
            signal_retention: Millis(90 * DAY),
            history_limit: 100,
            shutdown_grace: Millis(10_000),
            health_interval: Millis(1_000),
            required_approvers: crate::rules::DEFAULT_APPROVERS.iter().map(|a| a.to_string()).collect(),
            stage_history_limit: 50,
            feed_retention: Millis(30 * DAY),
            feed_poll_interval: Millis(250),
            rules_reload_interval: Millis(2_000),
            rescore_on_reload: true,
            currency: crate::domain::spend::DEFAULT_CURRENCY.to_owned(),
            trigger_retention: Millis(7 * DAY),
            trigger_visibility_timeout: Millis(30_000),
            trigger_max_deliveries: 5,
            inactivity_sweep_interval: Millis(30_000),
            score_history_limit: 50,
            score_history_age: Millis(180 * DAY),
            funnel_retention: Millis(800 * DAY),
            auth_tokens_file: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            max_in_flight: 512,
            max_message_size: 1 << 20,
            max_concurrent_streams: 200,
            request_timeout: Millis(30_000),
            http2_keepalive_interval: Millis(60_000),
            http2_keepalive_timeout: Millis(20_000),
            max_connections: 4096,
            handshake_timeout: Millis(10_000),
            idle_timeout: Millis(300_000),
            reflection: Reflection::Authenticated,
            trigger_groups: vec!["automation".to_owned()],
            max_trigger_streams_per_connection: 16,
            max_trigger_streams_per_token: 100,
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            audit_retention: Millis(400 * DAY),
            erase_unqualified_after: Millis(0),
            webhooks: Vec::new(),
        }
    }
}

/// Every settings key, as used in files and after `LEADSCORE_` in the environment.
pub const KEYS: [&str; 51] = [
    "grpc_addr",
    "metrics_addr",
    "redis_url",
    "rules",
    "redis_key_prefix",
    "redis_partitions",
    "redis_timeout",
    "max_batch_size",
    "dedupe_window",
    "signal_retention",
    "history_limit",
    "shutdown_grace",
    "health_interval",
    "required_approvers",
    "stage_history_limit",
    "feed_retention",
    "feed_poll_interval",
    "rules_reload_interval",
    "rescore_on_reload",
    "currency",
    "trigger_retention",
    "trigger_visibility_timeout",
    "trigger_max_deliveries",
    "inactivity_sweep_interval",
    "score_history_limit",
    "score_history_age",
    "funnel_retention",
    "auth_tokens_file",
    "insecure",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "max_in_flight",
    "max_message_size",
    "max_concurrent_streams",
    "request_timeout",
    "http2_keepalive_interval",
    "http2_keepalive_timeout",
    "max_connections",
    "handshake_timeout",
    "idle_timeout",
    "reflection",
    "trigger_groups",
    "max_trigger_streams_per_connection",
    "max_trigger_streams_per_token",
    "redis_tls_ca",
    "redis_tls_cert",
    "redis_tls_key",
    "audit_retention",
    "erase_unqualified_after",
    "webhooks",
];

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// Flags given on the command line; they win over everything else.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

impl Settings {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        Self::load_from(file, Env::prefixed("LEADSCORE_").only(&KEYS), overrides)
    }

    fn load_from(file: Option<&Path>, env: Env, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!("config file {} not found", path.display())));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let settings: Settings =
            figment.merge(env).merge(Serialized::defaults(overrides)).extract().map_err(|e| ConfigError(explain(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("redis_timeout", self.redis_timeout),
            ("dedupe_window", self.dedupe_window),
            ("signal_retention", self.signal_retention),
            ("health_interval", self.health_interval),
            ("feed_retention", self.feed_retention),
            ("feed_poll_interval", self.feed_poll_interval),
            ("rules_reload_interval", self.rules_reload_interval),
            ("trigger_retention", self.trigger_retention),
            ("trigger_visibility_timeout", self.trigger_visibility_timeout),
            ("inactivity_sweep_interval", self.inactivity_sweep_interval),
            ("score_history_age", self.score_history_age),
            ("funnel_retention", self.funnel_retention),
            ("audit_retention", self.audit_retention),
            ("request_timeout", self.request_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.0 <= 0) {
            return Err(ConfigError(format!("{key} must be longer than 0s")));
        }
        if !crate::domain::spend::is_currency_code(&self.currency) {
            return Err(ConfigError(format!(
                "currency must be an ISO 4217 code of three capital letters (e.g. USD, EUR), not '{}'",
                crate::text::bounded(&self.currency, 16)
            )));
        }
        if self.max_batch_size == 0 || self.max_batch_size > 10_000 {
            return Err(ConfigError("max_batch_size must be 1 to 10000".into()));
        }
        if self.trigger_max_deliveries == 0 {
            return Err(ConfigError("trigger_max_deliveries must be at least 1".into()));
        }
        if self.metrics_socket().is_err() {
            return Err(ConfigError(format!(
                "metrics_addr must be host:port (e.g. 127.0.0.1:9090, or 0.0.0.0:9090 for every interface) or off, \
                 not '{}'",
                self.metrics_addr
            )));
        }
        if self.idle_timeout.0 <= self.http2_keepalive_interval.0 {
            return Err(ConfigError(
                "idle_timeout must be longer than http2_keepalive_interval (live clients answer the pings)".into(),
            ));
        }
        if self.score_history_limit > 10_000 {
            return Err(ConfigError("score_history_limit must be 0 to 10000".into()));
        }
        if self.stage_history_limit == 0 {
            return Err(ConfigError("stage_history_limit must be at least 1".into()));
        }
        if !(1024..=64 << 20).contains(&self.max_message_size) {
            return Err(ConfigError("max_message_size must be 1024 to 67108864 bytes".into()));
        }
        if self.trigger_groups.is_empty()
            || self.trigger_groups.len() > 64
            || !self.trigger_groups.iter().all(|g| crate::domain::nurture::is_consumer_name(g))
        {
            return Err(ConfigError(format!(
                "trigger_groups: 1 to 64 names, each of {}",
                crate::domain::nurture::CONSUMER_NAME_RULE
            )));
        }
        if self.max_trigger_streams_per_connection == 0 || self.max_trigger_streams_per_token == 0 {
            return Err(ConfigError("max_trigger_streams_per_connection and _per_token must be at least 1".into()));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError("max_concurrent_streams must be at least 1".into()));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError("tls_cert and tls_key go together: set both or neither".into()));
        }
        if self.redis_tls_cert.is_some() != self.redis_tls_key.is_some() {
            return Err(ConfigError("redis_tls_cert and redis_tls_key go together: set both or neither".into()));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError("tls_client_ca (mTLS) needs tls_cert and tls_key".into()));
        }
        if self.redis_partitions == 0 || self.redis_partitions > 16_384 {
            return Err(ConfigError("redis_partitions must be 1 to 16384".into()));
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            hook.validate().map_err(|why| ConfigError(format!("webhooks[{i}]: {why}")))?;
            if self.webhooks[..i].iter().any(|h| h.name == hook.name) {
                return Err(ConfigError(format!("webhooks[{i}]: name '{}' is used twice", hook.name)));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// Where the metrics endpoint listens; `None` when off.
    pub fn metrics_socket(&self) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
        match self.metrics_addr.trim() {
            "off" => Ok(None),
            // Empty is an error, not a quiet way to turn metrics off.
            addr => addr.parse().map(Some),
        }
    }
}

/// Who may use gRPC reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reflection {
    /// Anyone, without a token (the API's shape is no secret).
    Open,
    /// Any caller with a valid token, whatever its scopes.
    Authenticated,
    /// Not served.
    Off,
}

/// A configuration error in words: the key as written in the file
/// (`webhooks[0].url`, without figment's profile), where it came from, and
/// what is wrong, with type names a reader knows ("a whole number", not
/// `usize`); an unknown key names the closest valid one instead of listing
/// them all.
fn explain(e: figment::Error) -> String {
    use figment::error::Kind;
    let place = match e.metadata.as_ref() {
        Some(m) => match &m.source {
            Some(source) => format!(" in {source}"),
            None => format!(" in {}", m.name),
        },
        None => String::new(),
    };
    let mut key = String::new();
    for part in e.path.iter().filter(|p| *p != "default") {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(&crate::text::bounded(part, 64));
        }
    }
    match &e.kind {
        Kind::UnknownField(found, expected) => {
            let hint = match closest(found, expected) {
                Some(near) => format!(": did you mean `{near}`?"),
                None => String::new(),
            };
            // Where in the file: `webhooks[0]` for a key of the first endpoint.
            let table = key.rsplit_once(['.', '[']).map_or(String::new(), |(table, _)| format!(" of {table}"));
            let table = table.trim_end_matches('.').to_string();
            format!(
                "unknown key `{}`{table}{place}{hint} (docs/configuration.md lists every key)",
                crate::text::bounded(found, 64)
            )
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) if !key.is_empty() => {
            format!("`{key}`{place}: expected {}, found {actual}", plain_type(expected))
        }
        Kind::UnknownVariant(found, expected) if !key.is_empty() => {
            format!("`{key}`{place}: `{}` is not one of {}", crate::text::bounded(found, 64), expected.join(", "))
        }
        Kind::Message(message) if !key.is_empty() => format!("`{key}`{place}: {message}"),
        Kind::MissingField(field) => format!("`{key}`{place}: `{field}` is missing"),
        _ => e.to_string(),
    }
}

/// serde's name of an expected type as a reader would say it.
fn plain_type(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        other => other.into(),
    }
}

/// `LEADSCORE_…` variables the service reads besides the settings.
const OTHER_VARIABLES: [&str; 7] =
    ["config", "token", "addr", "auth_tokens", "log_format", "otlp_endpoint", "trace_sample_ratio"];

/// A warning for each `LEADSCORE_…` variable in the environment that names
/// no setting (a typo is otherwise silently ignored), with the closest
/// name. Webhook secrets (`LEADSCORE_WEBHOOK_SECRET_<NAME>` and any
/// endpoint's `secret_env`) are not settings and pass.
pub fn stray_variables(settings: &Settings) -> Vec<String> {
    let secrets: Vec<&str> = settings.webhooks.iter().filter_map(|w| w.secret_env.as_deref()).collect();
    let known: Vec<&str> = KEYS.iter().chain(OTHER_VARIABLES.iter()).copied().collect();
    let mut out = Vec::new();
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let Some(key) = name.strip_prefix("LEADSCORE_") else { continue };
        if secrets.contains(&name) || key.starts_with("WEBHOOK_SECRET_") {
            continue;
        }
        let lower = key.to_ascii_lowercase();
        if known.contains(&lower.as_str()) {
            continue;
        }
        let hint = closest(&lower, &known)
            .map(|k| format!(" (did you mean LEADSCORE_{}?)", k.to_ascii_uppercase()))
            .unwrap_or_default();
        out.push(format!("{} names no setting and is ignored{hint}", crate::text::bounded(name, 100)));
    }
    out.sort();
    out
}

/// The candidate nearest to `word` by edit distance, if it is near enough
/// to be a typo of it (at most a third of its length, at least 1).
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A Redis URL fit for logs: scheme, host and port, never credentials.
pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => "<redis url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keys_list_every_setting() {
        let value = serde_json::to_value(Settings {
            redis_url: Some(String::new()),
            rules: Some(PathBuf::new()),
            auth_tokens_file: Some(PathBuf::new()),
            tls_cert: Some(PathBuf::new()),
            tls_key: Some(PathBuf::new()),
            tls_client_ca: Some(PathBuf::new()),
            redis_tls_ca: Some(PathBuf::new()),
            redis_tls_cert: Some(PathBuf::new()),
            redis_tls_key: Some(PathBuf::new()),
            ..Default::default()
        })
        .unwrap();
        let mut keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        let mut expected: Vec<_> = KEYS.iter().map(|k| k.to_string()).collect();
        keys.sort();
        expected.sort();
        assert_eq!(keys, expected);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn a_misspelled_variable_is_named_with_the_closest_setting() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LEADSCORE_DEDUPE_WINDOWS", "2d");
            jail.set_env("LEADSCORE_WEBHOOK_SECRET_CRM", "whsec_x");
            jail.set_env("LEADSCORE_TOKEN", "t");
            jail.set_env("LEADSCORE_AUTH_TOKENS", "t reader");
            let stray = stray_variables(&Settings::default());
            assert_eq!(
                stray,
                ["LEADSCORE_DEDUPE_WINDOWS names no setting and is ignored (did you mean LEADSCORE_DEDUPE_WINDOW?)"]
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's own signature
    fn precedence_file_env_flags() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max_batch_size = 50\ndedupe_window = \"1d\"\nredis_url = \"redis://file\"").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("LEADSCORE_DEDUPE_WINDOW", "2d");
            jail.set_env("LEADSCORE_REDIS_URL", "redis://env");
            let flags = Overrides { redis_url: Some("redis://flag".into()), ..Default::default() };
            let s = Settings::load(Some(file.path()), &flags).unwrap();
            assert_eq!(s.max_batch_size, 50);
            assert_eq!(s.dedupe_window, Millis(2 * 86_400_000));
            assert_eq!(s.redis_url.as_deref(), Some("redis://flag"));
            Ok(())
        });
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max_batch_sise = 50").unwrap();
        assert!(Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default()).is_err());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "dedupe_window = \"soon\"").unwrap();
        let err = Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
        // Type errors name the key as written and the type in words.
        let load = |body: &str| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            writeln!(file, "{body}").unwrap();
            Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default()).unwrap_err().to_string()
        };
        let err = load("max_in_flight = \"x\"");
        assert!(err.starts_with("configuration: `max_in_flight` in "), "{err}");
        assert!(err.ends_with(": expected a whole number (0 or more), found string \"x\""), "{err}");
        let err = load("reflection = \"maybe\"");
        assert!(err.ends_with(": `maybe` is not one of open, authenticated, off"), "{err}");
        let err = load("[[webhooks]]\nname = \"a\"\nurl = 5");
        assert!(err.starts_with("configuration: `webhooks[0].url` in "), "{err}");
        for err in [load("max_in_flight = -3"), load("insecure = \"yes\"")] {
            assert!(!err.contains("default.") && !err.contains("usize"), "{err}");
        }
        // An empty metrics address is a mistake, not a way to turn metrics off.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "metrics_addr = \"\"").unwrap();
        let err = Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("metrics_addr"), "{err}");
        assert_eq!(Settings::default().metrics_addr, "127.0.0.1:9090", "loopback, like gRPC");
    }

    #[test]
    fn webhook_tables_are_read_and_checked() {
        let load = |body: &str| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            write!(file, "{body}").unwrap();
            Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default())
        };
        let ok = "[[webhooks]]\nname = \"crm\"\nurl = \"https://hooks.example.com/x\"\n\
                  events = [\"stage_changed(MQL)\", \"triggers\"]\nsecret_env = \"HOOK_SECRET\"\n\
                  rate_limit = 20\ntimeout = \"5s\"\n";
        let settings = load(ok).unwrap();
        let hook = &settings.webhooks[0];
        assert_eq!((hook.name.as_str(), hook.rate_limit, hook.timeout), ("crm", 20.0, Millis(5_000)));
        assert_eq!((hook.max_attempts, hook.max_concurrent, hook.max_backoff), (8, 4, Millis(300_000)));
        for (change, bad) in [
            ("name = \"crm\"", "name = \"CRM hooks\""),
            ("https://hooks.example.com/x", "ftp://hooks.example.com/x"),
            ("https://hooks.example.com/x", "https://me:pw@hooks.example.com/x"),
            ("\"triggers\"", "\"trigers\""),
            ("secret_env = \"HOOK_SECRET\"", "secret_env = \"A\"\nsecret_file = \"/b\""),
            ("rate_limit = 20", "rate_limit = -1"),
            ("rate_limit = 20", "rate_limt = 20"),
        ] {
            let err = load(&ok.replace(change, bad)).unwrap_err().to_string();
            assert!(err.contains("webhooks"), "{bad}: {err}");
        }
        let twice = format!("{ok}{ok}");
        assert!(load(&twice).unwrap_err().to_string().contains("used twice"));
    }

    #[test]
    fn typos_name_the_closest_key() {
        assert_eq!(closest("max_batch_sise", &KEYS), Some("max_batch_size"));
        assert_eq!(closest("redis_urll", &KEYS), Some("redis_url"));
        assert_eq!(closest("colour", &KEYS), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "max_batch_sise = 50").unwrap();
        let err = Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("unknown key `max_batch_sise`") && text.contains("did you mean `max_batch_size`?"),
            "{text}"
        );
        assert!(!text.contains("grpc_addr"), "no list of every key: {text}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nevents = [\"triggers\"]\nsecret_env = \"S\"\nmax_attempt = 3").unwrap();
        let text = Settings::load_from(Some(file.path()), Env::raw().only(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(text.contains("did you mean `max_attempts`?"), "{text}");
    }

    #[test]
    fn redaction_hides_credentials() {
        assert_eq!(redacted_url("redis://user:secret@db:6379/0"), "redis://db:6379/0");
        assert_eq!(redacted_url("redis://db:6379"), "redis://db:6379");
    }
}
