//! Restarts, Redis outages, health and shutdown.

use std::time::{Duration, Instant};

use leadscore::api::pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{RedisServer, TestApp, now_millis, record, settings, signal};

async fn total(app: &TestApp, lead: &str) -> Result<f64, tonic::Status> {
    let mut client = app.client().await;
    let r = client
        .score_lead(pb::ScoreLeadRequest { lead_id: lead.into(), model: String::new(), ..Default::default() })
        .await?;
    Ok(r.into_inner().score.unwrap().total)
}

#[tokio::test]
async fn the_score_survives_a_service_restart() {
    let redis = RedisServer::start();
    let first = TestApp::spawn(settings(Some(redis.url()))).await;
    let mut client = first.client().await;
    client.record_signals(record(vec![signal("e1", "lead-1", "webinar_attended", now_millis())])).await.unwrap();
    let before = total(&first, "lead-1").await.unwrap();
    first.stop().await;

    let second = TestApp::spawn(settings(Some(redis.url()))).await;
    let after = total(&second, "lead-1").await.unwrap();
    assert!(before > 14.0);
    assert!((before - after).abs() < 0.011, "{before} vs {after}");
}

#[tokio::test]
async fn redis_outage_is_unavailable_and_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    app.wait_health(ServingStatus::Serving).await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("e1", "lead-1", "form_fill", now_millis())])).await.unwrap();

    redis.stop();
    let started = Instant::now();
    let status =
        client.record_signals(record(vec![signal("e2", "lead-1", "form_fill", now_millis())])).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "failed slowly: {:?}", started.elapsed());
    assert_eq!(total(&app, "lead-1").await.unwrap_err().code(), Code::Unavailable);
    app.wait_health(ServingStatus::NotServing).await;

    redis.restart();
    app.wait_health(ServingStatus::Serving).await;
    let response = client
        .record_signals(record(vec![signal("e3", "lead-1", "form_fill", now_millis())]))
        .await
        .expect("recovers without a service restart")
        .into_inner();
    assert_eq!(response.results[0].status(), pb::SignalStatus::Accepted);
}

/// Health follows the store. `leadscore health` once answers the status as
/// it is; with `--wait` it keeps asking until SERVING (Redis back), or
/// gives up at its time-out.
#[tokio::test]
async fn health_waits_for_the_store() {
    let mut redis = RedisServer::start();
    redis.stop();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    app.wait_health(ServingStatus::NotServing).await;
    let addr = format!("http://127.0.0.1:{}", app.port);
    let health = |extra: &[&str]| {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
            .args(["health", "--addr", &addr])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Waited for off the runtime: the service answers on it meanwhile.
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
    };

    let once = health(&[]).await.unwrap();
    assert!(!once.status.success());
    assert_eq!(String::from_utf8_lossy(&once.stdout).trim(), "NOT_SERVING");

    let timed_out = health(&["--wait", "--timeout-ms", "600"]).await.unwrap();
    assert!(!timed_out.status.success());
    assert_eq!(String::from_utf8_lossy(&timed_out.stdout).trim(), "NOT_SERVING");
    assert!(String::from_utf8_lossy(&timed_out.stderr).contains("timed out after 600 ms"), "{timed_out:?}");

    let waiting = health(&["--wait", "--timeout-ms", "30000"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();
    let served = waiting.await.unwrap();
    assert!(served.status.success(), "{served:?}");
    assert_eq!(String::from_utf8_lossy(&served.stdout).trim(), "SERVING");
    app.wait_health(ServingStatus::Serving).await;
}

#[tokio::test]
async fn shutdown_finishes_promptly() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    app.wait_health(ServingStatus::Serving).await;
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_ends_open_streams_promptly() {
    let redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    let channel = app.channel().await;
    let mut watch = leadscore::api::pb::qualification_client::QualificationClient::new(channel.clone())
        .watch_qualification_changes(pb::WatchQualificationChangesRequest { after_cursor: String::new() })
        .await
        .unwrap()
        .into_inner();
    let mut triggers = leadscore::api::pb::nurture_client::NurtureClient::new(channel)
        .stream_triggers(pb::StreamTriggersRequest { group: "g".into(), consumer: "c".into(), max_in_flight: 0 })
        .await
        .unwrap()
        .into_inner();
    let started = Instant::now();
    app.stop().await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(matches!(watch.message().await, Ok(None) | Err(_)));
    assert!(matches!(triggers.message().await, Ok(None) | Err(_)));
}

/// While a restarted Redis loads its data (`LOADING`), calls are
/// UNAVAILABLE — which callers retry — never INTERNAL; then they succeed.
#[tokio::test]
async fn redis_loading_its_data_is_unavailable_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    let mut redis = RedisServer::start_with(&["--dir", &dir_arg]);
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    app.wait_health(ServingStatus::Serving).await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("e1", "lead-1", "form_fill", now_millis())])).await.unwrap();
    // 20,000 keys at 100 µs each: the restarted server loads for seconds.
    let mut conn = redis.connection();
    redis::cmd("EVAL")
        .arg("for i = 1, 20000 do redis.call('SET', 'filler:' .. i, 'x') end")
        .arg(0)
        .query::<()>(&mut conn)
        .unwrap();
    redis::cmd("SAVE").query::<()>(&mut conn).unwrap();
    redis.restart_with(&[
        "--dir",
        &dir_arg,
        "--key-load-delay",
        "100",
        "--loading-process-events-interval-bytes",
        "1024",
    ]);
    let mut loading = redis.connection();
    let err = redis::cmd("GET").arg("x").query::<Option<String>>(&mut loading).unwrap_err();
    assert_eq!(err.code(), Some("LOADING"), "the server is loading: {err:?}");

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut unavailable = 0;
    let mut n = 2;
    loop {
        n += 1;
        let call = client.record_signals(record(vec![signal(&format!("e{n}"), "lead-1", "form_fill", now_millis())]));
        match call.await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "while Redis loads: {status:?}");
                if let Err(status) = total(&app, "lead-1").await {
                    assert_eq!(status.code(), Code::Unavailable, "while Redis loads: {status:?}");
                }
                unavailable += 1;
            }
        }
        assert!(Instant::now() < deadline, "Redis did not finish loading");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unavailable > 0, "no call met the loading server");
    assert!(total(&app, "lead-1").await.unwrap() > 0.0, "the data was loaded back");
}
