//! Score profiles, cohorts, the funnel and accounts, through the `Profiles`
//! service, against real Redis (and the embedded store for equivalence).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use leadscore::api::pb;
use leadscore::api::pb::profiles_client::ProfilesClient;
use leadscore::api::pb::qualification_client::QualificationClient;
use leadscore::domain::Stage;
use leadscore::domain::profiles::{CohortProfile, QUALIFIED_STAGES};
use tonic::transport::Channel;

use crate::helpers::{DAY, ManualClock, RedisServer, TestApp, record, settings, signal, ts, violated_fields};

/// 2026-11-20T12:00:00Z.
const NOW: i64 = 1_763_640_000_000 + 365 * DAY;
/// 2026-09-01, 2026-10-01, 2026-11-01, 2026-12-01 (UTC).
const SEP: i64 = 1_788_220_800_000;
const OCT: i64 = 1_790_812_800_000;
const NOV: i64 = 1_793_491_200_000;
const DEC: i64 = 1_796_083_200_000;

async fn profiles(app: &TestApp) -> ProfilesClient<Channel> {
    ProfilesClient::new(app.channel().await)
}

async fn spawn(redis: Option<&RedisServer>) -> (TestApp, Arc<ManualClock>) {
    let clock = ManualClock::at(NOW);
    let app = TestApp::spawn_with_clock(settings(redis.map(RedisServer::url)), clock.clone()).await;
    (app, clock)
}

fn lead(id: &str, account: &str, attributes: &[(&str, &str)], created_at: Option<i64>) -> pb::UpsertLeadRequest {
    pb::UpsertLeadRequest {
        lead: Some(pb::Lead {
            lead_id: id.into(),
            account_id: account.into(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created_at: created_at.map(ts),
            ..Default::default()
        }),
    }
}

const INDUSTRIES: [&str; 3] = ["software", "retail", "healthcare"];
const SENIORITY: [&str; 3] = ["vp", "manager", "analyst"];
const TYPES: [&str; 5] = ["page_view", "email_click", "content_download", "webinar_attended", "demo_requested"];

/// Loads `n` leads created across September to November, with signals that
/// all occur now (so scores are exact and the brute force can compare).
async fn load_population(app: &TestApp, n: usize) {
    let client = app.client().await;
    futures::stream::iter(0..n)
        .map(|i| {
            let mut client = client.clone();
            async move {
                let month = [SEP, OCT, NOV][i % 3];
                let created = month + (i as i64 * 7919 % 19) * DAY + 3_600_000;
                let attributes =
                    [("industry", INDUSTRIES[i % 3]), ("seniority", SENIORITY[i / 3 % 3]), ("company_size", "500")];
                client.upsert_lead(lead(&format!("p{i}"), "", &attributes, Some(created))).await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let mut signals = Vec::new();
    for i in 0..n {
        for k in 0..(i * 31 % 7) {
            let t = TYPES[(i + k * k) % TYPES.len()];
            if t == "demo_requested" && i % 5 != 0 {
                continue;
            }
            signals.push(signal(&format!("e{i}-{k}"), &format!("p{i}"), t, NOW));
        }
    }
    let mut client = app.client().await;
    for chunk in signals.chunks(250) {
        client.record_signals(record(chunk.to_vec())).await.unwrap();
    }
}

/// Every lead's (total, stage, reached MQL) by brute force: score each one.
async fn brute_force(app: &TestApp, n: usize, keep: impl Fn(usize) -> bool) -> Vec<(f64, Stage, bool)> {
    let mut client = app.client().await;
    let ids: Vec<String> = (0..n).filter(|i| keep(*i)).map(|i| format!("p{i}")).collect();
    let mut rows = Vec::new();
    // Small calls: the test Redis timeout is 500 ms and the suite runs in
    // parallel on two cores.
    for chunk in ids.chunks(200) {
        let scores = client
            .score_leads(pb::ScoreLeadsRequest { lead_ids: chunk.to_vec(), model: String::new() })
            .await
            .unwrap()
            .into_inner()
            .scores;
        for s in scores {
            let stage = stage_of(s.stage());
            // No lead of this population leaves the qualified stages again.
            rows.push((s.total, stage, QUALIFIED_STAGES.contains(&stage)));
        }
    }
    rows
}

fn stage_of(stage: pb::Stage) -> Stage {
    stage.as_str_name().trim_start_matches("STAGE_").parse().unwrap()
}

fn cohort(from: i64, to: i64, filter: &str) -> pb::GetCohortScoreProfileRequest {
    pb::GetCohortScoreProfileRequest {
        created_from: Some(ts(from)),
        created_to: Some(ts(to)),
        attribute_filter: filter.into(),
        ..Default::default()
    }
}

fn assert_matches(got: &pb::GetCohortScoreProfileResponse, want: &CohortProfile) {
    assert_eq!(got.lead_count, want.lead_count);
    let histogram: Vec<(f64, f64, u64)> = got.histogram.iter().map(|b| (b.lower, b.upper, b.count)).collect();
    let expected: Vec<(f64, f64, u64)> = want.histogram.iter().map(|b| (b.lower, b.upper, b.count)).collect();
    assert_eq!(histogram, expected);
    assert_eq!([got.p50, got.p75, got.p90, got.p99], want.percentiles);
    assert_eq!((got.min, got.max), (want.min, want.max));
    let by_stage: BTreeMap<Stage, u64> = got.count_by_stage.iter().map(|c| (stage_of(c.stage()), c.count)).collect();
    assert_eq!(by_stage, want.by_stage);
    assert!((got.mql_rate - want.mql_rate()).abs() < 1e-4, "{} vs {}", got.mql_rate, want.mql_rate());
}

async fn cohort_equals_brute_force(redis: Option<&RedisServer>, n: usize) {
    let (app, _clock) = spawn(redis).await;
    load_population(&app, n).await;
    let mut client = profiles(&app).await;

    // November's new leads.
    let got = client.get_cohort_score_profile(cohort(NOV, DEC, "")).await.unwrap().into_inner();
    let want = CohortProfile::from_leads(brute_force(&app, n, |i| i % 3 == 2).await, 10);
    assert!(want.lead_count > 0 && want.by_stage.len() > 1, "a varied population: {want:?}");
    assert_matches(&got, &want);

    // All three months, then filtered by a declared cohort attribute.
    let got = client.get_cohort_score_profile(cohort(SEP, DEC, "")).await.unwrap().into_inner();
    assert_matches(&got, &CohortProfile::from_leads(brute_force(&app, n, |_| true).await, 10));
    let got = client.get_cohort_score_profile(cohort(SEP, DEC, "seniority=vp")).await.unwrap().into_inner();
    assert_matches(&got, &CohortProfile::from_leads(brute_force(&app, n, |i| i / 3 % 3 == 0).await, 10));

    // An empty cohort.
    let got = client.get_cohort_score_profile(cohort(DEC, DEC + 31 * DAY, "")).await.unwrap().into_inner();
    assert_eq!((got.lead_count, got.histogram.len(), got.mql_rate), (0, 0, 0.0));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_profile_equals_brute_force_on_redis() {
    let redis = RedisServer::start();
    cohort_equals_brute_force(Some(&redis), 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohort_profile_equals_brute_force_on_the_embedded_store() {
    cohort_equals_brute_force(None, 600).await;
}

#[tokio::test]
async fn cohort_requests_are_checked() {
    let (app, _clock) = spawn(None).await;
    let mut client = profiles(&app).await;
    let bad = client.get_cohort_score_profile(cohort(NOV + DAY, DEC, "")).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["created_from"]);
    assert!(bad.message().contains("2026-11-01T00:00:00Z") || format!("{bad:?}").contains("2026-11-01T00:00:00Z"));
    let bad = client.get_cohort_score_profile(cohort(DEC, NOV, "email=x")).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["created_to", "attribute_filter"]);
    let bad = client.get_cohort_score_profile(cohort(NOV, DEC, "industry")).await.unwrap_err();
    assert_eq!(violated_fields(&bad), ["attribute_filter"]);
    app.stop().await;
}

async fn set_stage(app: &TestApp, lead: &str, to: pb::Stage, amount: Option<f64>) {
    QualificationClient::new(app.channel().await)
        .set_stage(pb::SetStageRequest {
            lead_id: lead.into(),
            to: to.into(),
            actor: "rep@crm".into(),
            reason: "test".into(),
            deal_amount: amount,
            ..Default::default()
        })
        .await
        .unwrap();
}

fn sourced(event: &str, lead: &str, t: &str, at: i64, source: &str) -> pb::Signal {
    let mut s = signal(event, lead, t, at);
    s.properties = HashMap::from([("source".to_owned(), source.to_owned())]);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_funnel_counts_stage_entries_conversions_reopens_and_revenue_by_source() {
    let redis = RedisServer::start();
    funnel_scenario(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_the_same_funnel() {
    funnel_scenario(None).await;
}

async fn funnel_scenario(redis: Option<&RedisServer>) {
    let (app, clock) = spawn(redis).await;
    let mut leads = app.client().await;
    let fit = [("seniority", "vp"), ("company_size", "1500")];
    for id in ["a", "b", "c"] {
        leads.upsert_lead(lead(id, "", &fit, None)).await.unwrap();
    }
    // a: from a webinar (first touch), then a hand raiser; won for 12,000.
    // b: from ads; MQL, recycled by sales, reopened by new engagement.
    // c: from ads; stays a lead.
    let burst = |lead: &str, source: &str, at: i64| {
        (0..3).map(|k| sourced(&format!("{lead}{k}{at}"), lead, "webinar_attended", at, source)).collect::<Vec<_>>()
    };
    leads.record_signals(record(burst("a", "webinar", NOW - DAY))).await.unwrap();
    leads.record_signals(record(burst("b", "ads", NOW - 2 * DAY))).await.unwrap();
    leads.record_signals(record(vec![sourced("c0", "c", "page_view", NOW - DAY, "ads")])).await.unwrap();
    clock.advance(DAY);
    leads.record_signals(record(vec![sourced("a-demo", "a", "demo_requested", NOW, "sales")])).await.unwrap();
    set_stage(&app, "a", pb::Stage::Opportunity, None).await;
    set_stage(&app, "b", pb::Stage::Recycled, None).await;
    clock.advance(2 * DAY);
    set_stage(&app, "a", pb::Stage::Customer, Some(12_000.0)).await;
    leads.record_signals(record(burst("b", "ads", clock.millis()))).await.unwrap();

    let day = NOW - NOW.rem_euclid(DAY);
    let funnel = profiles(&app)
        .await
        .get_funnel(pb::GetFunnelRequest {
            from: Some(ts(day)),
            to: Some(ts(day + 7 * DAY)),
            group_by: pb::FunnelGroupBy::Source.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let entered = |f: &pb::Funnel, s: pb::Stage| f.stages.iter().find(|e| e.stage() == s).unwrap().entered;
    let total = funnel.total.unwrap();
    assert_eq!(entered(&total, pb::Stage::Lead), 3);
    assert_eq!(entered(&total, pb::Stage::Mql), 3, "a, b, and b again after reopening");
    assert_eq!(entered(&total, pb::Stage::Sql), 1);
    assert_eq!(entered(&total, pb::Stage::Opportunity), 1);
    assert_eq!(entered(&total, pb::Stage::Customer), 1);
    assert_eq!(entered(&total, pb::Stage::Recycled), 1);
    assert_eq!(total.reopened_leads, 1);
    assert_eq!((total.won_deals, total.won_revenue), (1, 12_000.0));
    // Conversions count each lead once per stage: a and b of the three
    // leads reached MQL (b's reopening is no new MQL), a went on to SAL's
    // place (skipped), SQL, OPPORTUNITY and CUSTOMER.
    let reached = |f: &pb::Funnel, s: pb::Stage| f.stages.iter().find(|e| e.stage() == s).unwrap().reached;
    assert_eq!(reached(&total, pb::Stage::Sal), 1);
    let rates: Vec<f64> = total.conversions.iter().map(|c| c.rate).collect();
    assert_eq!(rates, [0.6667, 0.5, 1.0, 1.0, 1.0]);
    let lead_to_mql = &total.conversions[0];
    assert_eq!((lead_to_mql.from(), lead_to_mql.to()), (pb::Stage::Lead, pb::Stage::Mql));
    let to_customer = total.stages.iter().find(|e| e.stage() == pb::Stage::Customer).unwrap();
    let median = to_customer.median_time_to_stage.unwrap().seconds as f64;
    assert!((median - 3.0 * 86_400.0).abs() < 0.05 * 3.0 * 86_400.0, "{median}");

    // By first-touch source: the webinar lead is the one that bought.
    let groups: BTreeMap<&str, &pb::Funnel> =
        funnel.groups.iter().map(|g| (g.value.as_str(), g.funnel.as_ref().unwrap())).collect();
    assert!(groups.contains_key("ads") && groups.contains_key("webinar"), "{groups:?}");
    assert_eq!(entered(groups["webinar"], pb::Stage::Customer), 1);
    assert_eq!(groups["webinar"].won_revenue, 12_000.0);
    assert_eq!(entered(groups["ads"], pb::Stage::Mql), 2);
    assert_eq!(groups["ads"].reopened_leads, 1);
    // Upserted before their first signal, the leads' creation counts under
    // their first touch once it arrives; nothing is left without one.
    assert_eq!(entered(groups["ads"], pb::Stage::Lead), 2);
    assert_eq!(entered(groups["webinar"], pb::Stage::Lead), 1);
    assert!(groups.get("(none)").is_none_or(|f| f.stages.iter().all(|s| s.entered == 0)), "{groups:?}");

    // A later period holds none of it; a deal amount needs CUSTOMER.
    let mut client = profiles(&app).await;
    let later = client
        .get_funnel(pb::GetFunnelRequest { from: Some(ts(day + 7 * DAY)), to: Some(ts(day + 8 * DAY)), group_by: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(later.total.unwrap().stages.iter().map(|s| s.entered).sum::<u64>(), 0);
    let bad = QualificationClient::new(app.channel().await)
        .set_stage(pb::SetStageRequest {
            lead_id: "c".into(),
            to: pb::Stage::Mql.into(),
            actor: "rep".into(),
            deal_amount: Some(5.0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["deal_amount"]);
    let bad = client
        .get_funnel(pb::GetFunnelRequest { from: Some(ts(day + 1)), to: Some(ts(day)), group_by: 0 })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["from"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_score_profile_has_the_score_history_and_stage_history() {
    let redis = RedisServer::start();
    score_profile_scenario(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_the_same_score_profile() {
    score_profile_scenario(None).await;
}

async fn score_profile_scenario(redis: Option<&RedisServer>) {
    let (app, clock) = spawn(redis).await;
    let mut leads = app.client().await;
    leads.upsert_lead(lead("h", "", &[("seniority", "vp")], None)).await.unwrap();
    clock.advance(60_000);
    leads.record_signals(record(vec![signal("h1", "h", "demo_requested", NOW)])).await.unwrap();
    clock.advance(60_000);
    let signals = vec![signal("h2", "h", "page_view", NOW), signal("h3", "h", "email_click", NOW)];
    leads.record_signals(record(signals.clone())).await.unwrap();
    // A duplicate changes nothing, so it adds no entry.
    leads.record_signals(record(signals)).await.unwrap();

    let profile = profiles(&app)
        .await
        .get_score_profile(pb::GetScoreProfileRequest { lead_id: "h".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let causes: Vec<&str> = profile.score_history.iter().map(|e| e.cause.as_str()).collect();
    assert_eq!(causes, ["signals", "signal:demo_requested", "profile"]);
    let newest = &profile.score_history[0];
    let score = profile.score.clone().unwrap();
    assert_eq!((newest.total, newest.behavior, newest.fit), (score.total, score.behavior, score.fit));
    assert_eq!(profile.score_history[2].behavior, 0.0);
    assert_eq!(profile.score_history[1].at.unwrap().seconds, (NOW + 60_000) / 1000);
    assert_eq!(profile.stage(), pb::Stage::Sql);
    let moves: Vec<(pb::Stage, pb::Stage)> = profile.stage_history.iter().map(|c| (c.from(), c.to())).collect();
    assert_eq!(moves, [(pb::Stage::Mql, pb::Stage::Sql), (pb::Stage::Lead, pb::Stage::Mql)]);
    assert!(profile.recent_signals.is_empty(), "no signals unless asked for");
    // The newest signals, as the dashboard's lead page shows them.
    let recent = profiles(&app)
        .await
        .get_score_profile(pb::GetScoreProfileRequest { lead_id: "h".into(), signal_limit: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .recent_signals;
    let mut types: Vec<&str> = recent.iter().map(|k| k.r#type.as_str()).collect();
    types.sort();
    assert_eq!(types, ["email_click", "page_view"], "the two newest of three");
    assert!(recent.iter().all(|k| k.recorded_at.unwrap().seconds == (NOW + 120_000) / 1000));
    let too_many = profiles(&app)
        .await
        .get_score_profile(pb::GetScoreProfileRequest { lead_id: "h".into(), signal_limit: 101, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&too_many), ["signal_limit"]);
    let missing = profiles(&app)
        .await
        .get_score_profile(pb::GetScoreProfileRequest { lead_id: "nobody".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    app.stop().await;
}

async fn account(app: &TestApp, id: &str) -> pb::GetAccountScoreResponse {
    profiles(app)
        .await
        .get_account_score(pb::GetAccountScoreRequest { account_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_scores_its_leads_decays_with_them_and_qualifies_once() {
    let redis = RedisServer::start();
    account_scenario(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_scores_accounts_the_same() {
    account_scenario(None).await;
}

async fn account_scenario(redis: Option<&RedisServer>) {
    let (app, clock) = spawn(redis).await;
    let mut leads = app.client().await;
    let mut client = profiles(&app).await;
    let attributes = HashMap::from([("industry".to_owned(), "software".to_owned())]);
    client
        .upsert_account(pb::UpsertAccountRequest {
            account: Some(pb::Account { account_id: "acme".into(), attributes }),
        })
        .await
        .unwrap();
    for id in ["x", "y", "z"] {
        leads.upsert_lead(lead(id, "acme", &[], None)).await.unwrap();
    }
    let engage = |lead: &str, n: usize| {
        (0..n).map(|k| signal(&format!("{lead}-{k}"), lead, "webinar_attended", NOW)).collect::<Vec<_>>()
    };
    leads.record_signals(record(engage("x", 2))).await.unwrap();
    let acme = account(&app, "acme").await;
    assert_eq!((acme.lead_count, acme.engaged_leads, acme.qualified), (3, 1, false));
    assert_eq!(acme.fit, 15.0);
    assert_eq!(acme.fit_rules[0].rule_id, "target_industry");
    assert_eq!(acme.aggregate, "top 3");

    leads.record_signals(record(engage("y", 3))).await.unwrap();
    leads.record_signals(record(engage("z", 4))).await.unwrap();
    let acme = account(&app, "acme").await;
    let mut behaviors = Vec::new();
    for id in ["x", "y", "z"] {
        let s = leads.score_lead(pb::ScoreLeadRequest { lead_id: id.into(), ..Default::default() }).await.unwrap();
        behaviors.push(s.into_inner().score.unwrap().behavior);
    }
    assert_eq!(acme.behavior, behaviors.iter().sum::<f64>());
    assert_eq!(acme.leads.iter().map(|l| l.lead_id.as_str()).collect::<Vec<_>>(), ["z", "y", "x"]);
    assert!(acme.score >= 100.0 && acme.engaged_leads >= 2, "{acme:?}");
    assert!(acme.qualified && acme.qualified_rule_id == "buying_group_engaged", "{acme:?}");
    let qualified_at = acme.qualified_at;

    // Decay: the webinar points halve over their half-life; the fit stays.
    let half_life = 30 * DAY;
    clock.advance(half_life);
    let later = account(&app, "acme").await;
    assert!((later.behavior - acme.behavior / 2.0).abs() < 0.02, "{} vs {}", later.behavior, acme.behavior);
    assert_eq!(later.fit, acme.fit);
    // Qualified once: new engagement does not qualify it again.
    leads
        .record_signals(record(
            engage("x", 1)
                .into_iter()
                .map(|mut s| {
                    s.event_id = "x-late".into();
                    s.occurred_at = Some(ts(clock.millis()));
                    s
                })
                .collect(),
        ))
        .await
        .unwrap();
    assert_eq!(account(&app, "acme").await.qualified_at, qualified_at);

    // A lead moving to another account leaves this one.
    leads.upsert_lead(lead("z", "globex", &[], None)).await.unwrap();
    let acme = account(&app, "acme").await;
    assert_eq!(acme.lead_count, 2);
    assert!(acme.leads.iter().all(|l| l.lead_id != "z"));
    let globex = account(&app, "globex").await;
    assert_eq!((globex.lead_count, globex.leads[0].lead_id.as_str()), (1, "z"));
    let missing = client.get_account_score(pb::GetAccountScoreRequest { account_id: "nobody".into() }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    app.stop().await;
}

/// What `ExportLead` answers holds what was stored, on either store.
async fn export_holds_what_was_stored(redis: Option<&RedisServer>) {
    let (app, _clock) = spawn(redis).await;
    let mut leads = app.client().await;
    let attributes: HashMap<String, String> =
        [("seniority".to_string(), "vp".to_string()), ("email".to_string(), "ada@example.com".to_string())].into();
    let lead = pb::Lead { lead_id: "export-1".into(), account_id: "acme".into(), attributes, ..Default::default() };
    leads.upsert_lead(pb::UpsertLeadRequest { lead: Some(lead) }).await.unwrap();
    let mut signals: Vec<pb::Signal> =
        (0..4).map(|i| signal(&format!("x-{i}"), "export-1", "content_download", NOW - i * 60_000)).collect();
    signals[0].properties = [("campaign".to_string(), "q4-launch".to_string())].into();
    leads.record_signals(record(signals)).await.unwrap();
    // Another lead's data stays out.
    leads.record_signals(record(vec![signal("y-1", "export-2", "demo_requested", NOW)])).await.unwrap();

    let mut client = profiles(&app).await;
    let export = client
        .export_lead(pb::ExportLeadRequest { lead_id: "export-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let lead = export.lead.unwrap();
    assert_eq!((lead.lead_id.as_str(), lead.account_id.as_str()), ("export-1", "acme"));
    assert_eq!(lead.attributes["email"], "ada@example.com");
    assert_eq!(lead.stage, pb::Stage::Mql as i32);
    assert_eq!((export.signals.len(), export.signals_recorded, export.remembered_event_ids), (4, 4, 4));
    assert!(export.signals.iter().any(|s| s.properties.get("campaign").map(String::as_str) == Some("q4-launch")));
    assert!(export.signals.iter().all(|s| s.r#type == "content_download" && s.recorded_at.is_some()));
    assert!(!export.scores.is_empty() && export.scores.iter().all(|s| s.lead_id == "export-1"));
    assert!(export.score_history.iter().any(|h| !h.entries.is_empty()));
    assert_eq!(export.stage_history[0].to, pb::Stage::Mql as i32);
    assert!(export.touches.iter().any(|t| t.campaign == "q4-launch"), "{:?}", export.touches);
    assert!(export.triggers.iter().any(|t| t.definition_id == "sales_alert_new_mql" && t.lead_id == "export-1"));
    assert!(export.triggers.iter().all(|t| t.lead_id == "export-1"));
    assert!(export.triggers_last_fired.contains_key("sales_alert_new_mql"));
    assert!(export.exported_at.is_some());

    let e =
        client.export_lead(pb::ExportLeadRequest { lead_id: "nobody".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = client.export_lead(pb::ExportLeadRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn export_holds_what_was_stored_on_redis() {
    let redis = RedisServer::start();
    export_holds_what_was_stored(Some(&redis)).await;
}

#[tokio::test]
async fn export_holds_what_was_stored_in_memory() {
    export_holds_what_was_stored(None).await;
}
