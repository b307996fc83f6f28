//! Nurture triggers end to end: fired with stage changes, streamed to
//! consumer groups, at least once.

use std::collections::HashMap;
use std::time::Duration;

use leadscore::api::pb;
use leadscore::api::pb::nurture_client::NurtureClient;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::helpers::{
    DAY, ManualClock, RedisServer, TestApp, drain, now_millis, record, settings, signal, violated_fields,
};

async fn app() -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let mut s = settings(Some(redis.url()));
    s.trigger_visibility_timeout = leadscore::config::Millis(1_000);
    s.trigger_max_deliveries = 2;
    s.feed_poll_interval = leadscore::config::Millis(50);
    let app = TestApp::spawn(s).await;
    (redis, app)
}

async fn nurture(app: &TestApp) -> NurtureClient<Channel> {
    NurtureClient::new(app.channel().await)
}

/// Makes `lead` an MQL: a VP with four content downloads.
async fn make_mql(app: &TestApp, lead: &str) {
    let attributes: HashMap<String, String> = [("seniority".to_string(), "vp".to_string())].into();
    let mut client = app.client().await;
    client
        .upsert_lead(pb::UpsertLeadRequest {
            lead: Some(pb::Lead { lead_id: lead.into(), attributes, ..Default::default() }),
        })
        .await
        .unwrap();
    let now = now_millis();
    let signals = (0..4).map(|i| signal(&format!("{lead}-{i}"), lead, "content_download", now - i * 60_000)).collect();
    client.record_signals(record(signals)).await.unwrap();
}

async fn open(app: &TestApp, group: &str, consumer: &str) -> Streaming<pb::StreamTriggersResponse> {
    nurture(app)
        .await
        .stream_triggers(pb::StreamTriggersRequest { group: group.into(), consumer: consumer.into(), max_in_flight: 0 })
        .await
        .unwrap()
        .into_inner()
}

async fn next(stream: &mut Streaming<pb::StreamTriggersResponse>) -> pb::NurtureTrigger {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a trigger in time")
        .unwrap()
        .unwrap()
        .trigger
        .unwrap()
}

async fn nothing_within(stream: &mut Streaming<pb::StreamTriggersResponse>, ms: u64) {
    let got = tokio::time::timeout(Duration::from_millis(ms), stream.message()).await;
    assert!(got.is_err(), "unexpected: {got:?}");
}

#[tokio::test]
async fn a_new_mql_reaches_automation_and_comes_back_until_acknowledged() {
    let (_redis, app) = app().await;
    let mut first = open(&app, "automation", "worker-1").await;
    make_mql(&app, "lena").await;
    let trigger = next(&mut first).await;
    assert_eq!(
        (trigger.definition_id.as_str(), trigger.program.as_str(), trigger.lead_id.as_str()),
        ("sales_alert_new_mql", "sales-alert", "lena")
    );
    assert_eq!((trigger.stage(), trigger.delivery_count), (pb::Stage::Mql, 1));
    assert!(trigger.reason.contains("mql_engaged_and_fit"), "{}", trigger.reason);
    nothing_within(&mut first, 200).await;
    // The consumer dies without acknowledging.
    drop(first);

    let mut second = open(&app, "automation", "worker-2").await;
    let again = next(&mut second).await;
    assert_eq!((again.trigger_id.as_str(), again.delivery_count), (trigger.trigger_id.as_str(), 2));
    let acked = nurture(&app)
        .await
        .ack_triggers(pb::AckTriggersRequest {
            group: "automation".into(),
            trigger_ids: vec![again.trigger_id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acknowledged, 1);
    nothing_within(&mut second, 700).await;

    // Another group gets the same trigger, independently.
    let mut other = open(&app, "crm-tasks", "w").await;
    assert_eq!(next(&mut other).await.trigger_id, trigger.trigger_id);
}

/// The metrics endpoint reports Redis latency by operation and each
/// consumer group's triggers, as Redis holds them.
#[tokio::test]
async fn metrics_show_redis_latency_and_trigger_states() {
    let (_redis, app) = app().await;
    let mut stream = open(&app, "automation", "w").await;
    make_mql(&app, "mia").await;
    let trigger = next(&mut stream).await;
    let text = app.scrape_metrics().await;
    let value = |line_start: &str| {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    assert!(value(r#"leadscore_redis_command_duration_seconds_count{operation="EVALSHA"}"#) >= 1.0);
    assert_eq!(value(r#"leadscore_triggers{group="automation",state="fired"}"#), 1.0);
    assert_eq!(value(r#"leadscore_triggers{group="automation",state="pending"}"#), 1.0);
    nurture(&app)
        .await
        .ack_triggers(pb::AckTriggersRequest { group: "automation".into(), trigger_ids: vec![trigger.trigger_id] })
        .await
        .unwrap();
    let text = app.scrape_metrics().await;
    let line = |name: &str| text.lines().find(|l| l.starts_with(name)).map(str::to_owned);
    assert_eq!(
        line(r#"leadscore_triggers{group="automation",state="acked"}"#).as_deref(),
        Some(r#"leadscore_triggers{group="automation",state="acked"} 1"#)
    );
    assert_eq!(
        line(r#"leadscore_triggers{group="automation",state="pending"}"#).as_deref(),
        Some(r#"leadscore_triggers{group="automation",state="pending"} 0"#)
    );
}

#[tokio::test]
async fn unacknowledged_triggers_become_dead_letters_and_can_be_replayed() {
    let (_redis, app) = app().await;
    make_mql(&app, "max").await;
    let mut stream = open(&app, "g", "w").await;
    let first = next(&mut stream).await;
    let second = next(&mut stream).await;
    assert_eq!((first.trigger_id.as_str(), second.delivery_count), (second.trigger_id.as_str(), 2));
    // Two deliveries are the maximum here: the third attempt dead-letters it.
    nothing_within(&mut stream, 1_500).await;
    let mut client = nurture(&app).await;
    let dead = client
        .list_dead_letters(pb::ListDeadLettersRequest { group: "g".into(), limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .triggers;
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].trigger_id.as_str(), dead[0].delivery_count), (first.trigger_id.as_str(), 2));
    let replayed = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            group: "g".into(),
            trigger_ids: vec![first.trigger_id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.replayed, 1);
    let back = next(&mut stream).await;
    assert_eq!((back.trigger_id.as_str(), back.delivery_count), (first.trigger_id.as_str(), 1));
}

#[tokio::test]
async fn definitions_are_listed_and_bad_names_refused() {
    let (_redis, app) = app().await;
    let mut client = nurture(&app).await;
    let defs = client.list_trigger_definitions(pb::ListTriggerDefinitionsRequest {}).await.unwrap().into_inner();
    let listed: Vec<_> = defs.definitions.iter().map(|d| (d.id.as_str(), d.on.as_str())).collect();
    assert_eq!(
        listed,
        [
            ("sales_alert_new_mql", "stage_entered(MQL)"),
            ("book_discovery_call", "stage_entered(SQL)"),
            ("long_term_nurture", "stage_entered(RECYCLED)"),
            ("win_back_dormant", "inactive(30d)"),
            ("sla_escalation", "sla_breached"),
        ]
    );
    assert_eq!(defs.definitions[0].cooldown.as_ref().unwrap().seconds, 7 * 86_400);
    let bad = client
        .stream_triggers(pb::StreamTriggersRequest {
            group: "__dead__".into(),
            consumer: "a b".into(),
            max_in_flight: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["group", "consumer"]);
    let empty =
        client.ack_triggers(pb::AckTriggersRequest { group: "g".into(), trigger_ids: vec![] }).await.unwrap_err();
    assert_eq!(violated_fields(&empty), ["trigger_ids"]);
    // Ids that are no trigger of ours are ignored, not errors.
    let junk = vec!["0/abc".to_string(), "999999/1-1".to_string(), "t1".to_string(), "x".to_string()];
    let acked =
        client.ack_triggers(pb::AckTriggersRequest { group: "g".into(), trigger_ids: junk.clone() }).await.unwrap();
    assert_eq!(acked.into_inner().acknowledged, 0);
    let replayed = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest { group: "g".into(), trigger_ids: junk })
        .await
        .unwrap();
    assert_eq!(replayed.into_inner().replayed, 0);
}

/// A misspelled group is NOT_FOUND everywhere, naming the configured ones,
/// and leaves nothing behind in Redis.
#[tokio::test]
async fn a_misspelled_group_creates_nothing() {
    let (redis, app) = app().await;
    let mut client = nurture(&app).await;
    let typo = "automaton";
    let stream = client
        .stream_triggers(pb::StreamTriggersRequest { group: typo.into(), consumer: "w".into(), max_in_flight: 0 })
        .await
        .unwrap_err();
    assert_eq!(stream.code(), tonic::Code::NotFound);
    assert!(stream.message().contains("automation"), "{}", stream.message());
    let dead = client.list_dead_letters(pb::ListDeadLettersRequest { group: typo.into(), limit: 0 }).await;
    assert_eq!(dead.unwrap_err().code(), tonic::Code::NotFound);
    let replay = client
        .replay_dead_letters(pb::ReplayDeadLettersRequest { group: typo.into(), trigger_ids: vec!["0/1-1".into()] })
        .await;
    assert_eq!(replay.unwrap_err().code(), tonic::Code::NotFound);
    let ack =
        client.ack_triggers(pb::AckTriggersRequest { group: typo.into(), trigger_ids: vec!["0/1-1".into()] }).await;
    assert_eq!(ack.unwrap_err().code(), tonic::Code::NotFound);
    // No stream of any partition knows the group.
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut redis.connection()).unwrap();
    for key in keys.iter().filter(|k| k.contains("trig")) {
        let kind: String = redis::cmd("TYPE").arg(key).query(&mut redis.connection()).unwrap();
        if kind == "stream" {
            let groups: Vec<redis::Value> =
                redis::cmd("XINFO").arg("GROUPS").arg(key).query(&mut redis.connection()).unwrap();
            assert!(!format!("{groups:?}").contains(typo), "{key}: {groups:?}");
        }
    }
    assert!(!keys.iter().any(|k| k.contains(typo)), "{keys:?}");
}

/// Two replicas on one Redis, sharing a clock the test moves, sweeping
/// every 50 ms.
async fn replicas(redis: &RedisServer, clock: &std::sync::Arc<ManualClock>) -> (TestApp, TestApp) {
    let mut s = settings(Some(redis.url()));
    s.inactivity_sweep_interval = leadscore::config::Millis(50);
    s.feed_poll_interval = leadscore::config::Millis(50);
    let a = TestApp::spawn_with_clock(s.clone(), clock.clone()).await;
    let b = TestApp::spawn_with_clock(s, clock.clone()).await;
    (a, b)
}

#[tokio::test]
async fn quiet_leads_get_one_win_back_trigger_across_replicas() {
    let redis = RedisServer::start();
    let clock = ManualClock::at(now_millis());
    let (a, b) = replicas(&redis, &clock).await;
    let start = clock.millis();
    let mut watch = open(&b, "inactivity-check", "w").await;
    let mut client = a.client().await;
    client.record_signals(record(vec![signal("q1", "quiet", "page_view", start)])).await.unwrap();
    client.record_signals(record(vec![signal("b1", "busy", "page_view", start)])).await.unwrap();

    // 29 days later "busy" is active again, "quiet" is not; neither is due yet.
    clock.advance(29 * DAY);
    client.record_signals(record(vec![signal("b2", "busy", "page_view", clock.millis())])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(drain(&mut watch).await.is_empty());

    // A day and a bit later "quiet" has been quiet for 30 days.
    clock.advance(DAY + 60_000);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fired = drain(&mut watch).await;
    assert_eq!(fired.len(), 1, "once, though two replicas sweep: {fired:?}");
    assert_eq!((fired[0].definition_id.as_str(), fired[0].lead_id.as_str()), ("win_back_dormant", "quiet"));
    assert!(fired[0].reason.starts_with("no counted signal for 30d"), "{}", fired[0].reason);

    // 40 days on, "busy" has been quiet long enough too; "quiet" is not fired again.
    clock.advance(40 * DAY);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let next_round: Vec<_> = drain(&mut watch).await.into_iter().map(|t| t.lead_id).collect();
    assert_eq!(next_round, ["busy"]);

    // New engagement and a new quiet spell, but within the 90-day cooldown: nothing.
    client.record_signals(record(vec![signal("q2", "quiet", "page_view", clock.millis())])).await.unwrap();
    clock.advance(31 * DAY);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(drain(&mut watch).await.is_empty(), "within the cooldown");
    // Once more, after the cooldown: it fires again.
    client.record_signals(record(vec![signal("q3", "quiet", "page_view", clock.millis())])).await.unwrap();
    clock.advance(31 * DAY);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let last_round: Vec<_> = drain(&mut watch).await.into_iter().map(|t| t.lead_id).collect();
    assert_eq!(last_round, ["quiet"]);
}

#[tokio::test]
async fn consumers_carry_on_after_redis_loses_everything() {
    let (mut redis, app) = app().await;
    let mut stream = open(&app, "automation", "w").await;
    make_mql(&app, "before").await;
    assert_eq!(next(&mut stream).await.lead_id, "before");
    drop(stream);
    // A restart without persistence: the streams and the consumer group are gone.
    redis.restart();
    app.wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving).await;
    let mut stream = open(&app, "automation", "w").await;
    make_mql(&app, "after").await;
    assert_eq!(next(&mut stream).await.lead_id, "after");
}

const SCORE_TRIGGERS: &str = r#"
[[triggers]]
id = "hand_raiser"
on = "signal(demo_requested)"
program = "sdr-call"
cooldown = "1d"

[[triggers]]
id = "hot"
on = "score_above(50)"
program = "hot-lead"

[[triggers]]
id = "cooling"
on = "score_below(20)"
program = "cooling-off"

[[triggers]]
id = "reopened"
on = "reengaged(30d)"
program = "welcome-back"
"#;

/// A service whose rule file adds the score-driven triggers above.
async fn score_app(redis: &RedisServer, clock: &std::sync::Arc<ManualClock>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let rules = leadscore::DEFAULT_RULES
        .replace("# Moves the CRM may make", &format!("{SCORE_TRIGGERS}\n# Moves the CRM may make"));
    std::fs::write(&path, rules).unwrap();
    let mut s = settings(Some(redis.url()));
    s.rules = Some(path);
    s.feed_poll_interval = leadscore::config::Millis(50);
    (TestApp::spawn_with_clock(s, clock.clone()).await, dir)
}

/// New triggers on the stream, as (definition, lead).
async fn fired(stream: &mut Streaming<pb::StreamTriggersResponse>) -> Vec<(String, String)> {
    drain(stream).await.into_iter().map(|t| (t.definition_id, t.lead_id)).collect()
}

fn pair(definition: &str, lead: &str) -> (String, String) {
    (definition.to_owned(), lead.to_owned())
}

#[tokio::test]
async fn signals_and_score_crossings_fire_with_the_score_change() {
    let redis = RedisServer::start();
    let clock = ManualClock::at(now_millis());
    let (app, _dir) = score_app(&redis, &clock).await;
    let mut watch = open(&app, "automation", "w").await;
    let mut client = app.client().await;
    let at = |days: i64| clock.millis() - days * DAY;

    // Five form fills on five days: 12 points each, the fifth crosses 50.
    for d in 0..4 {
        client.record_signals(record(vec![signal(&format!("f{d}"), "ann", "form_fill", at(d))])).await.unwrap();
    }
    assert!(fired(&mut watch).await.is_empty());
    client.record_signals(record(vec![signal("f4", "ann", "form_fill", at(4))])).await.unwrap();
    assert_eq!(fired(&mut watch).await, [pair("hot", "ann")]);
    // Staying above fires nothing; a duplicate changes nothing.
    client.record_signals(record(vec![signal("f5", "ann", "form_fill", at(5))])).await.unwrap();
    client.record_signals(record(vec![signal("f4", "ann", "form_fill", at(4))])).await.unwrap();
    assert!(fired(&mut watch).await.is_empty());
    // Bounces (-10 each, no decay) take its 68 points down: crossing 20
    // downward (at the fifth) fires once.
    for b in 0..6 {
        client.record_signals(record(vec![signal(&format!("b{b}"), "ann", "email_bounce", at(0))])).await.unwrap();
    }
    assert_eq!(fired(&mut watch).await, [pair("cooling", "ann")]);

    // A demo request fires the hand-raiser trigger, once within its cooldown.
    client.record_signals(record(vec![signal("d1", "ben", "demo_requested", at(0))])).await.unwrap();
    client.record_signals(record(vec![signal("d2", "ben", "demo_requested", at(0))])).await.unwrap();
    let got = fired(&mut watch).await;
    assert_eq!(got.iter().filter(|p| p.0 == "hand_raiser").count(), 1, "{got:?}");
    clock.advance(DAY + 1);
    client.record_signals(record(vec![signal("d3", "ben", "demo_requested", clock.millis())])).await.unwrap();
    assert!(fired(&mut watch).await.contains(&pair("hand_raiser", "ben")));
}

#[tokio::test]
async fn a_lead_coming_back_after_a_quiet_month_is_reopened() {
    let redis = RedisServer::start();
    let clock = ManualClock::at(now_millis());
    let (app, _dir) = score_app(&redis, &clock).await;
    let mut watch = open(&app, "automation", "w").await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("p1", "cleo", "page_view", clock.millis())])).await.unwrap();
    clock.advance(10 * DAY);
    client.record_signals(record(vec![signal("p2", "cleo", "page_view", clock.millis())])).await.unwrap();
    assert!(fired(&mut watch).await.is_empty(), "ten days is not a quiet month");
    clock.advance(31 * DAY);
    client.record_signals(record(vec![signal("p3", "cleo", "page_view", clock.millis())])).await.unwrap();
    assert_eq!(fired(&mut watch).await, [pair("reopened", "cleo")]);

    // A recycled lead showing new engagement is reopened at once.
    let mut crm = leadscore::api::pb::qualification_client::QualificationClient::new(app.channel().await);
    crm.set_stage(pb::SetStageRequest {
        lead_id: "cleo".into(),
        to: pb::Stage::Recycled.into(),
        actor: "rep".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(fired(&mut watch).await, [pair("long_term_nurture", "cleo")]);
    clock.advance(DAY);
    client.record_signals(record(vec![signal("p4", "cleo", "email_click", clock.millis())])).await.unwrap();
    assert_eq!(fired(&mut watch).await, [pair("reopened", "cleo")]);
}

#[tokio::test]
async fn concurrent_signals_cross_a_threshold_once() {
    let redis = RedisServer::start();
    let clock = ManualClock::at(now_millis());
    let (app, _dir) = score_app(&redis, &clock).await;
    let mut watch = open(&app, "automation", "w").await;
    let now = clock.millis();
    let calls = (0..40).map(|i| {
        let app = &app;
        async move {
            let mut client = app.client().await;
            let s = signal(&format!("c{i}"), "dora", "content_download", now - i * DAY);
            client.record_signals(record(vec![s])).await.unwrap();
        }
    });
    futures::future::join_all(calls).await;
    let hot: Vec<_> = fired(&mut watch).await.into_iter().filter(|p| p.0 == "hot").collect();
    assert_eq!(hot, [pair("hot", "dora")]);
}

/// Two real service processes on one Redis, both sweeping: a lead quiet
/// for two seconds gets its inactivity trigger once.
#[tokio::test]
async fn two_service_processes_fire_an_inactivity_trigger_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let quick = leadscore::DEFAULT_RULES.replace("on = \"inactive(30d)\"", "on = \"inactive(2s)\"");
    std::fs::write(&rules, quick).unwrap();
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    /// Kills the service processes however the test ends.
    struct Services(Vec<std::process::Child>);
    impl Drop for Services {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let services = Services(
        ports
            .iter()
            .map(|port| {
                std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
                    .args(["serve", "--grpc-addr", &format!("127.0.0.1:{port}"), "--redis-url", &redis.url()])
                    .args(["--metrics-addr", "127.0.0.1:0"])
                    .arg("--rules")
                    .arg(&rules)
                    .env("LEADSCORE_INACTIVITY_SWEEP_INTERVAL", "100ms")
                    .env("LEADSCORE_FEED_POLL_INTERVAL", "50ms")
                    .env("LEADSCORE_TRIGGER_GROUPS", "[\"g\"]")
                    .env_remove("LEADSCORE_CONFIG")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect(),
    );
    let connect = |port: u16| async move {
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if let Ok(channel) = tonic::transport::Channel::from_shared(endpoint.clone()).unwrap().connect().await {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service on port {port} did not start");
    };
    let first = connect(ports[0]).await;
    let second = connect(ports[1]).await;
    let mut stream = NurtureClient::new(second)
        .stream_triggers(pb::StreamTriggersRequest { group: "g".into(), consumer: "w".into(), max_in_flight: 0 })
        .await
        .unwrap()
        .into_inner();
    leadscore::api::pb::lead_scoring_client::LeadScoringClient::new(first)
        .record_signals(record(vec![signal("e1", "sleepy", "page_view", now_millis())]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    let got = drain(&mut stream).await;
    drop(services);
    let inactivity: Vec<_> = got.iter().filter(|t| t.definition_id == "win_back_dormant").collect();
    assert_eq!(inactivity.len(), 1, "{got:?}");
    assert_eq!(inactivity[0].lead_id, "sleepy");
}

/// Commands Redis has processed so far.
fn redis_commands(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(&mut redis.connection()).unwrap();
    info.lines().find_map(|l| l.strip_prefix("total_commands_processed:")).unwrap().trim().parse().unwrap()
}

/// Fifty idle consumers cost Redis close to nothing (one watcher per
/// replica reads the trigger heads; nobody polls every partition), and
/// each still gets a new trigger at once.
#[tokio::test]
async fn idle_consumers_cost_redis_close_to_nothing() {
    let redis = RedisServer::start();
    let mut s = settings(Some(redis.url()));
    s.feed_poll_interval = leadscore::config::Millis(250);
    s.max_trigger_streams_per_connection = 64;
    let app = TestApp::spawn(s).await;
    let mut streams = Vec::new();
    for i in 0..50 {
        streams.push(open(&app, &format!("g{i}"), "c").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = redis_commands(&redis);
    tokio::time::sleep(Duration::from_secs(16)).await;
    let idle = redis_commands(&redis) - before;
    println!("{idle} Redis commands in 16 s for 50 idle consumers");
    // Each polling every partition (64) every 250 ms would be ~600,000; one
    // watcher (64 reads every 250 ms) and one look per consumer every 15 s
    // (for triggers held past the visibility timeout) stay near 15,000.
    assert!(idle < 25_000, "{idle} Redis commands in 16 s for 50 idle consumers");
    make_mql(&app, "woken").await;
    for stream in &mut streams {
        assert_eq!(next(stream).await.lead_id, "woken");
    }
}

/// Open streams are bounded per connection and per token: the next one is
/// RESOURCE_EXHAUSTED and says which bound.
#[tokio::test]
async fn open_trigger_streams_are_bounded_per_connection_and_per_token() {
    let tokens = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tokens.path(), "crm qualify crm-token-00000000001\nother qualify other-token-000000001\n").unwrap();
    let mut s = settings(None);
    s.auth_tokens_file = Some(tokens.path().to_path_buf());
    s.max_trigger_streams_per_connection = 3;
    s.max_trigger_streams_per_token = 5;
    let app = TestApp::spawn(s).await;
    let call = |channel: Channel, token: &'static str, i: usize| async move {
        let mut request = tonic::Request::new(pb::StreamTriggersRequest {
            group: format!("g{i}"),
            consumer: "c".into(),
            max_in_flight: 0,
        });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        NurtureClient::new(channel).stream_triggers(request).await
    };
    let one = app.channel().await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(call(one.clone(), "crm-token-00000000001", i).await.unwrap());
    }
    let status = call(one.clone(), "crm-token-00000000001", 3).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("per connection"), "{}", status.message());
    // Another connection of the same token: up to 5 in all.
    let two = app.channel().await;
    open.push(call(two.clone(), "crm-token-00000000001", 4).await.unwrap());
    open.push(call(two.clone(), "crm-token-00000000001", 5).await.unwrap());
    let status = call(two.clone(), "crm-token-00000000001", 6).await.unwrap_err();
    assert!(status.message().contains("per token"), "{}", status.message());
    // Another token is counted apart; a closed stream frees its place.
    call(app.channel().await, "other-token-000000001", 7).await.unwrap();
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    call(two, "crm-token-00000000001", 8).await.unwrap();
}

/// A consumer at its `max_in_flight` gets the next trigger soon after it
/// acknowledges one: a full consumer asks again every `feed_poll_interval`
/// (a wake-up only comes with a new trigger, and the fallback is 15 s here).
#[tokio::test]
async fn a_full_consumer_gets_the_next_trigger_soon_after_acking() {
    let redis = RedisServer::start();
    let mut s = settings(Some(redis.url()));
    s.trigger_visibility_timeout = leadscore::config::Millis(60_000);
    s.feed_poll_interval = leadscore::config::Millis(50);
    let app = TestApp::spawn(s).await;
    for lead in ["full-1", "full-2"] {
        make_mql(&app, lead).await;
    }
    let mut stream = nurture(&app)
        .await
        .stream_triggers(pb::StreamTriggersRequest { group: "g".into(), consumer: "w".into(), max_in_flight: 1 })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    nothing_within(&mut stream, 300).await;
    nurture(&app)
        .await
        .ack_triggers(pb::AckTriggersRequest { group: "g".into(), trigger_ids: vec![first.trigger_id] })
        .await
        .unwrap();
    let acked = std::time::Instant::now();
    let second = next(&mut stream).await;
    assert_ne!(second.lead_id, first.lead_id);
    assert!(acked.elapsed() < Duration::from_secs(2), "the next trigger came {:?} after the ack", acked.elapsed());
}
