//! Qualification end to end: rules move leads, the CRM moves them, the
//! change feed tells the CRM, exactly once.

use std::collections::HashMap;
use std::time::Duration;

use leadscore::api::pb;
use leadscore::api::pb::qualification_client::QualificationClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::helpers::{DAY, RedisServer, TestApp, now_millis, record, settings, signal};

async fn app() -> (RedisServer, TestApp) {
    let redis = RedisServer::start();
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    (redis, app)
}

async fn qualification(app: &TestApp) -> QualificationClient<Channel> {
    QualificationClient::new(app.channel().await)
}

async fn upsert(app: &TestApp, lead: &str, attributes: &[(&str, &str)]) {
    let attributes: HashMap<String, String> = attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    app.client()
        .await
        .upsert_lead(pb::UpsertLeadRequest {
            lead: Some(pb::Lead { lead_id: lead.into(), attributes, ..Default::default() }),
        })
        .await
        .unwrap();
}

async fn stage_of(app: &TestApp, lead: &str) -> pb::Stage {
    qualification(app)
        .await
        .get_qualification(pb::GetQualificationRequest { lead_id: lead.into(), history_limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .qualification
        .unwrap()
        .stage()
}

/// Every change in the feed from the start.
async fn feed(app: &TestApp) -> Vec<pb::QualificationChange> {
    let mut client = qualification(app).await;
    let (mut all, mut cursor) = (Vec::new(), String::new());
    loop {
        let page = client
            .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: cursor.clone(), limit: 2 })
            .await
            .unwrap()
            .into_inner();
        if page.changes.is_empty() {
            return all;
        }
        all.extend(page.changes);
        cursor = page.next_cursor;
    }
}

fn moves(changes: &[pb::QualificationChange], lead: &str) -> Vec<(pb::Stage, pb::Stage, String)> {
    changes
        .iter()
        .filter(|c| c.lead_id == lead)
        .map(|c| {
            let ch = c.change.as_ref().unwrap();
            (ch.from(), ch.to(), if ch.rule_id.is_empty() { ch.actor.clone() } else { ch.rule_id.clone() })
        })
        .collect()
}

/// Four content downloads on different days: about 30 behaviour points.
fn downloads(lead: &str, prefix: &str) -> Vec<pb::Signal> {
    let now = now_millis();
    (0..4).map(|i| signal(&format!("{prefix}{i}"), lead, "content_download", now - i * 60_000)).collect()
}

#[tokio::test]
async fn a_lead_climbs_lead_mql_sql_from_signals_alone() {
    let (_redis, app) = app().await;
    upsert(&app, "ada", &[("seniority", "director"), ("company_size", "500")]).await;
    let mut scoring = app.client().await;
    let response = scoring.record_signals(record(downloads("ada", "d"))).await.unwrap().into_inner();
    assert_eq!(response.scores[0].stage(), pb::Stage::Mql, "the score in the response reflects the new stage");
    scoring.record_signals(record(vec![signal("demo", "ada", "demo_requested", now_millis())])).await.unwrap();
    assert_eq!(stage_of(&app, "ada").await, pb::Stage::Sql);

    let changes = feed(&app).await;
    assert_eq!(
        moves(&changes, "ada"),
        [
            (pb::Stage::Lead, pb::Stage::Mql, "mql_engaged_and_fit".to_string()),
            (pb::Stage::Mql, pb::Stage::Sql, "sql_hand_raiser".to_string()),
        ]
    );
    for c in &changes {
        let ch = c.change.as_ref().unwrap();
        assert_eq!(ch.rule_set_version, "2026.11.1");
        assert!(ch.score.as_ref().unwrap().total > 0.0);
    }
    let q = qualification(&app)
        .await
        .get_qualification(pb::GetQualificationRequest { lead_id: "ada".into(), history_limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .qualification
        .unwrap();
    assert_eq!((q.stage(), q.rule_id.as_str()), (pb::Stage::Sql, "sql_hand_raiser"));
    assert_eq!(q.history.len(), 2);
}

#[tokio::test]
async fn the_crm_moves_leads_within_the_rules() {
    let (_redis, app) = app().await;
    upsert(&app, "bo", &[("seniority", "vp")]).await;
    app.client().await.record_signals(record(downloads("bo", "d"))).await.unwrap();
    assert_eq!(stage_of(&app, "bo").await, pb::Stage::Mql);
    let mut crm = qualification(&app).await;

    // Stale expectation: the CRM thought the lead was still a LEAD.
    let stale = crm
        .set_stage(pb::SetStageRequest {
            lead_id: "bo".into(),
            to: pb::Stage::Sal.into(),
            actor: "rep@crm".into(),
            reason: "accepted".into(),
            expected_stage: pb::Stage::Lead.into(),
            deal_amount: None,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let info = stale.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "STAGE_CHANGED");
    assert_eq!(info.metadata["current_stage"], "MQL");

    // Not allowed by the rule set: MQL straight to CUSTOMER.
    let refused = crm
        .set_stage(pb::SetStageRequest {
            lead_id: "bo".into(),
            to: pb::Stage::Customer.into(),
            actor: "rep@crm".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let info = refused.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "TRANSITION_NOT_ALLOWED");
    assert_eq!(info.metadata["allowed_targets"], "SAL,SQL,RECYCLED,DISQUALIFIED");

    // Missing actor and target are field violations.
    let invalid = crm.set_stage(pb::SetStageRequest { lead_id: "bo".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(crate::helpers::violated_fields(&invalid), ["to", "actor"]);

    // Accepted with the right expectation.
    let accepted = crm
        .set_stage(pb::SetStageRequest {
            lead_id: "bo".into(),
            to: pb::Stage::Sal.into(),
            actor: "rep@crm".into(),
            reason: "accepted".into(),
            expected_stage: pb::Stage::Mql.into(),
            deal_amount: None,
        })
        .await
        .unwrap()
        .into_inner()
        .qualification
        .unwrap();
    assert_eq!(
        (accepted.stage(), accepted.actor.as_str(), accepted.reason.as_str()),
        (pb::Stage::Sal, "rep@crm", "accepted")
    );
    let ghost = crm
        .set_stage(pb::SetStageRequest {
            lead_id: "ghost".into(),
            to: pb::Stage::Sal.into(),
            actor: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ghost.code(), Code::NotFound);
}

#[tokio::test]
async fn a_recycled_lead_waits_for_new_engagement() {
    let (_redis, app) = app().await;
    upsert(&app, "cy", &[("seniority", "vp")]).await;
    let mut scoring = app.client().await;
    scoring.record_signals(record(downloads("cy", "d"))).await.unwrap();
    qualification(&app)
        .await
        .set_stage(pb::SetStageRequest {
            lead_id: "cy".into(),
            to: pb::Stage::Recycled.into(),
            actor: "rep@crm".into(),
            reason: "not ready".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A profile change is no engagement: the score is still high, the lead stays put.
    upsert(&app, "cy", &[("seniority", "vp"), ("country", "de")]).await;
    assert_eq!(stage_of(&app, "cy").await, pb::Stage::Recycled);
    // A duplicate is no engagement either.
    scoring.record_signals(record(downloads("cy", "d"))).await.unwrap();
    assert_eq!(stage_of(&app, "cy").await, pb::Stage::Recycled);
    // New engagement reopens it.
    scoring.record_signals(record(vec![signal("new", "cy", "page_view", now_millis())])).await.unwrap();
    assert_eq!(stage_of(&app, "cy").await, pb::Stage::Mql);
    assert_eq!(
        moves(&feed(&app).await, "cy"),
        [
            (pb::Stage::Lead, pb::Stage::Mql, "mql_engaged_and_fit".to_string()),
            (pb::Stage::Mql, pb::Stage::Recycled, "rep@crm".to_string()),
            (pb::Stage::Recycled, pb::Stage::Mql, "mql_engaged_and_fit".to_string()),
        ]
    );
}

#[tokio::test]
async fn concurrent_signals_make_exactly_one_mql_change() {
    let (_redis, app) = app().await;
    upsert(&app, "hot", &[("seniority", "vp")]).await;
    let now = now_millis();
    let calls = (0..100).map(|i| {
        let app = &app;
        async move {
            let mut client = app.client().await;
            // One per day, so no daily cap interferes.
            let s = signal(&format!("c{i}"), "hot", "content_download", now - i * DAY / 2);
            client.record_signals(record(vec![s])).await.unwrap();
        }
    });
    futures::future::join_all(calls).await;
    assert_eq!(stage_of(&app, "hot").await, pb::Stage::Mql);
    assert_eq!(moves(&feed(&app).await, "hot"), [(pb::Stage::Lead, pb::Stage::Mql, "mql_engaged_and_fit".to_string())]);
}

#[tokio::test]
async fn the_feed_resumes_from_a_cursor_after_a_restart() {
    let redis = RedisServer::start();
    let first = TestApp::spawn(settings(Some(redis.url()))).await;
    for lead in ["r1", "r2", "r3"] {
        upsert(&first, lead, &[("seniority", "vp")]).await;
        first.client().await.record_signals(record(downloads(lead, lead))).await.unwrap();
    }
    let page = qualification(&first)
        .await
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: String::new(), limit: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.changes.len(), 1);
    first.stop().await;

    let second = TestApp::spawn(settings(Some(redis.url()))).await;
    let rest = qualification(&second)
        .await
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: page.next_cursor, limit: 100 })
        .await
        .unwrap()
        .into_inner();
    let mut leads: Vec<_> = page.changes.iter().chain(&rest.changes).map(|c| c.lead_id.clone()).collect();
    leads.sort();
    assert_eq!(leads, ["r1", "r2", "r3"], "each change exactly once across the restart");
    let bad = qualification(&second)
        .await
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: "nope".into(), limit: 1 })
        .await
        .unwrap_err();
    assert_eq!(crate::helpers::violated_fields(&bad), ["after_cursor"]);
}

#[tokio::test]
async fn watchers_receive_each_change_once_and_can_resume() {
    let (_redis, app) = app().await;
    let mut crm = qualification(&app).await;
    let mut stream = crm
        .watch_qualification_changes(pb::WatchQualificationChangesRequest { after_cursor: String::new() })
        .await
        .unwrap()
        .into_inner();
    upsert(&app, "w1", &[("seniority", "vp")]).await;
    app.client().await.record_signals(record(downloads("w1", "a"))).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.change.as_ref().unwrap().lead_id, "w1");
    drop(stream);

    // A change while the watcher is away arrives when it resumes, alone.
    upsert(&app, "w2", &[("seniority", "vp")]).await;
    app.client().await.record_signals(record(downloads("w2", "b"))).await.unwrap();
    let mut resumed = crm
        .watch_qualification_changes(pb::WatchQualificationChangesRequest { after_cursor: first.cursor })
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(Duration::from_secs(5), resumed.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.change.as_ref().unwrap().lead_id, "w2");
    let nothing_more = tokio::time::timeout(Duration::from_millis(600), resumed.message()).await;
    assert!(nothing_more.is_err(), "no duplicate: {nothing_more:?}");
}

#[tokio::test]
async fn rule_sets_can_be_read_and_validated() {
    let (_redis, app) = app().await;
    let mut client = qualification(&app).await;
    let active = client.get_rule_set(pb::GetRuleSetRequest {}).await.unwrap().into_inner();
    assert_eq!(active.version, "2026.11.1");
    assert_eq!(active.agreed_by, ["marketing", "sales"]);
    assert_eq!(active.source, leadscore::DEFAULT_RULES);
    let broken = leadscore::DEFAULT_RULES.replace("score.behavior >= 30.0", "score.behaviour >= 30.0");
    let checked =
        client.validate_rule_set(pb::ValidateRuleSetRequest { source: broken.clone() }).await.unwrap().into_inner();
    assert!(!checked.valid);
    let line = broken[..broken.find("score.behaviour").unwrap()].matches('\n').count() as u32 + 1;
    assert_eq!(checked.errors.len(), 1);
    assert_eq!(checked.errors[0].line, line);
    assert!(checked.errors[0].message.contains("mql_engaged_and_fit"));
    let ok = client.validate_rule_set(pb::ValidateRuleSetRequest { source: active.source }).await.unwrap().into_inner();
    assert!(ok.valid && ok.summary.contains("4 qualification rules"));
}

/// A service on its own Redis, with the default rules in a file it reloads
/// every 100 ms.
struct RulesApp {
    redis: RedisServer,
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    app: TestApp,
}

async fn app_with_rule_file(rescore_on_reload: bool) -> RulesApp {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, leadscore::DEFAULT_RULES).unwrap();
    let mut s = settings(Some(redis.url()));
    s.rules = Some(path.clone());
    s.rules_reload_interval = leadscore::config::Millis(100);
    s.rescore_on_reload = rescore_on_reload;
    let app = TestApp::spawn(s).await;
    RulesApp { redis, dir, path, app }
}

async fn active_version(app: &TestApp) -> String {
    qualification(app).await.get_rule_set(pb::GetRuleSetRequest {}).await.unwrap().into_inner().version
}

async fn wait_for_version(app: &TestApp, want: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while active_version(app).await != want {
        assert!(std::time::Instant::now() < deadline, "rule set {want} was not activated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_rule_file_reloads_and_a_broken_one_is_refused() {
    let RulesApp { redis: _redis, dir: _dir, path, app } = app_with_rule_file(true).await;
    assert_eq!(active_version(&app).await, "2026.11.1");

    // A stricter MQL threshold, activated by the file change.
    let stricter = leadscore::DEFAULT_RULES
        .replace("version = \"2026.11.1\"", "version = \"2026.11.2\"")
        .replace("score.behavior >= 30.0", "score.behavior >= 300.0");
    std::fs::write(&path, &stricter).unwrap();
    wait_for_version(&app, "2026.11.2").await;
    upsert(&app, "strict", &[("seniority", "vp")]).await;
    app.client().await.record_signals(record(downloads("strict", "d"))).await.unwrap();
    assert_eq!(stage_of(&app, "strict").await, pb::Stage::Lead, "the new threshold applies");

    // A broken file is refused; the last good set keeps serving.
    let broken = stricter
        .replace("version = \"2026.11.2\"", "version = \"2026.11.3\"")
        .replace("score.behavior", "score.behaviour");
    std::fs::write(&path, broken).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(active_version(&app).await, "2026.11.2");
    app.client().await.record_signals(record(vec![signal("x", "strict", "page_view", now_millis())])).await.unwrap();

    // The activation is in the audit trail with its digest, approvers and
    // what changed; the refused file is not.
    let trail = qualification(&app)
        .await
        .list_audit_events(pb::ListAuditEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    let activations: Vec<&pb::AuditEvent> = trail.iter().filter(|e| e.action == "rule_set.activated").collect();
    assert_eq!(activations.len(), 2, "the start-up rules and the reload: {trail:?}");
    assert_eq!((activations[0].actor.as_str(), activations[0].subject.as_str()), ("start-up", "2026.11.1"));
    let a = activations[1];
    assert_eq!((a.subject.as_str(), a.details["previous_version"].as_str()), ("2026.11.2", "2026.11.1"));
    assert_eq!(a.details["agreed_by"], "marketing sales");
    assert_eq!(a.details["digest"].len(), 64);
    let diff = &a.details["diff"];
    assert!(diff.contains("-version = \"2026.11.1\"") && diff.contains("score.behavior >= 300.0"), "{diff}");
}

async fn score(app: &TestApp, lead: &str) -> pb::LeadScore {
    let mut c = app.client().await;
    c.score_lead(pb::ScoreLeadRequest { lead_id: lead.into(), model: String::new(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap()
}

async fn rescore_and_wait(app: &TestApp) -> pb::GetRescoreJobResponse {
    let mut client = qualification(app).await;
    let job = client.rescore(pb::RescoreRequest {}).await.unwrap().into_inner();
    assert!(job.started);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status =
            client.get_rescore_job(pb::GetRescoreJobRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
        if status.state() != pb::RescoreState::Running {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "rescore did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn simulate_predicts_what_rescore_then_does() {
    let RulesApp { redis, dir, path, app } = app_with_rule_file(false).await;
    // Lead n has n content downloads today: 8 points each.
    let now = now_millis();
    for n in 1..=6 {
        let lead = format!("pop-{n}");
        upsert(&app, &lead, &[("seniority", "vp")]).await;
        let signals =
            (0..n).map(|i| signal(&format!("{lead}-{i}"), &lead, "content_download", now - i * 60_000)).collect();
        app.client().await.record_signals(record(signals)).await.unwrap();
    }
    let before = feed(&app).await;
    assert_eq!(before.len(), 3, "4, 5 and 6 downloads make an MQL at 30 points");

    // Candidate: MQL at 15 behaviour points.
    let lower = leadscore::DEFAULT_RULES
        .replace("version = \"2026.11.1\"", "version = \"2026.11.2\"")
        .replace("score.behavior >= 30.0", "score.behavior >= 15.0");
    let sim = qualification(&app)
        .await
        .simulate_rule_set(pb::SimulateRuleSetRequest { source: lower.clone(), sample_limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((sim.version.as_str(), sim.leads_evaluated, sim.leads_rebuilt), ("2026.11.2", 6, 6));
    assert_eq!(sim.transitions.len(), 1);
    let t = &sim.transitions[0];
    assert_eq!((t.from(), t.to(), t.count), (pb::Stage::Lead, pb::Stage::Mql, 2));
    let mut predicted = t.example_lead_ids.clone();
    predicted.sort();
    assert_eq!(predicted, ["pop-2", "pop-3"]);
    assert_eq!(feed(&app).await.len(), 3, "simulation writes nothing");
    assert_eq!(stage_of(&app, "pop-2").await, pb::Stage::Lead);

    // The same threshold through the command line.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
        .args(["rules", "simulate", "--redis-url", &redis.url()])
        .arg({
            let candidate = dir.path().join("candidate.toml");
            std::fs::write(&candidate, &lower).unwrap();
            candidate
        })
        .env_remove("LEADSCORE_CONFIG")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{out}{}", String::from_utf8_lossy(&cli.stderr));
    assert!(out.contains("against 6 stored leads"), "{out}");
    assert!(out.lines().any(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["LEAD", "MQL", "2"]), "{out}");

    // Activate it, rescore: exactly the predicted leads move, once.
    std::fs::write(&path, &lower).unwrap();
    wait_for_version(&app, "2026.11.2").await;
    let job = rescore_and_wait(&app).await;
    assert_eq!(job.state(), pb::RescoreState::Done, "{}", job.error);
    assert_eq!((job.processed, job.total, job.stage_changes), (6, 6, 2));
    assert!(job.rewritten >= 2, "the moved leads are written: {}", job.rewritten);
    let after = feed(&app).await;
    let mut moved: Vec<_> = after[before.len()..].iter().map(|c| c.lead_id.clone()).collect();
    moved.sort();
    assert_eq!(moved, predicted);
    // Safe to run again: nothing left to do.
    let again = rescore_and_wait(&app).await;
    assert_eq!((again.processed, again.stage_changes, again.rebuilt), (6, 0, 0));
    assert_eq!(feed(&app).await.len(), after.len());
}

#[tokio::test]
async fn rescore_applies_new_weights_from_the_raw_history() {
    let RulesApp { redis: _redis, dir: _dir, path, app } = app_with_rule_file(false).await;
    upsert(&app, "w", &[("seniority", "vp")]).await;
    let now = now_millis();
    let signals = (0..2).map(|i| signal(&format!("w{i}"), "w", "content_download", now - i * 60_000)).collect();
    app.client().await.record_signals(record(signals)).await.unwrap();
    assert!((score(&app, "w").await.behavior - 16.0).abs() < 0.05);

    let doubled = leadscore::DEFAULT_RULES
        .replace("version = \"2026.11.1\"", "version = \"2026.11.3\"")
        .replace("content_download = { points = 8 }", "content_download = { points = 16 }");
    std::fs::write(&path, &doubled).unwrap();
    wait_for_version(&app, "2026.11.3").await;
    assert!((score(&app, "w").await.behavior - 16.0).abs() < 0.05, "a reload alone does not rewrite past points");
    let job = rescore_and_wait(&app).await;
    assert_eq!((job.rebuilt, job.stage_changes, job.rewritten), (1, 1, 1));
    let after = score(&app, "w").await;
    assert!((after.behavior - 32.0).abs() < 0.05, "{}", after.behavior);
    assert_eq!(after.stage(), pb::Stage::Mql);
}

fn visitor_signal(event: &str, visitor: &str, signal_type: &str, at: i64) -> pb::Signal {
    pb::Signal { visitor_id: visitor.into(), lead_id: String::new(), ..signal(event, "", signal_type, at) }
}

async fn identify(app: &TestApp, visitor: &str, lead: &str) -> Result<pb::IdentifyVisitorResponse, tonic::Status> {
    qualification(app)
        .await
        .identify_visitor(pb::IdentifyVisitorRequest { visitor_id: visitor.into(), lead_id: lead.into() })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn anonymous_visitors_are_scored_and_merged_once_identified() {
    let (_redis, app) = app().await;
    let mut scoring = app.client().await;
    let now = now_millis();
    let visits = vec![
        visitor_signal("v1", "cookie-9", "pricing_page_view", now - 2 * DAY),
        visitor_signal("v2", "cookie-9", "content_download", now - DAY),
    ];
    let response = scoring.record_signals(record(visits)).await.unwrap().into_inner();
    assert_eq!((response.results[0].lead_id.as_str(), response.results[0].visitor_id.as_str()), ("", "cookie-9"));
    let anonymous = &response.scores[0];
    assert_eq!((anonymous.visitor_id.as_str(), anonymous.stage()), ("cookie-9", pb::Stage::Anonymous));
    let visitor_score = scoring
        .score_lead(pb::ScoreLeadRequest { visitor_id: "cookie-9".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap();
    assert!(visitor_score.behavior > 17.0);

    // The lead already has one of the same events (sent with its lead id too).
    scoring.record_signals(record(vec![signal("v2", "dana", "content_download", now - DAY)])).await.unwrap();
    let merged = identify(&app, "cookie-9", "dana").await.unwrap();
    assert_eq!(merged.merged_signals, 1, "v2 was already on the lead");
    let lead_score = merged.score.unwrap();
    assert_eq!((lead_score.lead_id.as_str(), lead_score.stage()), ("dana", pb::Stage::Lead));
    assert!(
        (lead_score.behavior - visitor_score.behavior).abs() < 0.05,
        "{} vs {}",
        lead_score.behavior,
        visitor_score.behavior
    );

    // Again: nothing counted twice.
    let again = identify(&app, "cookie-9", "dana").await.unwrap();
    assert_eq!(again.merged_signals, 0);
    assert!((again.score.unwrap().total - lead_score.total).abs() < 0.011);

    // Later visitor signals go to the lead.
    let later = scoring
        .record_signals(record(vec![visitor_signal("v3", "cookie-9", "email_click", now)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((later.results[0].lead_id.as_str(), later.results[0].visitor_id.as_str()), ("dana", "cookie-9"));
    assert_eq!(later.scores[0].lead_id, "dana");
    let via_visitor = scoring
        .score_lead(pb::ScoreLeadRequest { visitor_id: "cookie-9".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .score
        .unwrap();
    assert_eq!(via_visitor.lead_id, "dana", "an identified visitor's score is its lead's");

    // One visitor, one lead.
    let other = identify(&app, "cookie-9", "erin").await.unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition);
    assert_eq!(other.get_details_error_info().unwrap().reason, "VISITOR_ALREADY_IDENTIFIED");
    assert_eq!(identify(&app, "nobody", "erin").await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn identifying_a_visitor_creates_the_lead_in_the_feed() {
    let (_redis, app) = app().await;
    let mut scoring = app.client().await;
    scoring.record_signals(record(vec![visitor_signal("v1", "cookie-1", "page_view", now_millis())])).await.unwrap();
    let merged = identify(&app, "cookie-1", "new-lead").await.unwrap();
    assert_eq!(merged.merged_signals, 1);
    assert_eq!(
        moves(&feed(&app).await, "new-lead"),
        [(pb::Stage::Anonymous, pb::Stage::Lead, "identify_visitor".to_string())]
    );
    let both = scoring
        .record_signals(record(vec![pb::Signal {
            visitor_id: "c".into(),
            ..signal("x", "l", "page_view", now_millis())
        }]))
        .await
        .unwrap_err();
    assert_eq!(crate::helpers::violated_fields(&both), ["signals[0].visitor_id"]);
    let neither = scoring.record_signals(record(vec![signal("x", "", "page_view", now_millis())])).await.unwrap_err();
    assert_eq!(crate::helpers::violated_fields(&neither), ["signals[0].lead_id"]);
}

#[tokio::test]
async fn activating_a_reloaded_rule_set_rescores_every_lead() {
    let RulesApp { redis: _redis, dir: _dir, path, app } = app_with_rule_file(true).await;
    let now = now_millis();
    for n in 1..=3 {
        let lead = format!("auto-{n}");
        upsert(&app, &lead, &[("seniority", "vp")]).await;
        let signals =
            (0..n).map(|i| signal(&format!("{lead}-{i}"), &lead, "content_download", now - i * 60_000)).collect();
        app.client().await.record_signals(record(signals)).await.unwrap();
    }
    assert!(feed(&app).await.is_empty());
    let lower = leadscore::DEFAULT_RULES
        .replace("version = \"2026.11.1\"", "version = \"2026.11.4\"")
        .replace("score.behavior >= 30.0", "score.behavior >= 15.0");
    std::fs::write(&path, &lower).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut changes = feed(&app).await;
    while changes.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no rescore after the reload: {changes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        changes = feed(&app).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changes = feed(&app).await;
    let mut moved: Vec<_> =
        changes.iter().map(|c| (c.lead_id.clone(), c.change.as_ref().unwrap().rule_set_version.clone())).collect();
    moved.sort();
    assert_eq!(
        moved,
        [("auto-2".to_string(), "2026.11.4".to_string()), ("auto-3".to_string(), "2026.11.4".to_string())]
    );
}

/// The default rules with the MQL condition replaced by `when`.
fn with_mql_condition(version: &str, when: &str) -> String {
    leadscore::DEFAULT_RULES
        .replace("version = \"2026.11.1\"", &format!("version = \"{version}\""))
        .replace("\"score.behavior >= 30.0 && grade in ['A', 'B', 'C']\"", &format!("{when:?}"))
}

/// A condition too long to evaluate safely (a chain of 1,400 terms) and one
/// that can never type-check get the same verdict, with their line, from
/// `rules check`, `ValidateRuleSet`, `SimulateRuleSet`, a reload and
/// start-up; the service keeps serving.
#[tokio::test]
async fn hostile_conditions_get_one_verdict_everywhere() {
    let RulesApp { redis, dir, path, app } = app_with_rule_file(false).await;
    let chain = format!("{} > 1.0", vec!["score.total"; 1400].join("+"));
    assert!(chain.len() < 4096 * 5, "the 4 KiB limit is checked after the depth");
    let short_chain = format!("{} > 1.0", vec!["score.total"; 300].join("+"));
    for (version, when, expected) in [
        ("9.1", short_chain.as_str(), "too deep"),
        ("9.2", "score.behavior >= '30' && grade in ['A','B','C']", "`score.behavior >= '30'`: '>=' cannot be applied"),
    ] {
        let file = with_mql_condition(version, when);
        let line = file.lines().position(|l| l.contains(&when[..20])).unwrap() as u32 + 1;
        let mut client = qualification(&app).await;
        let checked =
            client.validate_rule_set(pb::ValidateRuleSetRequest { source: file.clone() }).await.unwrap().into_inner();
        assert!(!checked.valid, "{version}");
        assert_eq!(checked.errors.len(), 1, "{:?}", checked.errors);
        assert_eq!(checked.errors[0].line, line, "{:?}", checked.errors);
        assert!(checked.errors[0].message.contains(expected), "{:?}", checked.errors);
        let simulated = client
            .simulate_rule_set(pb::SimulateRuleSetRequest { source: file.clone(), sample_limit: 1 })
            .await
            .unwrap_err();
        assert_eq!(simulated.code(), tonic::Code::InvalidArgument, "{simulated:?}");

        let candidate = dir.path().join(format!("{version}.toml"));
        std::fs::write(&candidate, &file).unwrap();
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
            .args(["rules", "check"])
            .arg(&candidate)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr).to_string() + &String::from_utf8_lossy(&check.stdout);
        assert!(!check.status.success(), "rules check: {stderr}");
        assert!(stderr.contains(&format!("{line}:")) && stderr.contains(expected), "rules check: {stderr}");

        let serve = std::process::Command::new(env!("CARGO_BIN_EXE_leadscore"))
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "off", "--redis-url", &redis.url()])
            .arg("--rules")
            .arg(&candidate)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&serve.stderr);
        assert!(!serve.status.success(), "start-up with {version}: {stderr}");
        assert!(stderr.contains(expected), "start-up: {stderr}");

        std::fs::write(&path, &file).unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(active_version(&app).await, "2026.11.1", "the reload of {version} is refused");
    }
    // The longest chain is refused by its length or depth, never by a crash.
    let checked = qualification(&app)
        .await
        .validate_rule_set(pb::ValidateRuleSetRequest { source: with_mql_condition("9.3", &chain) })
        .await
        .unwrap()
        .into_inner();
    assert!(!checked.valid && checked.errors.len() == 1, "{:?}", checked.errors);
    upsert(&app, "still-serving", &[]).await;
}

/// A condition that fails on some leads (an attribute read without has())
/// is counted by rule and version, and simulation names those leads.
#[tokio::test]
async fn evaluation_failures_are_counted_and_simulated() {
    let RulesApp { redis: _redis, dir: _dir, path, app } = app_with_rule_file(false).await;
    let file = with_mql_condition("9.4", "lead.attributes.industry == 'saas'");
    std::fs::write(&path, &file).unwrap();
    wait_for_version(&app, "9.4").await;
    upsert(&app, "no-industry", &[("seniority", "vp")]).await;
    upsert(&app, "saas", &[("industry", "saas")]).await;
    app.client().await.record_signals(record(downloads("no-industry", "f"))).await.unwrap();
    assert_eq!(stage_of(&app, "saas").await, pb::Stage::Mql);
    assert_eq!(stage_of(&app, "no-industry").await, pb::Stage::Lead);
    let metrics = app.scrape_metrics().await;
    let counted = metrics
        .lines()
        .find(|l| {
            l.starts_with("leadscore_rule_evaluation_errors_total{")
                && l.contains("rule=\"mql_engaged_and_fit\"")
                && l.contains("rule_set_version=\"9.4\"")
        })
        .unwrap_or_else(|| panic!("no failure counted: {metrics}"));
    assert!(counted.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0, "{counted}");

    let sim = qualification(&app)
        .await
        .simulate_rule_set(pb::SimulateRuleSetRequest { source: file.replace("9.4", "9.5"), sample_limit: 10 })
        .await
        .unwrap()
        .into_inner();
    let errors = sim.rule_errors.iter().find(|e| e.rule_id == "mql_engaged_and_fit").expect("reported");
    assert_eq!(errors.example_lead_ids, ["no-industry"], "{errors:?}");
    assert!(errors.error.contains("industry") && errors.error.contains("has("), "{errors:?}");
}

/// The default rules with `content_download` worth `points`.
fn with_download_points(version: &str, points: u32) -> String {
    leadscore::DEFAULT_RULES
        .replace("version = \"2026.11.1\"", &format!("version = \"{version}\""))
        .replace("content_download = { points = 8 }", &format!("content_download = {{ points = {points} }}"))
}

/// Rule set N+1 is activated while the rescore under N runs, on two
/// replicas: every stored lead ends scored under N+1.
#[tokio::test]
async fn a_reload_during_a_rescore_leaves_every_lead_under_the_newest_rules() {
    let RulesApp { redis, dir: _dir, path, app } = app_with_rule_file(true).await;
    let mut s = settings(Some(redis.url()));
    s.rules = Some(path.clone());
    s.rules_reload_interval = leadscore::config::Millis(100);
    let replica = TestApp::spawn(s).await;
    const LEADS: usize = 3000;
    let now = now_millis();
    let ids: Vec<String> = (0..LEADS).map(|i| format!("bulk-{i}")).collect();
    // Small calls: each stays well within the tests' 500 ms Redis timeout.
    for chunk in ids.chunks(200) {
        let signals = chunk.iter().map(|id| signal(&format!("{id}-d"), id, "content_download", now)).collect();
        app.client().await.record_signals(record(signals)).await.unwrap();
    }
    std::fs::write(&path, with_download_points("2026.11.2", 3)).unwrap();
    wait_for_version(&app, "2026.11.2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(&path, with_download_points("2026.11.3", 5)).unwrap();
    wait_for_version(&app, "2026.11.3").await;
    wait_for_version(&replica, "2026.11.3").await;

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut stale = 0;
        for chunk in ids.chunks(1000) {
            let scores = app
                .client()
                .await
                .score_leads(pb::ScoreLeadsRequest { lead_ids: chunk.to_vec(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            stale += scores.scores.iter().filter(|s| (s.behavior - 5.0).abs() > 0.01).count();
        }
        if stale == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stale} leads are not scored under 2026.11.3");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A version names one content for good: different rules under a version
/// already used are refused by a reload, by ValidateRuleSet and at
/// start-up of another replica.
#[tokio::test]
async fn a_version_names_one_content() {
    let RulesApp { redis, dir, path, app } = app_with_rule_file(false).await;
    let first = with_download_points("2026.12.1", 3);
    std::fs::write(&path, &first).unwrap();
    wait_for_version(&app, "2026.12.1").await;
    let same_version = with_download_points("2026.12.1", 30);
    let validate = |source: String| {
        let app = &app;
        async move {
            qualification(app)
                .await
                .validate_rule_set(pb::ValidateRuleSetRequest { source })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let checked = validate(same_version.clone()).await;
    assert!(!checked.valid, "{checked:?}");
    assert!(checked.errors[0].message.contains("already names different rules"), "{:?}", checked.errors);
    assert_eq!(checked.errors[0].line, 5, "the version line");
    // The same file again is fine.
    let again = validate(first.clone()).await;
    assert!(again.valid, "{again:?}");

    std::fs::write(&path, &same_version).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let active = qualification(&app).await.get_rule_set(pb::GetRuleSetRequest {}).await.unwrap().into_inner();
    assert_eq!(active.source, first, "the reload was refused");

    let other = dir.path().join("other.toml");
    std::fs::write(&other, &same_version).unwrap();
    let mut s = settings(Some(redis.url()));
    s.rules = Some(other);
    let err = leadscore::startup::Application::build(s).await.err().expect("refused at start-up").to_string();
    assert!(err.contains("already names different rules"), "{err}");
}
