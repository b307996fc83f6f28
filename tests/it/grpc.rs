//! The LeadScoring API end to end: gRPC client → server → real Redis.

use leadscore::api::pb;
use tonic::Code;

use crate::helpers::{DAY, RedisServer, TestApp, now_millis, record, settings, signal, violated_fields};

async fn app() -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    (redis, app)
}

fn signal_points(score: &pb::LeadScore, signal_type: &str) -> Option<(u64, f64)> {
    score.contributions.iter().find_map(|c| match &c.source {
        Some(pb::contribution::Source::Signal(s)) if s.r#type == signal_type => Some((s.counted, c.points)),
        _ => None,
    })
}

async fn score_of(
    client: &mut pb::lead_scoring_client::LeadScoringClient<tonic::transport::Channel>,
    lead: &str,
) -> pb::LeadScore {
    client
        .score_lead(pb::ScoreLeadRequest { lead_id: lead.into(), model: String::new(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap()
}

#[tokio::test]
async fn upsert_record_and_score_with_explanation() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let lead = client
        .upsert_lead(pb::UpsertLeadRequest {
            lead: Some(pb::Lead {
                lead_id: "lead-1".into(),
                account_id: "acme".into(),
                attributes: [("seniority", "VP"), ("company_size", "1200"), ("country", "DE")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                created_at: None,
                stage: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .lead
        .unwrap();
    assert_eq!(lead.stage(), pb::Stage::Lead);
    assert!(lead.created_at.is_some());

    let now = now_millis();
    let response = client
        .record_signals(record(vec![signal("evt-1", "lead-1", "demo_requested", now - 60_000)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.results[0].status(), pb::SignalStatus::Accepted);
    assert_eq!(response.scores.len(), 1);

    let score = score_of(&mut client, "lead-1").await;
    assert_eq!(score.model, "b2b");
    assert_eq!(score.rule_set_version, "2026.11.1");
    // 20 (executive) + 10 + 10 (company size) + 5 (country) = 45: grade A.
    assert_eq!(score.fit, 45.0);
    assert_eq!(score.grade(), pb::Grade::A);
    let (counted, points) = signal_points(&score, "demo_requested").expect("demo_requested explained");
    assert_eq!(counted, 1);
    assert!(points > 39.9 && points <= 40.0, "{points}");
    assert!((score.total - (score.behavior + score.fit)).abs() < 0.011);
    let fit_rules: Vec<_> = score
        .contributions
        .iter()
        .filter_map(|c| match &c.source {
            Some(pb::contribution::Source::FitRule(f)) => Some(f.rule_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(fit_rules, ["executive", "mid_market_or_larger", "enterprise", "served_country"]);
    assert_eq!(response.scores[0].total, score.total);
}

#[tokio::test]
async fn the_same_event_again_changes_nothing() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let s = signal("evt-1", "lead-1", "demo_requested", now_millis() - DAY);
    client.record_signals(record(vec![s.clone()])).await.unwrap();
    let before = score_of(&mut client, "lead-1").await;
    let again = client.record_signals(record(vec![s])).await.unwrap().into_inner();
    assert_eq!(again.results[0].status(), pb::SignalStatus::Duplicate);
    let after = score_of(&mut client, "lead-1").await;
    assert_eq!(signal_points(&before, "demo_requested").unwrap().0, 1);
    assert_eq!(signal_points(&after, "demo_requested").unwrap().0, 1);
    assert!((before.total - after.total).abs() < 0.011);
}

#[tokio::test]
async fn behaviour_decays_exponentially() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let now = now_millis();
    let signals =
        (0..3).map(|i| signal(&format!("e{i}"), &format!("lead-{i}"), "demo_requested", now - i * 10 * DAY)).collect();
    client.record_signals(record(signals)).await.unwrap();
    let leads = client
        .score_leads(pb::ScoreLeadsRequest {
            lead_ids: vec!["lead-0".into(), "lead-1".into(), "lead-2".into()],
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let b: Vec<f64> = leads.scores.iter().map(|s| s.behavior).collect();
    // demo_requested halves every 45 days in the default rule set.
    let ratio = 0.5f64.powf(10.0 / 45.0);
    assert!((b[1] / b[0] - ratio).abs() < 1e-3, "{b:?}");
    assert!((b[2] / b[1] - ratio).abs() < 1e-3, "{b:?}");
}

#[tokio::test]
async fn order_and_batching_do_not_change_the_total() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let now = now_millis();
    let types = ["page_view", "email_click", "content_download", "webinar_attended", "email_open", "unsubscribe"];
    let make = |lead: &str| -> Vec<pb::Signal> {
        (0..12)
            .map(|i| signal(&format!("e{i}"), lead, types[i % types.len()], now - (i as i64 * 3 + 1) * DAY))
            .collect()
    };
    client.record_signals(record(make("one-batch"))).await.unwrap();
    for s in make("reversed").into_iter().rev() {
        client.record_signals(record(vec![s])).await.unwrap();
    }
    let mut mixed = make("mixed");
    mixed.rotate_left(5);
    for chunk in mixed.chunks(4) {
        client.record_signals(record(chunk.to_vec())).await.unwrap();
    }
    let totals: Vec<f64> = futures_totals(&mut client, &["one-batch", "reversed", "mixed"]).await;
    assert!(totals[0] != 0.0);
    assert_eq!(totals[0], totals[1]);
    assert_eq!(totals[0], totals[2]);
}

async fn futures_totals(
    client: &mut pb::lead_scoring_client::LeadScoringClient<tonic::transport::Channel>,
    leads: &[&str],
) -> Vec<f64> {
    let mut out = Vec::new();
    for lead in leads {
        out.push(score_of(client, lead).await.total);
    }
    out
}

#[tokio::test]
async fn an_unknown_type_rejects_the_whole_batch() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let now = now_millis();
    let status = client
        .record_signals(record(vec![
            signal("ok", "lead-x", "form_fill", now),
            signal("bad", "lead-x", "tiktok_like", now),
        ]))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["signals[1].type"]);
    assert!(status.message().contains("tiktok_like"), "{}", status.message());
    // Nothing was written, not even the valid signal.
    let missing = client
        .score_lead(pb::ScoreLeadRequest { lead_id: "lead-x".into(), model: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_input_gets_field_violations() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    let now = now_millis();
    let mut no_time = signal("e", "l", "page_view", now);
    no_time.occurred_at = None;
    let mut bad_nanos = signal("e", "l", "page_view", now);
    bad_nanos.occurred_at.as_mut().unwrap().nanos = -5;
    let cases: Vec<(pb::Signal, &str)> = vec![
        (signal("", "l", "page_view", now), "signals[0].event_id"),
        (signal("e", "", "page_view", now), "signals[0].lead_id"),
        (signal("e", &"x".repeat(257), "page_view", now), "signals[0].lead_id"),
        (signal("e", "a\nb", "page_view", now), "signals[0].lead_id"),
        (signal("e", "l", "page_view", now + 6 * 60_000), "signals[0].occurred_at"),
        (signal("e", "l", "page_view", now - 91 * DAY), "signals[0].occurred_at"),
        (no_time, "signals[0].occurred_at"),
        (bad_nanos, "signals[0].occurred_at"),
    ];
    for (s, field) in cases {
        let status = client.record_signals(record(vec![s])).await.unwrap_err();
        assert_eq!(violated_fields(&status), [field]);
    }
    let empty = client.record_signals(record(vec![])).await.unwrap_err();
    assert_eq!(violated_fields(&empty), ["signals"]);
    let too_many = (0..1001).map(|i| signal(&format!("e{i}"), "l", "page_view", now)).collect();
    let status = client.record_signals(record(too_many)).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["signals"]);

    let status = client
        .score_lead(pb::ScoreLeadRequest { lead_id: "l".into(), model: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["model"]);
    let status = client.upsert_lead(pb::UpsertLeadRequest { lead: None }).await.unwrap_err();
    assert_eq!(violated_fields(&status), ["lead"]);
    let status = client
        .upsert_lead(pb::UpsertLeadRequest {
            lead: Some(pb::Lead {
                lead_id: "l".into(),
                attributes: [("bad name!".to_string(), "x".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["lead.attributes[\"bad name!\"]"]);
    // None of it wrote anything.
    let status = client
        .score_lead(pb::ScoreLeadRequest { lead_id: "l".into(), model: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn score_leads_lists_the_unknown() {
    let (_redis, app) = app().await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("e", "known", "form_fill", now_millis())])).await.unwrap();
    let response = client
        .score_leads(pb::ScoreLeadsRequest { lead_ids: vec!["ghost".into(), "known".into()], model: "b2b".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.scores.len(), 1);
    assert_eq!(response.scores[0].lead_id, "known");
    assert_eq!(response.not_found_lead_ids, ["ghost"]);
}

#[tokio::test]
async fn the_embedded_store_serves_the_same_api() {
    let app = TestApp::spawn(settings(None)).await;
    let mut client = app.client().await;
    client.record_signals(record(vec![signal("e", "mem", "demo_requested", now_millis())])).await.unwrap();
    assert!(score_of(&mut client, "mem").await.total > 39.0);
}

#[tokio::test]
async fn demo_seed_loads_a_population_through_the_api() {
    let (_redis, app) = app().await;
    let addr = format!("http://127.0.0.1:{}", app.port);
    let first = leadscore::demo::seed(addr.clone(), 40, 7).await.unwrap();
    assert_eq!(first.leads, 40);
    assert!(first.signals > 100, "{first:?}");
    assert_eq!(first.stages.values().sum::<usize>(), 40);
    assert!(first.stages.len() >= 2, "a mix of stages: {first:?}");
    // The same seed again: the same events, all duplicates, nothing moves.
    let again = leadscore::demo::seed(addr, 40, 7).await.unwrap();
    assert_eq!(again.stages, first.stages);
    // Its expansion deals again: the same ids and outcomes, accepted as
    // sent before.
    assert_eq!(again.expansion_deals, first.expansion_deals);
    let mut client = app.client().await;
    let score = score_of(&mut client, "demo-7-00000").await;
    assert_eq!(score.lead_id, "demo-7-00000");
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_status_and_signals_by_outcome() {
    let app = TestApp::spawn(settings(None)).await;
    let mut client = app.client().await;
    let now = crate::helpers::now_millis();
    let signals = vec![signal("m1", "lead-m", "page_view", now), signal("m2", "lead-m", "page_view", now)];
    client.record_signals(record(signals.clone())).await.unwrap();
    client.record_signals(record(signals)).await.unwrap();
    let missing = client.score_lead(pb::ScoreLeadRequest { lead_id: "nobody".into(), ..Default::default() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    // A demo request moves a lead LEAD → MQL → SQL by rule.
    let vp = pb::Lead {
        lead_id: "lead-vp".into(),
        attributes: [("seniority".to_owned(), "vp".to_owned())].into(),
        ..Default::default()
    };
    client.upsert_lead(pb::UpsertLeadRequest { lead: Some(vp) }).await.unwrap();
    client.record_signals(record(vec![signal("m3", "lead-vp", "demo_requested", now)])).await.unwrap();

    let text = app.scrape_metrics().await;
    let line = |needle: &str| text.lines().find(|l| l.starts_with(needle)).map(str::to_owned);
    let value = |needle: &str| line(needle).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(
        value("leadscore_grpc_requests_total{code=\"OK\",method=\"/leadscore.v1.LeadScoring/RecordSignals\"}"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value("leadscore_grpc_requests_total{code=\"NOT_FOUND\",method=\"/leadscore.v1.LeadScoring/ScoreLead\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value("leadscore_signals_total{status=\"accepted\"}"), Some(3.0), "{text}");
    assert_eq!(value("leadscore_signals_total{status=\"duplicate\"}"), Some(2.0), "{text}");
    assert_eq!(
        value("leadscore_grpc_request_duration_seconds_count{method=\"/leadscore.v1.LeadScoring/RecordSignals\"}"),
        Some(3.0),
        "{text}"
    );
    assert!(line("leadscore_rule_set_info{version=\"2026.11.1\"} 1").is_some(), "{text}");
    assert_eq!(value("leadscore_stage_transitions_total{by=\"rule\",from=\"MQL\",to=\"SQL\"}"), Some(1.0), "{text}");
    assert!(line("leadscore_grpc_requests_in_flight").is_some(), "{text}");
    app.stop().await;
}

/// Sends a raw HTTP/2 request to the service: `content_type` and `body`
/// as given. Returns the HTTP status and the `grpc-status` and
/// `grpc-message` headers.
async fn raw_call(app: &TestApp, content_type: &str, body: Vec<u8>) -> (u16, Option<String>, Option<String>) {
    use tower::Service;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{}/leadscore.v1.LeadScoring/ScoreLead", app.port))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
        .unwrap();
    let mut channel = app.channel().await;
    futures::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
    let response = channel.call(request).await.unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), header("grpc-status"), header("grpc-message"))
}

/// A body that is not the method's message is INVALID_ARGUMENT without the
/// decoder's text; a request in no protocol served gets HTTP 415.
#[tokio::test]
async fn malformed_messages_and_non_grpc_requests_get_clear_answers() {
    let (_redis, app) = app().await;
    // A gRPC frame (uncompressed, 3 bytes) holding an invalid field tag.
    let frame = vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff];
    let (status, code, message) = raw_call(&app, "application/grpc", frame.clone()).await;
    assert_eq!((status, code.as_deref()), (200, Some("3")), "{message:?}");
    assert!(!message.unwrap_or_default().contains("decode"), "no decoder text");
    // JSON that is not the message is Connect's 400; a content type no
    // protocol here speaks is HTTP 415.
    let (status, code, _) = raw_call(&app, "application/json", frame.clone()).await;
    assert_eq!((status, code), (400, None));
    let (status, code, _) = raw_call(&app, "text/plain", frame).await;
    assert_eq!((status, code), (415, None));
}
