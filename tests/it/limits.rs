//! Limits: load shedding past the in-flight limit, deadlines, message size.

use std::time::{Duration, Instant};

use leadscore::api::pb;
use leadscore::config::Millis;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{RedisServer, TestApp, now_millis, record, settings, signal};

#[tokio::test]
async fn a_burst_past_the_in_flight_limit_is_shed_fast_and_no_call_outlives_its_deadline() {
    let redis = RedisServer::start();
    let mut s = settings(Some(redis.url()));
    s.max_in_flight = 4;
    // The store would wait longer than the callers' deadline.
    s.redis_timeout = Millis(3_000);
    let app = TestApp::spawn(s).await;
    app.wait_health(ServingStatus::Serving).await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("e1", "slow", "page_view", now_millis())])).await.unwrap();

    // A slow store: Redis answers nobody for 1.5 s.
    let mut conn = redis.connection();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1_500).arg("ALL").query(&mut conn).unwrap();
    let deadline = Duration::from_millis(300);
    let calls = (0..100).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let mut request =
                tonic::Request::new(pb::ScoreLeadRequest { lead_id: "slow".into(), ..Default::default() });
            request.set_timeout(deadline);
            let started = Instant::now();
            let result = client.score_lead(request).await;
            (result.map(|_| ()).map_err(|s| s.code()), started.elapsed())
        })
    });
    let results: Vec<(Result<(), Code>, Duration)> =
        futures::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();

    let mut shed: Vec<Duration> =
        results.iter().filter(|(r, _)| *r == Err(Code::ResourceExhausted)).map(|(_, d)| *d).collect();
    let timed_out = results.iter().filter(|(r, _)| matches!(r, Err(Code::Cancelled | Code::DeadlineExceeded))).count();
    assert_eq!(shed.len() + timed_out, 100, "{results:?}");
    assert!(shed.len() >= 90, "the excess is shed: {} of 100", shed.len());
    assert!(timed_out >= 4, "the admitted calls wait for the store, then hit their deadline");
    shed.sort();
    // Shed without waiting for the store (the bound is loose for busy CI
    // machines: 100 calls start at once on one connection; ~20 ms here).
    assert!(shed[shed.len() / 2] < Duration::from_millis(150), "shed fast: median {:?}", shed[shed.len() / 2]);
    assert!(*shed.last().unwrap() < deadline, "shed before the deadline: {:?}", shed.last());
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap();
    assert!(slowest < deadline + Duration::from_millis(200), "no call outlives its deadline: {slowest:?}");

    // Health is never shed, and the service recovers when the store does.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let score = client.score_lead(pb::ScoreLeadRequest { lead_id: "slow".into(), ..Default::default() }).await;
    assert!(score.is_ok(), "{score:?}");
    let metrics = app.scrape_metrics().await;
    assert!(
        metrics.contains(
            r#"leadscore_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="/leadscore.v1.LeadScoring/ScoreLead"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_requests_are_refused_and_write_nothing() {
    let mut s = settings(None);
    s.max_message_size = 4_096;
    let app = TestApp::spawn(s).await;
    let mut client = app.client().await;
    let mut big = signal("big", "heavy", "page_view", now_millis());
    big.properties.insert("url".into(), "x".repeat(8_000));
    let status = client.record_signals(record(vec![big])).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());
    let missing = client.score_lead(pb::ScoreLeadRequest { lead_id: "heavy".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
}
