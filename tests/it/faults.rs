//! Faults and abuse: concurrent writers, a paused or killed Redis, SIGTERM
//! with calls in flight, SIGKILL in the middle of batches, hostile input.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leadscore::api::pb;
use leadscore::api::pb::lead_scoring_client::LeadScoringClient;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{DAY, RedisServer, TestApp, metric_value, now_millis, record, settings, signal, violated_fields};

async fn app() -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    app.wait_health(ServingStatus::Serving).await;
    (redis, app)
}

async fn score(client: &mut LeadScoringClient<tonic::transport::Channel>, lead: &str) -> pb::LeadScore {
    client
        .score_lead(pb::ScoreLeadRequest { lead_id: lead.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap()
}

/// Signals counted in a score, over every type.
fn counted(score: &pb::LeadScore) -> u64 {
    score
        .contributions
        .iter()
        .filter_map(|c| match &c.source {
            Some(pb::contribution::Source::Signal(s)) => Some(s.counted),
            _ => None,
        })
        .sum()
}

/// 100 signals of mixed types over 80 days (at most two a day, under every
/// daily cap), event ids prefixed.
fn history(prefix: &str, lead: &str) -> Vec<pb::Signal> {
    let types = ["page_view", "content_download", "email_click", "webinar_attended", "pricing_page_view"];
    let now = now_millis();
    (0..100)
        .map(|i| signal(&format!("{prefix}{i}"), lead, types[i % types.len()], now - (i as i64 % 80) * DAY - i as i64))
        .collect()
}

#[tokio::test]
async fn a_hundred_concurrent_writers_to_one_lead_lose_no_update() {
    let (_redis, app) = app().await;
    let client = app.client().await;
    let calls = history("c", "hot").into_iter().map(|s| {
        let mut client = client.clone();
        tokio::spawn(async move { client.record_signals(record(vec![s])).await })
    });
    for call in futures::future::join_all(calls).await {
        call.unwrap().unwrap();
    }
    let mut client = client;
    for chunk in history("s", "calm").chunks(1) {
        client.record_signals(record(chunk.to_vec())).await.unwrap();
    }
    let (hot, calm) = (score(&mut client, "hot").await, score(&mut client, "calm").await);
    assert!((hot.total - calm.total).abs() < 1e-9, "concurrent {} vs sequential {}", hot.total, calm.total);
    assert_eq!(counted(&hot), 100);
    assert_eq!(counted(&calm), 100);
}

#[tokio::test]
async fn a_paused_redis_cannot_hold_a_call_past_its_deadline() {
    let (redis, app) = app().await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("p1", "paused", "page_view", now_millis())])).await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1_000).arg("ALL").query(&mut redis.connection()).unwrap();
    for deadline in [50, 50, 50] {
        let mut request = tonic::Request::new(pb::ScoreLeadRequest { lead_id: "paused".into(), ..Default::default() });
        request.set_timeout(Duration::from_millis(deadline));
        let started = Instant::now();
        let status = client.score_lead(request).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded), "{status:?}");
        assert!(took < Duration::from_millis(deadline + 100), "ended {took:?} after a {deadline} ms deadline");
    }
}

#[tokio::test]
async fn sigterm_drains_two_hundred_calls_in_flight_after_health_turns_not_serving() {
    let redis = RedisServer::start();
    let mut s = settings(Some(redis.url()));
    s.shutdown_grace = leadscore::config::Millis(5_000);
    s.redis_timeout = leadscore::config::Millis(3_000);
    let app = TestApp::spawn(s).await;
    app.wait_health(ServingStatus::Serving).await;
    let mut watch = app.health().await.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);

    // Redis holds every call for 600 ms: 200 calls are in flight on two
    // connections (at most 200 streams each).
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(600).arg("WRITE").query(&mut redis.connection()).unwrap();
    let clients = [app.client().await, LeadScoringClient::new(app.channel().await)];
    let now = now_millis();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = clients[i % 2].clone();
            let s = signal(&format!("t{i}"), &format!("term-{}", i % 50), "page_view", now);
            tokio::spawn(async move { client.record_signals(record(vec![s])).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    let stopping = tokio::spawn(app.stop());
    // Health says NOT_SERVING before the server goes away.
    let next = tokio::time::timeout(Duration::from_secs(3), watch.message()).await.expect("health in time");
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    let mut ok = 0;
    for call in calls {
        if call.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    stopping.await.unwrap();
    assert_eq!(ok, 200, "every accepted call completes");
    assert!(started.elapsed() < Duration::from_secs(5), "exited within the drain deadline: {:?}", started.elapsed());
}

/// The service as a process of its own, killed on drop.
struct ServiceProcess {
    child: Child,
    port: u16,
}

impl ServiceProcess {
    fn start(redis_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_leadscore"))
            .args(["serve", "--grpc-addr", &format!("127.0.0.1:{port}"), "--metrics-addr", "off"])
            .args(["--redis-url", redis_url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the leadscore binary runs");
        Self { child, port }
    }

    async fn client(&self) -> LeadScoringClient<tonic::transport::Channel> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(c) = LeadScoringClient::connect(format!("http://127.0.0.1:{}", self.port)).await {
                return c;
            }
            assert!(Instant::now() < deadline, "the service process did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Batch `b`: 20 signals for lead `kill-{b % 25}` on 20 different days.
fn batch(b: usize) -> Vec<pb::Signal> {
    let now = now_millis();
    (0..20)
        .map(|i| signal(&format!("k{b}-{i}"), &format!("kill-{}", b % 25), "page_view", now - i as i64 * DAY))
        .collect()
}

#[tokio::test]
async fn sigkill_mid_batches_keeps_every_acknowledged_signal_and_replay_counts_nothing_twice() {
    let redis = RedisServer::start();
    let mut service = ServiceProcess::start(&redis.url());
    let client = service.client().await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let calls: Vec<_> = (0..100)
        .map(|b| {
            let (mut client, done) = (client.clone(), done.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(b as u64 * 5)).await;
                let ok = client.record_signals(record(batch(b))).await.is_ok();
                if ok {
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                ok
            })
        })
        .collect();
    // Killed once a few batches are through, with the rest still coming.
    let deadline = Instant::now() + Duration::from_secs(10);
    while done.load(std::sync::atomic::Ordering::SeqCst) < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    service.kill();
    let acknowledged: Vec<usize> = futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
        .filter_map(|(b, ok)| ok.unwrap().then_some(b))
        .collect();
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < 100,
        "killed mid-way: {} of 100 acknowledged",
        acknowledged.len()
    );

    let service = ServiceProcess::start(&redis.url());
    let mut client = service.client().await;
    for b in 0..100 {
        let replay = client.record_signals(record(batch(b))).await.unwrap().into_inner();
        if acknowledged.contains(&b) {
            // Stored before the kill: the replay finds every signal.
            assert!(
                replay.results.iter().all(|r| r.status() == pb::SignalStatus::Duplicate),
                "batch {b} was acknowledged but not all stored: {:?}",
                replay.results.iter().map(|r| r.status()).collect::<Vec<_>>()
            );
        }
    }
    // Four batches of 20 per lead, each signal counted once.
    for lead in 0..25 {
        let s = score(&mut client, &format!("kill-{lead}")).await;
        assert_eq!(counted(&s), 80, "kill-{lead}");
    }
}

#[tokio::test]
async fn hostile_input_gets_clear_errors_and_writes_nothing_elsewhere() {
    let (redis, app) = app().await;
    let mut client = app.client().await;
    let now = now_millis();
    // Ids with key syntax are fine and kept apart.
    for id in ["a*b", "a:b", "{p1}", "a}{b"] {
        client.record_signals(record(vec![signal(&format!("h-{id}"), id, "page_view", now)])).await.unwrap();
        assert_eq!(score(&mut client, id).await.lead_id, id);
    }
    let long = "x".repeat(10_000);
    let status = client.record_signals(record(vec![signal("e", &long, "page_view", now)])).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["signals[0].lead_id"]);
    let status = client.record_signals(record(vec![signal(&long, "l", "page_view", now)])).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["signals[0].event_id"]);
    for bad in ["a\rb", "a\nb", "a\u{0}b"] {
        let status = client.record_signals(record(vec![signal("e", bad, "page_view", now)])).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["signals[0].lead_id"], "{bad:?}");
    }
    // Non-numeric property values are only text: NaN and inf do not score.
    let mut nan = signal("nan", "props", "page_view", now);
    nan.properties.insert("url".into(), "NaN".into());
    nan.properties.insert("value".into(), "inf".into());
    client.record_signals(record(vec![nan])).await.unwrap();
    assert!(score(&mut client, "props").await.total.is_finite());
    // Timestamps decades away.
    for at in [0, now + 100 * 365 * DAY] {
        let status = client.record_signals(record(vec![signal("t", "l", "page_view", at)])).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["signals[0].occurred_at"]);
    }
    // 10,001 signals: refused whole.
    let huge = (0..10_001).map(|i| signal(&format!("e{i}"), "l", "page_view", now)).collect();
    let status = client.record_signals(record(huge)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // An unknown stage number.
    let status = leadscore::api::pb::qualification_client::QualificationClient::new(app.channel().await)
        .set_stage(pb::SetStageRequest { lead_id: "a:b".into(), to: 99, actor: "crm".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Nothing reached the lead "l".
    let missing = client.score_lead(pb::ScoreLeadRequest { lead_id: "l".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    // Junk planted in one lead's record: that lead errors clearly, others work.
    client.record_signals(record(vec![signal("j1", "junk", "page_view", now)])).await.unwrap();
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*:lead:junk").query(&mut conn).unwrap();
    let _: () = redis::cmd("SET").arg(&keys[0]).arg("not a number").query(&mut conn).unwrap();
    let status =
        client.score_lead(pb::ScoreLeadRequest { lead_id: "junk".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("junk"), "names the lead: {}", status.message());
    assert!(!status.message().contains("not a number"), "stored values are not echoed: {}", status.message());
    assert!(score(&mut client, "a*b").await.total > 0.0);
    let more = client.record_signals(record(vec![signal("j2", "junk", "page_view", now)])).await;
    assert!(more.is_err(), "a corrupt lead is not written over silently");
    assert!(client.record_signals(record(vec![signal("ok2", "a:b", "page_view", now)])).await.is_ok());
}

/// However bad a request, its error stays small (well under 8 KiB of
/// trailers: grpcio refuses more than 16 KiB and reports RESOURCE_EXHAUSTED),
/// says INVALID_ARGUMENT, lists the valid signal types once and cuts the
/// caller's long values.
#[tokio::test]
async fn errors_stay_small_whatever_the_request() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let now = now_millis();
    // 1000 signals of ~700 bytes: under the 1 MiB message limit.
    let long = "y".repeat(300);
    let misspelled: Vec<_> = (0..1000)
        .map(|i| {
            let mut s = signal(&format!("e{i}"), "lead", &format!("page_veiw_{i}_{long}"), now);
            s.properties.insert(format!("\u{202e}{long}"), "v".into());
            s
        })
        .collect();
    for batch in [misspelled.clone(), misspelled[..50].to_vec(), misspelled[..1].to_vec()] {
        let n = batch.len();
        let status = client.record_signals(record(batch)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{n} signals");
        let size = status.message().len() + status.details().len();
        assert!(size < 6 * 1024, "{n} signals: {size} bytes of error");
        let details = tonic_types::StatusExt::get_error_details(&status);
        let violations = &details.bad_request().expect("field violations").field_violations;
        assert!(violations.iter().all(|v| !v.description.contains("page_view")), "{violations:?}");
        assert_eq!(status.message().matches("declared signal types").count(), 1, "once: {}", status.message());
        assert!(violations.iter().all(|v| v.field.len() <= 160 && v.description.len() <= 640), "{violations:?}");
        assert!(violations.iter().all(|v| !v.field.contains('\u{202e}')), "bidi controls are escaped");
        if n > 1 {
            assert!(violations.last().unwrap().description.contains("more violations not listed"), "{n}");
        }
    }
}

/// Calls that end by their deadline or are cancelled by the client are
/// counted (DEADLINE_EXCEEDED, CANCELLED), and the in-flight gauge returns
/// to 0 once the service is idle.
#[tokio::test]
async fn deadlines_and_cancellations_are_counted_and_leave_nothing_in_flight() {
    let redis = RedisServer::start();
    let mut s = settings(Some(redis.url()));
    s.request_timeout = leadscore::config::Millis(200);
    let app = TestApp::spawn(s).await;
    app.wait_health(ServingStatus::Serving).await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("p1", "paused", "page_view", now_millis())])).await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(2_000).arg("ALL").query(&mut redis.connection()).unwrap();
    // The server's own limit: answered DEADLINE_EXCEEDED.
    let status = client.score_lead(pb::ScoreLeadRequest { lead_id: "paused".into(), ..Default::default() }).await;
    assert_eq!(status.unwrap_err().code(), Code::DeadlineExceeded);
    // The caller's deadlines (the client gives up on its side at the same time).
    for _ in 0..2 {
        let mut request = tonic::Request::new(pb::ScoreLeadRequest { lead_id: "paused".into(), ..Default::default() });
        request.set_timeout(Duration::from_millis(50));
        let status = client.score_lead(request).await.unwrap_err();
        assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    }
    // Two calls the client gives up on (no deadline sent).
    for _ in 0..2 {
        let mut c = client.clone();
        let call = tokio::spawn(async move {
            c.score_lead(pb::ScoreLeadRequest { lead_id: "paused".into(), ..Default::default() }).await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        call.abort();
    }
    let method = "method=\"/leadscore.v1.LeadScoring/ScoreLead\"";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = app.scrape_metrics().await;
        let exceeded =
            metric_value(&text, &format!("leadscore_grpc_requests_total{{code=\"DEADLINE_EXCEEDED\",{method}}}"));
        let cancelled = metric_value(&text, &format!("leadscore_grpc_requests_total{{code=\"CANCELLED\",{method}}}"));
        let in_flight = metric_value(&text, "leadscore_grpc_requests_in_flight ");
        if exceeded == 3.0 && cancelled == 2.0 && in_flight == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deadline exceeded {exceeded}, cancelled {cancelled}, in flight {in_flight}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Data of another layout is never read or written over: the service
/// refuses to start on it, saying what it found; an empty prefix is
/// claimed for this layout.
#[tokio::test]
async fn data_of_another_layout_is_refused_at_start_up() {
    let redis = RedisServer::start();
    let mut conn = redis.connection();
    // A lead index as the earlier layout left it, without a format key.
    let _: () = redis::cmd("ZADD").arg("ls:{p3}:leads").arg(1).arg("old-lead").query(&mut conn).unwrap();
    let err = leadscore::startup::Application::build(settings(Some(redis.url()))).await.err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("layout format 1") && text.contains("leadscore migrate"), "{text}");
    let format: Option<String> = redis::cmd("GET").arg("ls:format").query(&mut conn).unwrap();
    assert_eq!(format, None, "nothing written");
    // Another prefix is empty: claimed, and the service starts.
    let mut other = settings(Some(redis.url()));
    other.redis_key_prefix = "fresh".into();
    assert!(leadscore::startup::Application::build(other.clone()).await.is_ok());
    let format: Option<String> = redis::cmd("GET").arg("fresh:format").query(&mut conn).unwrap();
    assert_eq!(format.as_deref(), Some("2"));
    // A format this build does not know is refused too.
    let _: () = redis::cmd("SET").arg("fresh:format").arg("9").query(&mut conn).unwrap();
    let text = leadscore::startup::Application::build(other).await.err().expect("refused").to_string();
    assert!(text.contains("format 9"), "{text}");
}
