//! Webhook delivery. Each configured endpoint is a consumer of the durable
//! feeds: of the qualification change feed (its position kept in the
//! store) and of the trigger stream (its own consumer group). Events are
//! POSTed as JSON, signed per Standard Webhooks, at least once:
//!
//! - One replica at a time delivers an endpoint's events, under a lease in
//!   the store; another takes over when it stops renewing. So no replica
//!   sends what another sends, and a lead's events go out in order.
//! - A round reads replayed dead letters, a page of changes and a batch of
//!   triggers; a lead's events are sent one after another, different
//!   leads' concurrently (`max_concurrent`), paced (`rate_limit`).
//! - A failed attempt is tried again after an exponential, jittered wait
//!   (or the receiver's `Retry-After`); after `max_attempts` the event is a
//!   dead letter. Only then are triggers acknowledged and the position
//!   moved: a crash or a lost lease sends the round again.
//! - `webhook-id` is `change:<change id>` or `trigger:<trigger id>`,
//!   stable across attempts, replicas and replays: receivers de-duplicate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;

use crate::api::convert;
use crate::config::WebhookSettings;
use crate::domain::webhook::{
    EndpointSpec, EventFilter, Pace, RetryPolicy, SigningKey, retry_after_ms, signature_header,
};
use crate::domain::{Delivery, QualificationChange, Timestamp};
use crate::engine::Core;
use crate::store::{DeliveryPolicy, LetterLine, StoreError, WebhookCounters, WebhookLetter, WebhookPosition};

pub const CHANGE_EVENT: &str = "lead.stage_changed";
pub const TRIGGER_EVENT: &str = "trigger.fired";
pub const ERASED_EVENT: &str = "lead.erased";

/// Events read per round (of each source).
const BATCH: usize = 100;
/// How long an endpoint's lease lasts without renewal.
const LEASE_MS: i64 = 10_000;
/// A receiver's answer read at most, for the error message.
const MAX_ANSWER: usize = 64 << 10;
/// Error messages kept at most.
const MAX_ERROR: usize = 300;
/// How long the rest of an answer is read.
const ANSWER_READ: Duration = Duration::from_secs(1);

/// A configured endpoint with its secrets.
pub struct Endpoint {
    pub spec: EndpointSpec,
    uri: http::Uri,
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("name", &self.spec.name).field("url", &self.spec.shown_url()).finish()
    }
}

/// Reads the endpoints' secrets (from their file or variable) and checks
/// them. Errors name the endpoint, never a secret.
pub fn load_endpoints(settings: &[WebhookSettings]) -> Result<Vec<Endpoint>, String> {
    settings
        .iter()
        .map(|s| {
            let at = |why: String| format!("webhook '{}': {why}", s.name);
            let text = match (&s.secret_file, &s.secret_env) {
                (Some(path), _) => std::fs::read_to_string(path)
                    .map_err(|e| at(format!("cannot read secret_file {}: {e}", path.display())))?,
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| at(format!("secret_env names {var}, which is not set (or not UTF-8)")))?,
                (None, None) => return Err(at("set secret_file or secret_env".into())),
            };
            let keys = SigningKey::parse_list(&text).map_err(at)?;
            let uri: http::Uri = s.url.parse().map_err(|_| at("url is not a URL".into()))?;
            let spec = EndpointSpec {
                name: s.name.clone(),
                url: s.url.clone(),
                events: s.events.clone(),
                filter: EventFilter::parse(&s.events).map_err(at)?,
                retry: RetryPolicy {
                    max_attempts: s.max_attempts,
                    backoff_ms: s.retry_backoff.0,
                    max_backoff_ms: s.max_backoff.0,
                },
                rate_limit: s.rate_limit,
                max_concurrent: s.max_concurrent,
                timeout_ms: s.timeout.0,
            };
            Ok(Endpoint { spec, uri, keys })
        })
        .collect()
}

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// An HTTP/1.1 client trusting the system's CA certificates.
fn client() -> Client {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no CA certificates found on this system: https webhook endpoints will fail (install ca-certificates)"
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https)
}

/// Where an event came from, for what to do once it is settled.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    Change,
    Trigger(String),
    Replay,
}

#[derive(Debug, Clone)]
struct Event {
    id: String,
    lead_id: String,
    event_type: &'static str,
    at: Timestamp,
    body: Bytes,
    origin: Origin,
}

fn event_type_of(name: &str) -> &'static str {
    match name {
        TRIGGER_EVENT => TRIGGER_EVENT,
        ERASED_EVENT => ERASED_EVENT,
        _ => CHANGE_EVENT,
    }
}

/// `{"type": …, "timestamp": …, "data": <the API's JSON of the change or trigger>}`.
fn body(event_type: &str, at: Timestamp, data: serde_json::Result<serde_json::Value>) -> Bytes {
    let data = data.unwrap_or(serde_json::Value::Null);
    let timestamp = chrono::DateTime::from_timestamp_millis(at.millis())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let value = serde_json::json!({ "type": event_type, "timestamp": timestamp, "data": data });
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

fn change_event(c: &QualificationChange) -> Event {
    let data = serde_json::to_value(convert::feed_change_to_proto(c));
    let event_type = match c.event {
        crate::domain::FeedEvent::Moved { .. } => CHANGE_EVENT,
        crate::domain::FeedEvent::Erased(_) => ERASED_EVENT,
    };
    Event {
        id: format!("change:{}", c.id),
        lead_id: c.lead_key().to_owned(),
        event_type,
        at: c.at(),
        body: body(event_type, c.at(), data),
        origin: Origin::Change,
    }
}

fn trigger_event(d: &Delivery) -> Event {
    let mut message = convert::trigger_to_proto(d);
    // Redeliveries of the feed are the service's business, not the receiver's.
    message.delivery_count = 0;
    let data = serde_json::to_value(message);
    Event {
        id: format!("trigger:{}", d.trigger_id),
        lead_id: d.lead_id.to_string(),
        event_type: TRIGGER_EVENT,
        at: d.trigger.fired_at,
        body: body(TRIGGER_EVENT, d.trigger.fired_at, data),
        origin: Origin::Trigger(d.trigger_id.clone()),
    }
}

fn replay_event(l: &WebhookLetter) -> Event {
    Event {
        id: l.event_id.clone(),
        lead_id: l.lead_id.clone(),
        event_type: event_type_of(&l.event_type),
        at: Timestamp::from_millis(l.occurred_at_ms),
        body: Bytes::from(l.body.clone()),
        origin: Origin::Replay,
    }
}

/// A lead's events in the order they happened: replays first (they are
/// older), then its changes in feed order and its triggers in stream order,
/// merged by time (a stage change before the trigger it fired). Neither
/// feed's own order is ever changed. Leads in the order of their first
/// event; an event id seen twice in a round is sent once.
fn chains(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut order: Vec<String> = Vec::new();
    let mut by_lead: HashMap<String, Vec<Event>> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for e in events {
        if !ids.insert(e.id.clone()) {
            continue;
        }
        if !by_lead.contains_key(&e.lead_id) {
            order.push(e.lead_id.clone());
        }
        by_lead.entry(e.lead_id.clone()).or_default().push(e);
    }
    order.into_iter().filter_map(|lead| by_lead.remove(&lead)).map(merge_lead).collect()
}

fn merge_lead(events: Vec<Event>) -> Vec<Event> {
    let (mut chain, rest): (Vec<Event>, Vec<Event>) = events.into_iter().partition(|e| e.origin == Origin::Replay);
    let (changes, triggers): (Vec<Event>, Vec<Event>) = rest.into_iter().partition(|e| e.event_type == CHANGE_EVENT);
    let mut changes = changes.into_iter().peekable();
    let mut triggers = triggers.into_iter().peekable();
    loop {
        let take_change = match (changes.peek(), triggers.peek()) {
            (Some(c), Some(t)) => c.at <= t.at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return chain,
        };
        chain.extend(if take_change { changes.next() } else { triggers.next() });
    }
}

/// Why an attempt failed.
struct Failure {
    error: String,
    retry_after_ms: Option<i64>,
}

enum Outcome {
    Delivered,
    Dead { attempts: u32, error: String },
}

/// A random point in [0, 1), for jitter.
fn unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Delivers one endpoint's events until `stopping` turns true.
pub struct Worker {
    core: Arc<Core>,
    endpoint: Endpoint,
    client: Client,
    /// This replica's name: the lease holder and trigger consumer.
    replica: String,
    pace: Mutex<Pace>,
    /// Counts since they were last written to the store.
    counts: Mutex<WebhookCounters>,
    latency: prometheus::Histogram,
    /// How long to wait when nothing waited.
    idle: Duration,
    /// While this replica holds the lease: what it knows without asking.
    held: Mutex<Option<Held>>,
}

/// What the lease holder keeps between rounds: it is the only writer of
/// the endpoint's position, so its copy is the stored one.
#[derive(Debug, Clone)]
struct Held {
    renewed_at: std::time::Instant,
    position: WebhookPosition,
    /// When the replay line was last found empty.
    replays_checked_at: Option<std::time::Instant>,
    /// The trigger heads when the group was last found with nothing
    /// pending and nothing new; `None`: look.
    quiet_heads: Option<Vec<String>>,
}

/// How often an empty replay line is looked at again.
const REPLAY_CHECK: Duration = Duration::from_secs(1);
/// The one consumer of an endpoint's trigger group: only the lease holder
/// reads it, and it takes back whatever is pending first, in order.
const DELIVERER: &str = "deliverer";

/// This replica's name among the holders of webhook leases: the pod's
/// host name (Kubernetes sets `HOSTNAME`), the process id and a random
/// part, so a restarted process is a new holder.
pub fn replica_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "leadscore".to_owned());
    let host: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).take(48).collect();
    format!("{host}-{}-{:06x}", std::process::id(), (unit() * f64::from(1u32 << 24)) as u32)
}

/// Reads every endpoint's status from the store into the metrics.
pub async fn refresh_metrics(core: &Core) {
    let now = core.clock.now();
    for spec in &core.webhooks {
        let Ok(s) = crate::engine::webhooks::status(core, spec).await else { continue };
        let age = s.oldest_pending.map_or(0.0, |at| (now.millis() - at.millis()).max(0) as f64 / 1000.0);
        core.metrics.set_webhook(
            &spec.name,
            &[
                ("delivered", s.counters.delivered),
                ("failed", s.counters.failed),
                ("retried", s.counters.retried),
                ("dead_letters", s.dead_letters),
                ("replaying", s.replaying),
                ("backlog", s.backlog),
            ],
            age,
        );
    }
}

/// Starts one worker per endpoint.
pub fn spawn(
    core: Arc<Core>,
    endpoints: Vec<Endpoint>,
    replica: &str,
    idle: Duration,
    stopping: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let client = client();
    endpoints
        .into_iter()
        .map(|endpoint| {
            let latency = core.metrics.webhook_latency(&endpoint.spec.name);
            let worker = Worker {
                core: core.clone(),
                pace: Mutex::new(Pace::new(endpoint.spec.rate_limit)),
                endpoint,
                client: client.clone(),
                replica: replica.to_owned(),
                counts: Mutex::new(WebhookCounters::default()),
                latency,
                idle,
                held: Mutex::new(None),
            };
            tokio::spawn(worker.run(stopping.clone()))
        })
        .collect()
}

/// What a round found.
enum Round {
    /// Nothing waited.
    Idle,
    /// Events were settled (or the round was cut short): look again at once.
    Busy,
    /// Another replica holds the lease.
    NotHolder,
}

impl Worker {
    fn name(&self) -> &str {
        &self.endpoint.spec.name
    }

    async fn run(self, mut stopping: watch::Receiver<bool>) {
        tracing::info!(endpoint = self.name(), url = %self.endpoint.spec.shown_url(), events = %self.endpoint.spec.events.join(", "), "webhook endpoint started");
        let mut failures = 0u32;
        let mut fed = self.core.fed.subscribe();
        loop {
            // (A dropped sender counts as stopping: never spin on it.)
            if *stopping.borrow() || stopping.has_changed().is_err() {
                break;
            }
            let wait = match self.round(&mut stopping).await {
                Ok(round) => {
                    failures = 0;
                    match round {
                        Round::Busy => Duration::ZERO,
                        Round::Idle => self.idle,
                        Round::NotHolder => Duration::from_millis(LEASE_MS as u64 / 2),
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(endpoint = self.name(), error = %e, failures, "webhook round failed; trying again");
                    }
                    Duration::from_millis(500u64 << failures.min(5))
                }
            };
            self.flush_counts().await;
            if !wait.is_zero() {
                // Written here: look at once; written by another replica:
                // seen at the next poll.
                let woken = wait == self.idle;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = fed.changed(), if woken => {}
                    _ = stopping.changed() => {}
                }
            }
        }
        self.flush_counts().await;
        self.release().await;
    }

    /// Writes the counts gathered since the last time; kept for the next
    /// time if the store does not answer.
    async fn flush_counts(&self) {
        let delta = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        if delta == WebhookCounters::default() {
            return;
        }
        if self.core.store.add_webhook_counters(self.name(), &delta).await.is_err() {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let newer = std::mem::take(&mut *counts);
            *counts = delta;
            counts.add(&newer);
        }
    }

    fn count(&self, f: impl FnOnce(&mut WebhookCounters)) {
        f(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes or renews the lease when due (a third of its time gone), and
    /// reads the position on taking it (again: another replica may have
    /// moved it meanwhile); `None` when another replica holds it.
    async fn hold(&self) -> Result<Option<Held>, StoreError> {
        let lease = Duration::from_millis(LEASE_MS as u64);
        let known = self.held().clone().filter(|h| h.renewed_at.elapsed() < lease);
        if let Some(held) = &known
            && held.renewed_at.elapsed() < lease / 3
        {
            return Ok(known);
        }
        let store = &self.core.store;
        let asked_at = std::time::Instant::now();
        if !store.webhook_lease(self.name(), &self.replica, LEASE_MS).await? {
            *self.held() = None;
            return Ok(None);
        }
        let held = match known {
            Some(held) => Held { renewed_at: asked_at, ..held },
            None => {
                let position = match store.webhook_position(self.name()).await? {
                    Some(p) => p,
                    None => {
                        // A new endpoint receives what happens from now on.
                        let now = self.core.clock.now();
                        if self.endpoint.spec.filter.wants_triggers() {
                            store.start_group_at_end(&self.endpoint.spec.trigger_group()).await?;
                        }
                        let p = WebhookPosition { cursor: store.feed_end().await?, since_ms: now.millis() };
                        store.set_webhook_position(self.name(), &p).await?;
                        tracing::info!(endpoint = self.name(), "webhook endpoint receives events from now on");
                        p
                    }
                };
                Held { renewed_at: asked_at, position, replays_checked_at: None, quiet_heads: None }
            }
        };
        *self.held() = Some(held.clone());
        Ok(Some(held))
    }

    fn update_held(&self, f: impl FnOnce(&mut Held)) {
        if let Some(held) = self.held().as_mut() {
            f(held);
        }
    }

    async fn move_to(&self, position: WebhookPosition) -> Result<(), StoreError> {
        self.core.store.set_webhook_position(self.name(), &position).await?;
        self.update_held(|h| h.position = position);
        Ok(())
    }

    /// Triggers for the endpoint: those pending first (held back or cut
    /// short before), then new ones. `None` when the trigger heads show
    /// nothing new since the group was last found quiet.
    async fn read_triggers(
        &self,
        held: &Held,
        now: Timestamp,
    ) -> Result<Option<(Vec<Delivery>, Vec<String>)>, StoreError> {
        let store = &self.core.store;
        let heads = store.trigger_heads().await?;
        if held.quiet_heads.as_ref() == Some(&heads) {
            return Ok(None);
        }
        // Everything pending is this holder's to send again at once;
        // dead letters are this module's, after its own attempts.
        let policy = DeliveryPolicy { visibility_timeout_ms: 0, max_deliveries: u64::MAX };
        let deliveries =
            store.deliver_triggers(&self.endpoint.spec.trigger_group(), DELIVERER, BATCH, &policy, now).await?;
        Ok(Some((deliveries, heads)))
    }

    async fn round(&self, stopping: &mut watch::Receiver<bool>) -> Result<Round, StoreError> {
        let store = &self.core.store;
        let spec = &self.endpoint.spec;
        let Some(held) = self.hold().await? else { return Ok(Round::NotHolder) };
        let now = self.core.clock.now();
        let position = held.position.clone();
        // Replays are looked for every round while there are some, else
        // every REPLAY_CHECK.
        let mut events: Vec<Event> = Vec::new();
        if held.replays_checked_at.is_none_or(|at| at.elapsed() >= REPLAY_CHECK) {
            let checked_at = std::time::Instant::now();
            let replays = store.webhook_letters(self.name(), LetterLine::Replay, BATCH).await?;
            self.update_held(|h| h.replays_checked_at = replays.is_empty().then_some(checked_at));
            events.extend(replays.iter().map(replay_event));
        }
        // Triggers before changes: a trigger read now was written with its
        // change, so the change is in the feed read next.
        let triggers = if spec.filter.wants_triggers() { self.read_triggers(&held, now).await? } else { None };
        let mut next_cursor = position.cursor.clone();
        let mut caught_up = true;
        if spec.filter.wants_changes() {
            let page = store.list_changes(&position.cursor, BATCH).await?;
            caught_up = page.changes.len() < BATCH;
            events.extend(page.changes.iter().filter(|c| spec.filter.takes_feed(&c.event)).map(change_event));
            next_cursor = page.next_cursor;
        }
        let mut skipped = Vec::new();
        let mut sent_triggers = false;
        if let Some((deliveries, heads)) = triggers {
            if deliveries.is_empty() {
                self.update_held(|h| h.quiet_heads = Some(heads));
            } else if caught_up {
                // (With changes still to read, the triggers wait for them:
                // pending, they come first next round.)
                sent_triggers = true;
                self.update_held(|h| h.quiet_heads = None);
                for d in deliveries {
                    let t = &d.trigger;
                    if t.fired_at.millis() < position.since_ms
                        || !spec.filter.takes_trigger(&t.definition_id, &t.program)
                    {
                        skipped.push(d.trigger_id.clone());
                    } else {
                        events.push(trigger_event(&d));
                    }
                }
            }
        }
        if !skipped.is_empty() {
            store.ack_triggers(&spec.trigger_group(), &skipped).await?;
        }
        if events.is_empty() {
            if next_cursor != position.cursor {
                self.move_to(WebhookPosition { cursor: next_cursor, ..position }).await?;
                return Ok(Round::Busy);
            }
            return Ok(if sent_triggers || !caught_up { Round::Busy } else { Round::Idle });
        }

        let settled: Mutex<Vec<(Event, Outcome)>> = Mutex::new(Vec::with_capacity(events.len()));
        let deliver_all = futures::stream::iter(chains(events)).for_each_concurrent(spec.max_concurrent, |chain| {
            let settled = &settled;
            async move {
                for event in chain {
                    let outcome = self.deliver(&event).await;
                    settled.lock().unwrap_or_else(|p| p.into_inner()).push((event, outcome));
                }
            }
        });
        let stopped = tokio::select! {
            () = deliver_all => false,
            () = self.hold_lease(held.renewed_at) => {
                *self.held() = None;
                tracing::warn!(endpoint = self.name(), "webhook lease lost mid-round; another replica sends the round again");
                return Ok(Round::NotHolder);
            }
            _ = stopping.changed() => true,
        };
        let settled = settled.into_inner().unwrap_or_else(|p| p.into_inner());
        // Cut short by a shutdown: what was accepted is settled; the
        // position stays, so the rest (and some of what arrived) is sent again.
        self.settle(settled).await?;
        if !stopped && next_cursor != position.cursor {
            self.move_to(WebhookPosition { cursor: next_cursor, ..position }).await?;
        }
        Ok(Round::Busy)
    }

    /// Renews the lease while a round runs, and writes the counts so far
    /// (status stays current through long retries). Returns once the lease
    /// is lost, or no renewal succeeded for 6/10 of its time: before it can
    /// run out, so no other replica sends while this one does.
    async fn hold_lease(&self, renewed_at: std::time::Instant) {
        let lease = Duration::from_millis(LEASE_MS as u64);
        let mut last_ok = renewed_at;
        loop {
            tokio::time::sleep(lease / 10).await;
            let asked_at = std::time::Instant::now();
            match tokio::time::timeout(lease / 5, self.core.store.webhook_lease(self.name(), &self.replica, LEASE_MS))
                .await
            {
                Ok(Ok(true)) => {
                    last_ok = asked_at;
                    self.update_held(|h| h.renewed_at = asked_at);
                }
                Ok(Ok(false)) => return,
                // The store may answer again before the lease runs out.
                Ok(Err(_)) | Err(_) => {}
            }
            if last_ok.elapsed() >= lease * 6 / 10 {
                return;
            }
            let _ = tokio::time::timeout(lease / 10, self.flush_counts()).await;
        }
    }

    /// Gives the lease up at shutdown, so another replica takes over at once.
    async fn release(&self) {
        if self.held().take().is_some() {
            let _ = self.core.store.release_webhook_lease(self.name(), &self.replica).await;
        }
    }

    /// Dead letters first, then acknowledgements: nothing is dropped unsent.
    async fn settle(&self, settled: Vec<(Event, Outcome)>) -> Result<(), StoreError> {
        let store = &self.core.store;
        let now = self.core.clock.now();
        let mut dead = Vec::new();
        let mut acks = Vec::new();
        let mut delivered_replays = Vec::new();
        for (event, outcome) in settled {
            match outcome {
                Outcome::Delivered => {
                    if event.origin == Origin::Replay {
                        delivered_replays.push(event.id.clone());
                    }
                }
                Outcome::Dead { attempts, error } => {
                    tracing::warn!(endpoint = self.name(), event_id = %event.id, attempts, error = %error, "webhook event given up on: a dead letter now");
                    dead.push(WebhookLetter {
                        event_id: event.id.clone(),
                        lead_id: event.lead_id.clone(),
                        event_type: event.event_type.to_owned(),
                        occurred_at_ms: event.at.millis(),
                        body: String::from_utf8_lossy(&event.body).into_owned(),
                        attempts,
                        last_error: error,
                        dead_at_ms: now.millis(),
                    });
                }
            }
            if let Origin::Trigger(id) = event.origin {
                acks.push(id);
            }
        }
        self.count(|c| c.dead_lettered += dead.len() as u64);
        store.park_webhook_letters(self.name(), &dead).await?;
        store.drop_webhook_letters(self.name(), &delivered_replays).await?;
        if !acks.is_empty() {
            store.ack_triggers(&self.endpoint.spec.trigger_group(), &acks).await?;
        }
        Ok(())
    }

    /// Tries one event until it is accepted or its attempts are spent.
    async fn deliver(&self, event: &Event) -> Outcome {
        let retry = self.endpoint.spec.retry;
        let mut attempt = 1;
        loop {
            if attempt > 1 {
                self.count(|c| c.retried += 1);
            }
            self.paced().await;
            match self.attempt(event).await {
                Ok(()) => {
                    let now = self.core.clock.now();
                    self.latency.observe((now.millis() - event.at.millis()).max(0) as f64 / 1000.0);
                    self.count(|c| {
                        c.delivered += 1;
                        c.last_success_at_ms = now.millis();
                    });
                    return Outcome::Delivered;
                }
                Err(failure) => {
                    let now = self.core.clock.now();
                    self.count(|c| {
                        c.failed += 1;
                        c.last_error.clone_from(&failure.error);
                        c.last_error_at_ms = now.millis();
                    });
                    if let Some(asked) = failure.retry_after_ms {
                        // The receiver asked every sender to wait, not only this event.
                        let until = now.millis().saturating_add(asked.min(retry.max_backoff_ms)).saturating_mul(1000);
                        self.pace.lock().unwrap_or_else(|p| p.into_inner()).pause_until(until);
                    }
                    if attempt >= retry.max_attempts {
                        return Outcome::Dead { attempts: attempt, error: failure.error };
                    }
                    let wait = retry.wait_ms(attempt, failure.retry_after_ms, unit());
                    tracing::debug!(endpoint = self.name(), event_id = %event.id, attempt, error = %failure.error, wait_ms = wait, "webhook attempt failed; trying again");
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn paced(&self) {
        let now_us = self.core.clock.now().millis().saturating_mul(1000);
        let wait = self.pace.lock().unwrap_or_else(|p| p.into_inner()).reserve(now_us);
        if wait > 0 {
            tokio::time::sleep(Duration::from_micros(wait as u64)).await;
        }
    }

    /// The receiver's answer for a failure message: bounded, and without
    /// the endpoint's path (it may hold a token, and answers often echo it).
    fn answer_text(&self, raw: &[u8]) -> String {
        let mut text = String::from_utf8_lossy(raw).trim().to_owned();
        if let Some(pq) = self.endpoint.uri.path_and_query().map(|p| p.as_str()).filter(|p| p.len() > 1) {
            text = text.replace(pq, "/…");
            if let Some(path) = pq.split('?').next().filter(|p| p.len() > 1) {
                text = text.replace(path, "/…");
            }
        }
        crate::text::bounded(&text, MAX_ERROR)
    }

    /// One signed POST, bounded by the endpoint's timeout until the
    /// answer's status.
    async fn attempt(&self, event: &Event) -> Result<(), Failure> {
        let timestamp = self.core.clock.now().millis().div_euclid(1000);
        let signature = signature_header(&self.endpoint.keys, &event.id, timestamp, &event.body);
        let request = http::Request::post(self.endpoint.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("leadscore/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(event.body.clone()))
            .map_err(|e| Failure { error: crate::text::bounded(&e.to_string(), MAX_ERROR), retry_after_ms: None })?;
        let timeout = Duration::from_millis(self.endpoint.spec.timeout_ms as u64);
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                Failure {
                    error: crate::text::bounded(&format!("cannot reach the endpoint: {text}"), MAX_ERROR),
                    retry_after_ms: None,
                }
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after_ms(v, self.core.clock.now().millis()));
            Ok((status, retry_after, response.into_body()))
        };
        let (status, retry_after, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Failure {
                    error: format!("no answer within {}", crate::rules::format_duration(self.endpoint.spec.timeout_ms)),
                    retry_after_ms: None,
                });
            }
        };
        // The rest of the answer is read (a bounded part, briefly) so the
        // connection can serve the next delivery; accepted is accepted.
        let drain = async move {
            tokio::time::timeout(ANSWER_READ, http_body_util::Limited::new(body, MAX_ANSWER).collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
        };
        if status.is_success() {
            tokio::spawn(drain);
            return Ok(());
        }
        let text = drain.await.map(|b| self.answer_text(&b)).unwrap_or_default();
        let honoured = matches!(status.as_u16(), 429 | 503).then_some(retry_after).flatten();
        let error = format!("HTTP {status}{}{text}", if text.is_empty() { "" } else { ": " });
        Err(Failure { error: crate::text::bounded(&error, MAX_ERROR), retry_after_ms: honoured })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lead: &str, at: i64, event_type: &'static str) -> Event {
        Event {
            id: format!("{lead}-{at}-{event_type}"),
            lead_id: lead.into(),
            event_type,
            at: Timestamp::from_millis(at),
            body: Bytes::new(),
            origin: Origin::Change,
        }
    }

    #[test]
    fn a_leads_events_stay_in_order_and_leads_stay_apart() {
        let mut replay = event("a", 1, TRIGGER_EVENT);
        replay.origin = Origin::Replay;
        let chains = chains(vec![
            event("a", 20, CHANGE_EVENT),
            event("b", 5, CHANGE_EVENT),
            // Written later by a replica whose clock is behind: still after.
            event("a", 15, CHANGE_EVENT),
            replay.clone(),
            event("a", 10, TRIGGER_EVENT),
            event("a", 20, TRIGGER_EVENT),
            event("a", 20, TRIGGER_EVENT),
        ]);
        let shape: Vec<Vec<(i64, &str)>> =
            chains.iter().map(|c| c.iter().map(|e| (e.at.millis(), e.event_type)).collect()).collect();
        assert_eq!(
            shape,
            [
                vec![
                    (1, TRIGGER_EVENT),
                    (10, TRIGGER_EVENT),
                    (20, CHANGE_EVENT),
                    (15, CHANGE_EVENT),
                    (20, TRIGGER_EVENT)
                ],
                vec![(5, CHANGE_EVENT)]
            ],
            "replays first; each feed's order kept; a change before the trigger of its instant; one of each id"
        );
    }

    #[test]
    fn bodies_carry_type_timestamp_and_data() {
        let b = body(CHANGE_EVENT, Timestamp::from_millis(1_764_000_000_123), Ok(serde_json::json!({"x": 1})));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["type"], CHANGE_EVENT);
        assert_eq!(v["timestamp"], "2025-11-24T16:00:00.123Z");
        assert_eq!(v["data"]["x"], 1);
    }
}
