//! Webhooks end to end: the real service delivers to a real HTTP receiver
//! started here, which checks each signature by computing the HMAC itself.
//! (tests/clients/webhooks.py does the same with the Standard Webhooks
//! reference library, and adds crashes, drops and time-outs.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{KeyInit, Mac};
use leadscore::api::pb;
use leadscore::api::pb::nurture_client::NurtureClient;
use leadscore::config::{Millis, Settings, WebhookSettings};

use crate::helpers::{RedisServer, TestApp, now_millis, record, settings, signal};

const KEY: [u8; 32] = [7; 32];

fn secret() -> String {
    format!("whsec_{}", B64.encode(KEY))
}

/// What the receiver got: headers, body, and when.
#[derive(Debug, Clone)]
struct Delivery {
    headers: http::HeaderMap,
    body: bytes::Bytes,
    at: Instant,
}

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Delivery>>,
    /// Answers to give, in order, before answering 204.
    script: Mutex<Vec<(u16, Option<&'static str>)>>,
}

impl Receiver {
    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

async fn receiver() -> (Arc<Receiver>, u16) {
    let state = Arc::new(Receiver::default());
    let shared = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
            let state = shared.clone();
            async move {
                state.got.lock().unwrap().push(Delivery { headers, body, at: Instant::now() });
                let next = {
                    let mut script = state.script.lock().unwrap();
                    if script.is_empty() { None } else { Some(script.remove(0)) }
                };
                let mut response = http::Response::builder();
                let status = match next {
                    Some((status, retry_after)) => {
                        if let Some(after) = retry_after {
                            response = response.header("retry-after", after);
                        }
                        status
                    }
                    None => 204,
                };
                response.status(status).body(axum::body::Body::empty()).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (state, port)
}

fn hook(port: u16, events: &[&str]) -> WebhookSettings {
    WebhookSettings {
        name: "crm".into(),
        url: format!("http://127.0.0.1:{port}/hook"),
        events: events.iter().map(|e| e.to_string()).collect(),
        secret_env: Some("LEADSCORE_TEST_WEBHOOK_SECRET".into()),
        timeout: Millis(2_000),
        max_attempts: 3,
        retry_backoff: Millis(50),
        max_backoff: Millis(5_000),
        ..WebhookSettings::default()
    }
}

fn with_hook(redis_url: Option<String>, hook: WebhookSettings) -> Settings {
    // SAFETY: every test of this binary sets the same value.
    unsafe { std::env::set_var("LEADSCORE_TEST_WEBHOOK_SECRET", secret()) };
    let mut s = settings(redis_url);
    s.feed_poll_interval = Millis(50);
    s.webhooks = vec![hook];
    s
}

/// A VP with four content downloads: an MQL.
async fn make_mql(app: &TestApp, lead: &str) {
    let attributes: HashMap<String, String> = [("seniority".to_string(), "vp".to_string())].into();
    let mut client = app.client().await;
    let lead_msg = pb::Lead { lead_id: lead.into(), attributes, ..Default::default() };
    client.upsert_lead(pb::UpsertLeadRequest { lead: Some(lead_msg) }).await.unwrap();
    let now = now_millis();
    let signals = (0..4).map(|i| signal(&format!("{lead}-{i}"), lead, "content_download", now - i * 60_000)).collect();
    client.record_signals(record(signals)).await.unwrap();
}

async fn wait_for(receiver: &Receiver, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = receiver.deliveries();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{} of {n} deliveries arrived: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(d: &'a Delivery, name: &str) -> &'a str {
    d.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

/// HMAC-SHA256 over `id.timestamp.body`, computed here.
fn verify(d: &Delivery) {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&KEY).unwrap();
    mac.update(format!("{}.{}.", header(d, "webhook-id"), header(d, "webhook-timestamp")).as_bytes());
    mac.update(&d.body);
    let expected = format!("v1,{}", B64.encode(mac.finalize().into_bytes()));
    assert_eq!(header(d, "webhook-signature"), expected);
    let sent: i64 = header(d, "webhook-timestamp").parse().unwrap();
    assert!((sent - now_millis() / 1000).abs() <= 5, "the timestamp is now");
}

#[tokio::test]
async fn a_new_mql_is_posted_signed_with_the_changes_id() {
    let (receiver, port) = receiver().await;
    let app = TestApp::spawn(with_hook(None, hook(port, &["stage_changed(MQL)"]))).await;
    // Give the endpoint its start position, then make an MQL.
    tokio::time::sleep(Duration::from_millis(300)).await;
    make_mql(&app, "hook-1").await;
    let got = wait_for(&receiver, 1).await;
    let d = &got[0];
    verify(d);
    assert_eq!(header(d, "content-type"), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    assert_eq!(body["type"], "lead.stage_changed");
    assert_eq!(body["data"]["leadId"], "hook-1");
    assert_eq!(body["data"]["change"]["to"], "STAGE_MQL");
    assert_eq!(header(d, "webhook-id"), format!("change:{}", body["data"]["changeId"].as_str().unwrap()));

    // The feed names the same change.
    let mut qualification = pb::qualification_client::QualificationClient::new(app.channel().await);
    let feed = qualification
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: String::new(), limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert!(feed.changes.iter().any(|c| format!("change:{}", c.change_id) == header(d, "webhook-id")));

    let mut nurture = NurtureClient::new(app.channel().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let all = nurture.get_webhook_status(pb::GetWebhookStatusRequest::default()).await.unwrap().into_inner();
        let s = all.endpoints[0].clone();
        if s.delivered == 1 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((status.endpoint.as_str(), status.url.as_str()), ("crm", format!("http://127.0.0.1:{port}/…").as_str()));
    assert_eq!((status.delivered, status.failed, status.dead_letters, status.backlog), (1, 0, 0, 0));
    assert!(status.last_success_at.is_some() && status.last_error.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured_and_dead_letters_replay_on_redis() {
    let redis = RedisServer::start();
    let (receiver, port) = receiver().await;
    receiver.script.lock().unwrap().extend([(503, Some("1")), (500, None), (500, None)]);
    let app = TestApp::spawn(with_hook(Some(redis.url()), hook(port, &["trigger(sales_alert_new_mql)"]))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    make_mql(&app, "hook-2").await;
    // 503 with Retry-After: 1, then 500 twice: a dead letter after 3 attempts.
    let got = wait_for(&receiver, 3).await;
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(950), "Retry-After: 1 honoured, waited {gap:?}");
    assert!(got[2].at - got[1].at < Duration::from_millis(900), "then the back-off of 50 ms");
    assert_eq!(got.iter().map(|d| header(d, "webhook-id")).collect::<std::collections::BTreeSet<_>>().len(), 1);
    got.iter().for_each(verify);

    let mut nurture = NurtureClient::new(app.channel().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    let letters = loop {
        let listed = nurture
            .list_webhook_dead_letters(pb::ListWebhookDeadLettersRequest { endpoint: "crm".into(), limit: 0 })
            .await
            .unwrap()
            .into_inner()
            .letters;
        if !listed.is_empty() || Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!((letter.attempts, letter.lead_id.as_str(), letter.event_type.as_str()), (3, "hook-2", "trigger.fired"));
    assert!(letter.last_error.starts_with("HTTP 500"), "{}", letter.last_error);
    assert_eq!(letter.event_id, header(&got[0], "webhook-id"));
    assert_eq!(letter.body.as_bytes(), &got[0].body[..], "kept as sent");
    assert_eq!(receiver.deliveries().len(), 3, "nothing sent after the last attempt");

    // Replayed: sent again with the same id and body, accepted this time.
    let replayed = nurture
        .replay_webhook_dead_letters(pb::ReplayWebhookDeadLettersRequest {
            endpoint: "crm".into(),
            event_ids: vec![letter.event_id.clone(), "trigger:nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    let got = wait_for(&receiver, 4).await;
    assert_eq!((header(&got[3], "webhook-id"), &got[3].body), (letter.event_id.as_str(), &got[0].body));
    verify(&got[3]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = nurture
            .get_webhook_status(pb::GetWebhookStatusRequest { endpoint: "crm".into() })
            .await
            .unwrap()
            .into_inner()
            .endpoints
            .remove(0);
        if s.delivered == 1 && s.replaying == 0 {
            assert_eq!((s.failed, s.retried, s.dead_letters, s.max_attempts), (3, 2, 0, 3));
            assert!(s.last_error.starts_with("HTTP 500"));
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.scrape_metrics().await;
    assert!(metrics.contains("leadscore_webhook_events{endpoint=\"crm\",state=\"delivered\"} 1"), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn webhook_rpcs_refuse_unknown_endpoints_and_bad_requests() {
    let (_receiver, port) = receiver().await;
    let app = TestApp::spawn(with_hook(None, hook(port, &["stage_changed"]))).await;
    let mut nurture = NurtureClient::new(app.channel().await);
    let e = nurture.get_webhook_status(pb::GetWebhookStatusRequest { endpoint: "crn".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("crm"), "names the configured ones: {}", e.message());
    let e = nurture
        .replay_webhook_dead_letters(pb::ReplayWebhookDeadLettersRequest { endpoint: "crm".into(), event_ids: vec![] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let e = nurture
        .list_webhook_dead_letters(pb::ListWebhookDeadLettersRequest { endpoint: "crm".into(), limit: 5000 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn a_missing_or_malformed_secret_stops_the_start_without_showing_it() {
    let mut s = with_hook(None, hook(1, &["triggers"]));
    s.webhooks[0].secret_env = Some("LEADSCORE_TEST_UNSET_SECRET".into());
    let e = leadscore::startup::Application::build(s.clone()).await.err().expect("refused").to_string();
    assert!(e.contains("webhook 'crm'") && e.contains("LEADSCORE_TEST_UNSET_SECRET"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "whsec_c2hvcnQ=").unwrap();
    s.webhooks[0].secret_env = None;
    s.webhooks[0].secret_file = Some(path);
    let e = leadscore::startup::Application::build(s).await.err().expect("refused").to_string();
    assert!(e.contains("webhook 'crm'") && e.contains("5 bytes") && !e.contains("c2hvcnQ"), "{e}");
}

/// Makes many leads MQLs in one call: VPs with four downloads each.
async fn make_mqls(app: &TestApp, leads: &[String]) {
    let mut client = app.client().await;
    for lead in leads {
        let attributes: HashMap<String, String> = [("seniority".to_string(), "vp".to_string())].into();
        let lead_msg = pb::Lead { lead_id: lead.clone(), attributes, ..Default::default() };
        client.upsert_lead(pb::UpsertLeadRequest { lead: Some(lead_msg) }).await.unwrap();
    }
    let now = now_millis();
    let signals = leads
        .iter()
        .flat_map(|lead| {
            (0..4).map(move |i| signal(&format!("{lead}-{i}"), lead, "content_download", now - i * 60_000))
        })
        .collect();
    client.record_signals(record(signals)).await.unwrap();
}

fn ids(got: &[Delivery]) -> Vec<String> {
    got.iter().map(|d| header(d, "webhook-id").to_owned()).collect()
}

fn lead_of(d: &Delivery) -> String {
    let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    body["data"]["leadId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn more_than_a_batch_arrives_once_each_with_every_change_before_its_trigger() {
    let redis = RedisServer::start();
    let (receiver, port) = receiver().await;
    let hook = WebhookSettings { max_concurrent: 8, ..hook(port, &["stage_changed", "trigger(sales_alert_new_mql)"]) };
    let app = TestApp::spawn(with_hook(Some(redis.url()), hook)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 150 MQLs at once: 150 changes and 150 triggers, more than a round reads.
    let leads: Vec<String> = (0..150).map(|i| format!("bulk-{i}")).collect();
    make_mqls(&app, &leads).await;
    let got = wait_for(&receiver, 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(got.len() >= 300);
    let got = receiver.deliveries();
    let all = ids(&got);
    let unique: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (300, 300), "each once");
    for lead in &leads {
        let kinds: Vec<&str> = got
            .iter()
            .filter(|d| &lead_of(d) == lead)
            .map(|d| if header(d, "webhook-id").starts_with("change:") { "change" } else { "trigger" })
            .collect();
        assert_eq!(kinds, ["change", "trigger"], "{lead}");
    }
    got.iter().for_each(verify);
    app.stop().await;
}

#[tokio::test]
async fn one_replica_sends_and_another_takes_over_when_it_stops() {
    let redis = RedisServer::start();
    let (receiver, port) = receiver().await;
    let first = TestApp::spawn(with_hook(Some(redis.url()), hook(port, &["stage_changed(MQL)"]))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = TestApp::spawn(with_hook(Some(redis.url()), hook(port, &["stage_changed(MQL)"]))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Written through both replicas: sent once each.
    make_mql(&first, "two-1").await;
    make_mql(&second, "two-2").await;
    wait_for(&receiver, 2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.deliveries().len(), 2, "{:?}", ids(&receiver.deliveries()));
    // The holder stops (it gives the lease up); the other sends what follows.
    first.stop().await;
    make_mql(&second, "two-3").await;
    let got = wait_for(&receiver, 3).await;
    assert_eq!(lead_of(&got[2]), "two-3");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.deliveries().len(), 3);
    second.stop().await;
}

#[tokio::test]
async fn an_erased_leads_dead_letters_go_and_its_tombstone_is_posted() {
    let redis = RedisServer::start();
    let (receiver, port) = receiver().await;
    receiver.script.lock().unwrap().extend([(500, None), (500, None), (500, None)]);
    let events = ["trigger(sales_alert_new_mql)", "lead_erased"];
    let app = TestApp::spawn(with_hook(Some(redis.url()), hook(port, &events))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    make_mql(&app, "hook-erased").await;
    wait_for(&receiver, 3).await;
    let mut nurture = NurtureClient::new(app.channel().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while nurture
        .list_webhook_dead_letters(pb::ListWebhookDeadLettersRequest { endpoint: "crm".into(), limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .letters
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the trigger became a dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let receipt = pb::profiles_client::ProfilesClient::new(app.channel().await)
        .forget_lead(pb::ForgetLeadRequest { lead_id: "hook-erased".into(), actor: "dpo".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.webhook_letters, 1);
    let letters = nurture
        .list_webhook_dead_letters(pb::ListWebhookDeadLettersRequest { endpoint: "crm".into(), limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .letters;
    assert!(letters.is_empty(), "{letters:?}");
    // The tombstone: signed, naming the lead by its reference only.
    let got = wait_for(&receiver, 4).await;
    let tombstone = &got[3];
    verify(tombstone);
    let body: serde_json::Value = serde_json::from_slice(&tombstone.body).unwrap();
    assert_eq!(body["type"], "lead.erased");
    assert_eq!(body["data"]["erased"]["leadRef"], receipt.lead_ref);
    assert!(!String::from_utf8_lossy(&tombstone.body).contains("hook-erased"));
    app.stop().await;
}
