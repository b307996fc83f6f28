//! Erasure (`ForgetLead`): nothing of the lead is left in the store, every
//! aggregate equals a recount without it (a twin service that never saw
//! the lead, fed the same calls at the same instants), the feed carries a
//! tombstone, and erasing again is harmless. On the embedded store and on
//! Redis, where every key and value is scanned.

use leadscore::api::pb;
use leadscore::api::pb::profiles_client::ProfilesClient;
use leadscore::api::pb::qualification_client::QualificationClient;
use tonic::transport::Channel;

use crate::helpers::{DAY, ManualClock, RedisServer, TestApp, move_through, record, settings, signal, touch, ts};

/// 2026-11-20T12:00:00Z.
const NOW: i64 = 1_763_640_000_000 + 365 * DAY;
/// 2026-09-01 and 2027-01-01 (UTC).
const SEP: i64 = 1_788_220_800_000;
const JAN: i64 = 1_798_761_600_000;

const ERASED: &str = "erase-me-7f3a";
const VISITOR: &str = "cookie-x-91";
/// What the erased lead's data holds that no other lead's does.
const ITS_VALUES: [&str; 7] =
    [ERASED, VISITOR, "Atlantis Shipping", "Atlantisland", "ada.erase@example.org", "x-only-q9", "xsource-unique"];

fn lead(id: &str, attributes: &[(&str, &str)], created_at: i64) -> pb::UpsertLeadRequest {
    pb::UpsertLeadRequest {
        lead: Some(pb::Lead {
            lead_id: id.into(),
            account_id: "acme".into(),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created_at: Some(ts(created_at)),
            ..Default::default()
        }),
    }
}

/// The same calls at the same instants, with or without the lead to erase
/// (its calls interleaved with the others').
async fn scenario(app: &TestApp, clock: &ManualClock, with_it: bool) {
    let mut leads = app.client().await;
    let mut crm = QualificationClient::new(app.channel().await);
    let vp = [("seniority", "vp"), ("company_size", "1500")];
    let with = |extra: &[(&'static str, &'static str)]| vp.iter().chain(extra).copied().collect::<Vec<_>>();
    leads.upsert_lead(lead("l1", &with(&[("industry", "software"), ("country", "DE")]), NOW - 40 * DAY)).await.unwrap();
    if with_it {
        let attributes =
            with(&[("industry", "Atlantis Shipping"), ("country", "Atlantisland"), ("email", "ada.erase@example.org")]);
        leads.upsert_lead(lead(ERASED, &attributes, NOW - 35 * DAY)).await.unwrap();
    }
    leads.upsert_lead(lead("l2", &[("industry", "retail"), ("country", "FR")], NOW - 30 * DAY)).await.unwrap();
    clock.advance(DAY);
    let now = clock.millis();
    let burst = |lead: &str, campaign: &str, source: &str| -> Vec<pb::Signal> {
        (0..3).map(|k| touch(&format!("{lead}-w{k}"), lead, "webinar_attended", now - DAY, campaign, source)).collect()
    };
    leads.record_signals(record(burst("l1", "spring", "linkedin"))).await.unwrap();
    if with_it {
        leads.record_signals(record(burst(ERASED, "x-only-q9", "xsource-unique"))).await.unwrap();
        let mut seen = touch("v-1", "", "page_view", now - 2 * DAY, "spring", "linkedin");
        seen.visitor_id = VISITOR.into();
        seen.lead_id.clear();
        leads.record_signals(record(vec![seen])).await.unwrap();
        crm.identify_visitor(pb::IdentifyVisitorRequest { visitor_id: VISITOR.into(), lead_id: ERASED.into() })
            .await
            .unwrap();
    }
    leads.record_signals(record(vec![signal("l2-p", "l2", "page_view", now)])).await.unwrap();
    clock.advance(DAY);
    let path = |amount| [(pb::Stage::Opportunity, None), (pb::Stage::Customer, Some(amount))];
    leads
        .record_signals(record(vec![touch("l1-d", "l1", "demo_requested", clock.millis(), "spring", "linkedin")]))
        .await
        .unwrap();
    move_through(&mut crm, "l1", &path(12_000.0)).await;
    if with_it {
        move_through(&mut crm, ERASED, &[(pb::Stage::Sal, None), (pb::Stage::Sql, None)]).await;
        move_through(&mut crm, ERASED, &path(2_500.0)).await;
    }
    clock.advance(DAY);
    leads.record_signals(record(vec![signal("l2-q", "l2", "email_click", clock.millis())])).await.unwrap();
}

/// Every figure the reports give: funnel, cohorts, attribution, account.
async fn figures(app: &TestApp) -> Vec<String> {
    let mut profiles = ProfilesClient::new(app.channel().await);
    let mut out = Vec::new();
    for group_by in 0..=3 {
        let funnel = profiles
            .get_funnel(pb::GetFunnelRequest { from: Some(ts(SEP)), to: Some(ts(JAN)), group_by })
            .await
            .unwrap()
            .into_inner();
        out.push(format!("funnel {group_by}: {funnel:?}"));
        for model in 1..=5 {
            let request = pb::GetCampaignReportRequest { from: Some(ts(SEP)), to: Some(ts(JAN)), group_by, model };
            let report = profiles.get_campaign_report(request).await.unwrap().into_inner();
            out.push(format!("campaigns {group_by} {model}: {report:?}"));
        }
    }
    for filter in ["", "industry=software", "country=FR", "industry=Atlantis Shipping"] {
        let cohort = profiles
            .get_cohort_score_profile(pb::GetCohortScoreProfileRequest {
                created_from: Some(ts(SEP)),
                created_to: Some(ts(JAN)),
                attribute_filter: filter.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.push(format!("cohort {filter}: {cohort:?}"));
    }
    let account = profiles
        .get_account_score(pb::GetAccountScoreRequest { account_id: "acme".into() })
        .await
        .unwrap()
        .into_inner();
    out.push(format!(
        "account: {} {} {} {:?}",
        account.score, account.engaged_leads, account.lead_count, account.top_leads
    ));
    out
}

async fn forget(app: &TestApp, lead_id: &str, visitor_id: &str) -> Result<pb::ForgetLeadResponse, tonic::Status> {
    let mut profiles = ProfilesClient::new(app.channel().await);
    let request = pb::ForgetLeadRequest {
        lead_id: lead_id.into(),
        visitor_id: visitor_id.into(),
        actor: "dpo@example.com".into(),
        reason: "erasure request #4711".into(),
    };
    profiles.forget_lead(request).await.map(tonic::Response::into_inner)
}

/// Every key of the Redis, with everything it holds, as text.
fn dump(redis: &RedisServer) -> Vec<(String, String)> {
    let mut c = redis.connection();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    keys.into_iter()
        .map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).unwrap();
            let value: redis::Value = match kind.as_str() {
                "string" => redis::cmd("GET").arg(&key).query(&mut c).unwrap(),
                "hash" => redis::cmd("HGETALL").arg(&key).query(&mut c).unwrap(),
                "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query(&mut c).unwrap(),
                "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut c).unwrap(),
                "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query(&mut c).unwrap(),
                "stream" => redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(&mut c).unwrap(),
                other => panic!("a key of type {other}"),
            };
            (String::from_utf8_lossy(&key).into_owned(), text(&value))
        })
        .collect()
}

fn text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(n) => n.to_string(),
        redis::Value::Array(items) | redis::Value::Set(items) => items.iter().map(text).collect::<Vec<_>>().join("\n"),
        redis::Value::Map(pairs) => {
            pairs.iter().map(|(k, v)| format!("{}={}", text(k), text(v))).collect::<Vec<_>>().join("\n")
        }
        other => format!("{other:?}"),
    }
}

/// Where the erased lead's values still appear.
fn traces(dump: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (key, value) in dump {
        for needle in ITS_VALUES {
            if key.contains(needle) || value.contains(needle) {
                found.push(format!("{needle} in {key}"));
            }
        }
    }
    found
}

/// The service that sees the lead to erase, its clock, and its twin that
/// never does, both fed the scenario.
async fn twins(redis: Option<(&RedisServer, &RedisServer)>) -> (TestApp, std::sync::Arc<ManualClock>, TestApp) {
    let clock = ManualClock::at(NOW);
    let twin_clock = ManualClock::at(NOW);
    let app = TestApp::spawn_with_clock(settings(redis.map(|r| r.0.url())), clock.clone()).await;
    let twin = TestApp::spawn_with_clock(settings(redis.map(|r| r.1.url())), twin_clock.clone()).await;
    scenario(&app, &clock, true).await;
    scenario(&twin, &twin_clock, false).await;
    (app, clock, twin)
}

async fn erasure_leaves_a_recount(redis: Option<(&RedisServer, &RedisServer)>) {
    let (app, clock, twin) = twins(redis).await;
    let before = figures(&app).await;
    let recount = figures(&twin).await;
    assert_ne!(before, recount, "the lead counts somewhere before it is erased");
    if let Some((redis, _)) = redis {
        // The scan below can fail: before the erasure it finds every value.
        let found = traces(&dump(redis));
        for needle in ITS_VALUES {
            assert!(found.iter().any(|f| f.starts_with(needle)), "{needle} is stored somewhere: {found:?}");
        }
    }
    let mut feed = QualificationClient::new(app.channel().await);
    let end = feed
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: "latest".into(), limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .next_cursor;

    let receipt = forget(&app, ERASED, "").await.unwrap();
    assert!(receipt.found && receipt.aggregates_exact);
    assert_eq!(receipt.lead_ref, leadscore::domain::lead_ref(ERASED));
    assert_eq!((receipt.visitors, receipt.attributes), (1, 5));
    assert!(receipt.signals >= 3 && receipt.stage_changes >= 2 && receipt.aggregate_counters > 10, "{receipt:?}");
    assert!(receipt.audit_events >= 2, "its upsert and identification were in the trail: {receipt:?}");

    assert_eq!(figures(&app).await, recount, "every figure equals the recount without the lead");
    if let Some((redis, _)) = redis {
        assert_eq!(traces(&dump(redis)), Vec::<String>::new());
    }
    // Its stage changes left the feed; a tombstone took their place.
    let all = feed
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: String::new(), limit: 1000 })
        .await
        .unwrap()
        .into_inner();
    assert!(all.changes.iter().all(|c| c.lead_id != ERASED));
    assert!(all.changes.iter().any(|c| c.lead_id == "l1"));
    let new = feed
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: end, limit: 10 })
        .await
        .unwrap()
        .into_inner();
    // One for the lead, one for the visitor identified as it.
    let mut refs: Vec<String> = new.changes.iter().map(|c| c.erased.clone().expect("a tombstone").lead_ref).collect();
    refs.sort();
    let mut wanted = vec![receipt.lead_ref.clone(), leadscore::domain::lead_ref(VISITOR)];
    wanted.sort();
    assert_eq!(refs, wanted);
    assert!(new.changes.iter().all(|c| c.erased.as_ref().unwrap().erased_at == Some(ts(clock.millis()))));

    // Nothing to read; erasing again (by its visitor too) is harmless.
    let mut profiles = ProfilesClient::new(app.channel().await);
    let e =
        profiles.export_lead(pb::ExportLeadRequest { lead_id: ERASED.into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let again = forget(&app, ERASED, "").await.unwrap();
    assert!(!again.found && again.signals == 0 && again.lead_ref == receipt.lead_ref);
    assert!(!forget(&app, "", VISITOR).await.unwrap().found);
    assert_eq!(figures(&app).await, recount);

    // The erasure itself is in the trail, under the reference only.
    let trail = QualificationClient::new(app.channel().await)
        .list_audit_events(pb::ListAuditEventsRequest { limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let erasures: Vec<_> = trail.events.iter().filter(|e| e.action == "lead.erased").collect();
    assert_eq!(erasures.len(), 3);
    assert!(erasures.iter().all(|e| e.actor == "dpo@example.com"));
    assert_eq!(erasures[0].subject, receipt.lead_ref);
    assert_eq!(erasures[0].details.get("reason_given").map(String::as_str), Some("true"));
    if let Some((redis, _)) = redis {
        assert_eq!(traces(&dump(redis)), Vec::<String>::new());
    }
    app.stop().await;
    twin.stop().await;
}

#[tokio::test]
async fn erasure_leaves_a_recount_on_redis() {
    let (redis, twin) = (RedisServer::start(), RedisServer::start());
    erasure_leaves_a_recount(Some((&redis, &twin))).await;
}

#[tokio::test]
async fn erasure_leaves_a_recount_in_memory() {
    erasure_leaves_a_recount(None).await;
}

#[tokio::test]
async fn erasure_refuses_bad_requests() {
    let app = TestApp::spawn(settings(None)).await;
    let mut profiles: ProfilesClient<Channel> = ProfilesClient::new(app.channel().await);
    let bad = [
        pb::ForgetLeadRequest { actor: "dpo".into(), ..Default::default() },
        pb::ForgetLeadRequest {
            lead_id: "a".into(),
            visitor_id: "b".into(),
            actor: "dpo".into(),
            ..Default::default()
        },
        pb::ForgetLeadRequest { lead_id: "a".into(), ..Default::default() },
        pb::ForgetLeadRequest {
            lead_id: "a".into(),
            actor: "dpo".into(),
            reason: "x".repeat(2000),
            ..Default::default()
        },
    ];
    for request in bad {
        let e = profiles.forget_lead(request.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{request:?}");
    }
    app.stop().await;
}

/// `erase_unqualified_after`: quiet leads that never reached MQL (and
/// quiet anonymous visitors) are erased in the background; engaged or
/// qualified ones stay.
async fn retention_erases_quiet_unqualified_leads(redis: Option<&RedisServer>) {
    let clock = ManualClock::at(NOW);
    let mut s = settings(redis.map(RedisServer::url));
    s.erase_unqualified_after = leadscore::config::Millis(30 * DAY);
    s.inactivity_sweep_interval = leadscore::config::Millis(50);
    let app = TestApp::spawn_with_clock(s, clock.clone()).await;
    let mut leads = app.client().await;
    leads.upsert_lead(lead("quiet", &[("industry", "software")], NOW - 60 * DAY)).await.unwrap();
    leads.upsert_lead(lead("engaged", &[("industry", "software")], NOW - 60 * DAY)).await.unwrap();
    let vp = [("seniority", "vp"), ("company_size", "1500")];
    leads.upsert_lead(lead("qualified", &vp, NOW - 60 * DAY)).await.unwrap();
    let downloads = (0..4).map(|i| signal(&format!("q-{i}"), "qualified", "content_download", NOW - i)).collect();
    leads.record_signals(record(downloads)).await.unwrap();
    let mut seen = signal("v-1", "", "page_view", NOW);
    (seen.visitor_id, seen.lead_id) = ("cookie-quiet".into(), String::new());
    leads.record_signals(record(vec![seen])).await.unwrap();
    // 31 days on, only "engaged" was heard from (a day ago).
    clock.advance(30 * DAY);
    leads.record_signals(record(vec![signal("e-1", "engaged", "page_view", clock.millis())])).await.unwrap();
    clock.advance(DAY);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let erased = loop {
        let n =
            crate::helpers::metric_value(&app.scrape_metrics().await, "leadscore_leads_erased_total{by=\"retention\"}");
        if n >= 2.0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(erased, 2.0, "the quiet lead and the quiet visitor");
    let scores = leads
        .score_leads(pb::ScoreLeadsRequest {
            lead_ids: ["quiet", "engaged", "qualified"].map(String::from).to_vec(),
            model: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(scores.not_found_lead_ids, ["quiet"]);
    let mut export = ProfilesClient::new(app.channel().await);
    let gone =
        export.export_lead(pb::ExportLeadRequest { visitor_id: "cookie-quiet".into(), ..Default::default() }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    let trail = QualificationClient::new(app.channel().await)
        .list_audit_events(pb::ListAuditEventsRequest { limit: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let by_retention: Vec<_> = trail.events.iter().filter(|e| e.action == "lead.erased").collect();
    assert_eq!(by_retention.len(), 2);
    assert!(by_retention.iter().all(|e| e.actor == "retention" && e.details["by"] == "retention"));
    app.stop().await;
}

#[tokio::test]
async fn retention_erases_quiet_unqualified_leads_on_redis() {
    let redis = RedisServer::start();
    retention_erases_quiet_unqualified_leads(Some(&redis)).await;
}

#[tokio::test]
async fn retention_erases_quiet_unqualified_leads_in_memory() {
    retention_erases_quiet_unqualified_leads(None).await;
}

/// ForgetLeads: a batch erases each lead as ForgetLead would (the figures
/// equal a twin that erased the other lead alone and never saw the first),
/// with one receipt per subject and the trail's events counted once.
async fn batch_erasure_leaves_a_recount(redis: Option<(&RedisServer, &RedisServer)>) {
    let (app, _, twin) = twins(redis).await;
    forget(&twin, "l2", "").await.unwrap();
    let mut profiles = ProfilesClient::new(app.channel().await);
    let request = pb::ForgetLeadsRequest {
        lead_ids: vec![ERASED.into(), "l2".into(), "never-seen".into()],
        actor: "dpo@example.com".into(),
        ..Default::default()
    };
    let batch = profiles.forget_leads(request).await.unwrap().into_inner();
    let found: Vec<bool> = batch.receipts.iter().map(|r| r.found).collect();
    assert_eq!(found, [true, true, false]);
    assert_eq!(batch.receipts[0].lead_ref, leadscore::domain::lead_ref(ERASED));
    assert!(batch.receipts.iter().all(|r| r.aggregates_exact && r.audit_events == 0));
    assert!(batch.audit_events >= 3, "the upserts and the identification were in the trail: {batch:?}");
    assert_eq!(figures(&app).await, figures(&twin).await);
    if let Some((redis, _)) = redis {
        assert_eq!(traces(&dump(redis)), Vec::<String>::new());
    }
    app.stop().await;
    twin.stop().await;
}

#[tokio::test]
async fn batch_erasure_leaves_a_recount_in_memory() {
    batch_erasure_leaves_a_recount(None).await;
}

#[tokio::test]
async fn batch_erasure_leaves_a_recount_on_redis() {
    let (redis, twin) = (RedisServer::start(), RedisServer::start());
    batch_erasure_leaves_a_recount(Some((&redis, &twin))).await;
}

#[tokio::test]
async fn batch_erasure_refuses_bad_requests_and_erases_nothing() {
    let app = TestApp::spawn(settings(None)).await;
    app.client().await.upsert_lead(lead("kept", &[("industry", "software")], NOW)).await.unwrap();
    let mut profiles: ProfilesClient<Channel> = ProfilesClient::new(app.channel().await);
    let ids = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let bad = [
        pb::ForgetLeadsRequest { actor: "dpo".into(), ..Default::default() },
        pb::ForgetLeadsRequest { lead_ids: ids(&["kept", "kept"]), actor: "dpo".into(), ..Default::default() },
        pb::ForgetLeadsRequest { lead_ids: ids(&["kept", ""]), actor: "dpo".into(), ..Default::default() },
        pb::ForgetLeadsRequest { lead_ids: ids(&["kept"]), ..Default::default() },
        pb::ForgetLeadsRequest {
            lead_ids: (0..5000).map(|n| format!("l{n}")).chain(["kept".to_owned()]).collect(),
            actor: "dpo".into(),
            ..Default::default()
        },
    ];
    for request in bad {
        let e = profiles.forget_leads(request.clone()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{:?}", request.lead_ids.len());
        assert!(e.message().len() < 2000, "a bounded message: {}", e.message().len());
    }
    let kept = profiles.export_lead(pb::ExportLeadRequest { lead_id: "kept".into(), ..Default::default() }).await;
    assert!(kept.is_ok(), "nothing was erased");
    app.stop().await;
}

/// `leadscore bench` erases the leads it wrote when it ends: the funnel,
/// cohort, campaign and account figures are what they were before.
#[tokio::test]
async fn bench_leaves_no_leads_behind() {
    use clap::Parser as _;
    // A clock that stands still (the figures carry an as-of time); the
    // bench's signals are sent at the wall-clock time.
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let app = TestApp::spawn_with_clock(settings(None), ManualClock::at(wall)).await;
    app.client().await.upsert_lead(lead("l1", &[("industry", "software")], wall)).await.unwrap();
    let before = figures(&app).await;
    assert!(
        before.iter().any(|f| f.starts_with("cohort : ") && f.contains("lead_count: 1,")),
        "today is in the window"
    );
    let addr = format!("http://127.0.0.1:{}", app.port);
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        bench: leadscore::bench::BenchArgs,
    }
    let args = Args::parse_from([
        "bench",
        "--addr",
        &addr,
        "--scenario",
        "mixed",
        "--leads",
        "300",
        "--calls",
        "400",
        "--warmup",
        "0",
    ]);
    let report = leadscore::bench::run(args.bench).await.unwrap();
    assert!(report.ok > 0 && report.cleanup_error.is_none(), "{report:?}");
    assert_eq!(report.erased, Some(300), "the population, loaded for the score calls");
    assert_eq!(figures(&app).await, before);
    let mut leads = app.client().await;
    let gone = leads.score_lead(pb::ScoreLeadRequest { lead_id: "bench-7".into(), ..Default::default() }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    app.stop().await;
}
