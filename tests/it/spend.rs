//! Marketing spend and the campaign report, through `Profiles` and the
//! command line, on Redis and on the embedded store.

use std::process::Command;

use leadscore::api::pb;
use leadscore::api::pb::profiles_client::ProfilesClient;
use leadscore::api::pb::qualification_client::QualificationClient;

use crate::helpers::{
    DAY, ManualClock, RedisServer, TestApp, move_through, record, settings, touch, ts, upsert_vps, violated_fields,
};

/// 2026-11-20T12:00:00Z.
const NOW: i64 = 1_763_640_000_000 + 365 * DAY;
const TODAY: &str = "2026-11-20";
const TOMORROW: &str = "2026-11-21";

fn spend(campaign: &str, source: &str, day: &str, amount: &str) -> pb::SpendEntry {
    pb::SpendEntry {
        campaign: campaign.into(),
        source: source.into(),
        channel: "paid".into(),
        day: day.into(),
        amount: amount.into(),
        currency: String::new(),
    }
}

async fn report(
    client: &mut ProfilesClient<tonic::transport::Channel>,
    group_by: pb::FunnelGroupBy,
) -> pb::GetCampaignReportResponse {
    let day = NOW - NOW.rem_euclid(DAY);
    client
        .get_campaign_report(pb::GetCampaignReportRequest {
            from: Some(ts(day - DAY)),
            to: Some(ts(day + 7 * DAY)),
            group_by: group_by.into(),
            model: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// (value, spend, leads, mqls, sqls, customers, revenue, per lead, per MQL,
/// per customer, ROI) of every row, then the total.
type Row = (String, f64, f64, f64, f64, f64, f64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

fn rows(r: &pb::GetCampaignReportResponse) -> Vec<Row> {
    r.rows
        .iter()
        .chain(r.total.as_ref())
        .map(|r| {
            (
                r.value.clone(),
                r.spend,
                r.leads,
                r.mqls,
                r.sqls,
                r.customers,
                r.won_revenue,
                r.cost_per_lead,
                r.cost_per_mql,
                r.cost_per_customer,
                r.roi,
            )
        })
        .collect()
}

async fn scenario(redis: Option<&RedisServer>) {
    let clock = ManualClock::at(NOW);
    let app = TestApp::spawn_with_clock(settings(redis.map(RedisServer::url)), clock.clone()).await;
    let mut leads = app.client().await;
    let mut profiles = ProfilesClient::new(app.channel().await);
    let mut crm = QualificationClient::new(app.channel().await);
    // a and b came from q4 (google): both MQLs; a raised its hand, became
    // an opportunity and bought for 12,000. c came from brand (bing) and
    // stays a lead; d came with no campaign.
    upsert_vps(&mut leads, &["a", "b", "c", "d"]).await;
    let burst = |lead: &str| {
        (0..3).map(|k| touch(&format!("{lead}{k}"), lead, "webinar_attended", NOW - DAY, "q4", "google")).collect()
    };
    leads.record_signals(record(burst("a"))).await.unwrap();
    leads.record_signals(record(burst("b"))).await.unwrap();
    leads.record_signals(record(vec![touch("c0", "c", "page_view", NOW, "brand", "bing")])).await.unwrap();
    leads.record_signals(record(vec![touch("d0", "d", "page_view", NOW, "", "")])).await.unwrap();
    leads.record_signals(record(vec![touch("a-demo", "a", "demo_requested", NOW, "q4", "google")])).await.unwrap();
    move_through(&mut crm, "a", &[(pb::Stage::Opportunity, None), (pb::Stage::Customer, Some(12_000.0))]).await;

    // Spend, then a correction of one day (sent again: replaced).
    let recorded = profiles
        .record_spend(pb::RecordSpendRequest {
            spend: vec![
                spend("q4", "google", TODAY, "1000"),
                spend("q4", "google", TOMORROW, "500.50"),
                spend("brand", "bing", TODAY, "99.98"),
                spend("fall-promo", "google", TODAY, "250"),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recorded.recorded, 4);
    profiles
        .record_spend(pb::RecordSpendRequest { spend: vec![spend("q4", "google", TOMORROW, "600.50")] })
        .await
        .unwrap();

    let by_campaign = report(&mut profiles, pb::FunnelGroupBy::Unspecified).await;
    assert_eq!(by_campaign.currency, "USD");
    assert_eq!(by_campaign.model(), pb::AttributionModel::FirstTouch);
    let q4_roi = ((12_000.0 - 1_600.5) / 1_600.5 * 10_000.0_f64).round() / 10_000.0;
    let s = |v: &str| v.to_owned();
    assert_eq!(
        rows(&by_campaign),
        [
            (s("q4"), 1_600.5, 2.0, 2.0, 1.0, 1.0, 12_000.0, Some(800.25), Some(800.25), Some(1_600.5), Some(q4_roi)),
            (s("fall-promo"), 250.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None, Some(-1.0)),
            (s("brand"), 99.98, 1.0, 0.0, 0.0, 0.0, 0.0, Some(99.98), None, None, Some(-1.0)),
            (s("(none)"), 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, None, None, None, None),
            (s(""), 1_950.48, 4.0, 2.0, 1.0, 1.0, 12_000.0, Some(487.62), Some(975.24), Some(1_950.48), Some(5.1523)),
        ]
    );
    // By source: google's spend is q4's and fall-promo's.
    let by_source = report(&mut profiles, pb::FunnelGroupBy::Source).await;
    let google = by_source.rows.iter().find(|r| r.value == "google").unwrap();
    assert_eq!((google.spend, google.leads, google.cost_per_lead), (1_850.5, 2.0, Some(925.25)));
    assert_eq!(by_source.total.unwrap().spend, 1_950.48);

    // Bad input: every problem named, nothing written.
    let mut other_currency = spend("q4", "google", "2026-11-19", "10");
    other_currency.currency = "EUR".into();
    let bad = profiles
        .record_spend(pb::RecordSpendRequest {
            spend: vec![
                spend("", "google", TODAY, "1"),
                spend("q4", "google", "2026-13-01", "1"),
                spend("q4", "google", "2026-11-18", "-1"),
                other_currency,
                spend("q5\u{7}", "google", TODAY, "1"),
                spend("new", "google", TODAY, "1"),
                spend("new", "google", TODAY, "2"),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        violated_fields(&bad),
        [
            "spend[0].campaign",
            "spend[1].day",
            "spend[2].amount",
            "spend[3].currency",
            "spend[4].campaign",
            "spend[6].day"
        ]
    );
    // The currency's violation says which one the deployment records.
    assert!(String::from_utf8_lossy(bad.details()).contains("records amounts in USD"), "{bad:?}");
    assert_eq!(rows(&report(&mut profiles, pb::FunnelGroupBy::Unspecified).await), rows(&by_campaign));
    let empty = profiles.record_spend(pb::RecordSpendRequest { spend: vec![] }).await.unwrap_err();
    assert_eq!(violated_fields(&empty), ["spend"]);
    let day = NOW - NOW.rem_euclid(DAY);
    let bad = profiles
        .get_campaign_report(pb::GetCampaignReportRequest {
            from: Some(ts(day + 1)),
            to: Some(ts(day + DAY)),
            group_by: 0,
            model: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["from", "model"]);

    // The command line: a CSV export sent with `spend import`, read back
    // with `report campaigns`.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("spend.csv");
    std::fs::write(&csv, "Date,Campaign,Source,Channel,Cost\n2026-11-19,brand,bing,paid,\"1,000\"\n").unwrap();
    let addr = format!("http://127.0.0.1:{}", app.port);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_leadscore")).args(args).env_remove("LEADSCORE_TOKEN").output().unwrap()
    };
    let refused = run(&["spend", "import", csv.to_str().unwrap(), "--addr", &addr]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("line 2") && stderr.contains("1,000"), "{stderr}");
    std::fs::write(
        &csv,
        "Date,Campaign,Source,Channel,Cost\n2026-11-19,brand,bing,paid,100.01\n2026-11-20,brand,bing,paid,99.99\n",
    )
    .unwrap();
    let imported = run(&["spend", "import", csv.to_str().unwrap(), "--addr", &addr]);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    assert!(String::from_utf8_lossy(&imported.stdout).contains("recorded 2 spend entries"));
    let table = run(&["report", "campaigns", "--addr", &addr, "--from", "2026-11-19", "--to", "2026-11-28"]);
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let text = String::from_utf8_lossy(&table.stdout);
    let brand = text.lines().find(|l| l.starts_with("brand")).unwrap_or_else(|| panic!("{text}"));
    // 100.01 + 99.99 (today's 99.98 replaced): 200.00 for one lead.
    assert!(brand.contains("200.00") && brand.split_whitespace().filter(|w| *w == "200.00").count() >= 2, "{brand}");
    assert!(text.lines().any(|l| l.starts_with("q4") && l.contains('█')), "{text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_campaign_report_gives_spend_and_cost_per_stage_on_redis() {
    let redis = RedisServer::start();
    scenario(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_gives_the_same_campaign_report() {
    scenario(None).await;
}

/// (value, leads, MQLs, SQLs, customers, won revenue, cost per MQL) of
/// every row, then the total.
type Credited = (String, f64, f64, f64, f64, f64, Option<f64>);

/// One lead touched by three campaigns, 14 and 7 days before it became an
/// MQL and on the day, then a customer: each model shares its credit as it
/// says, every total is the one lead, and the command line shows it.
async fn multi_touch(redis: Option<&RedisServer>) {
    let clock = ManualClock::at(NOW);
    let app = TestApp::spawn_with_clock(settings(redis.map(RedisServer::url)), clock.clone()).await;
    let mut leads = app.client().await;
    let mut profiles = ProfilesClient::new(app.channel().await);
    let mut crm = QualificationClient::new(app.channel().await);
    let attributes = [("seniority", "vp"), ("company_size", "1500")].map(|(k, v)| (k.to_owned(), v.to_owned()));
    // Created by the CRM an hour before its first touch: that touch gets
    // the lead's credit under every model.
    let lead = pb::Lead {
        lead_id: "m".into(),
        attributes: attributes.into(),
        created_at: Some(ts(NOW - 14 * DAY - 3_600_000)),
        ..Default::default()
    };
    leads.upsert_lead(pb::UpsertLeadRequest { lead: Some(lead) }).await.unwrap();
    let burst = (0..3).map(|k| touch(&format!("m-q4-{k}"), "m", "webinar_attended", NOW, "q4", "google"));
    // Sent newest first, and the webinars twice: neither changes the credit.
    let mut signals: Vec<pb::Signal> = burst.collect();
    signals.push(touch("m-fall", "m", "page_view", NOW - 7 * DAY, "fall", "google"));
    leads.record_signals(record(signals.clone())).await.unwrap();
    leads
        .record_signals(record(vec![touch("m-spring", "m", "page_view", NOW - 14 * DAY, "spring", "linkedin")]))
        .await
        .unwrap();
    leads.record_signals(record(signals)).await.unwrap();
    move_through(
        &mut crm,
        "m",
        &[(pb::Stage::Sql, None), (pb::Stage::Opportunity, None), (pb::Stage::Customer, Some(10_000.0))],
    )
    .await;
    let spent = [("spring", "linkedin", 14, "100"), ("fall", "google", 7, "200"), ("q4", "google", 0, "300")];
    let entries = spent
        .iter()
        .map(|(c, source, days_before, amount)| {
            let day = chrono::DateTime::from_timestamp_millis(NOW - days_before * DAY).unwrap().date_naive();
            spend(c, source, &day.to_string(), amount)
        })
        .collect();
    profiles.record_spend(pb::RecordSpendRequest { spend: entries }).await.unwrap();

    let day = NOW - NOW.rem_euclid(DAY);
    let mut report = async |model: pb::AttributionModel| -> Vec<Credited> {
        let r = profiles
            .get_campaign_report(pb::GetCampaignReportRequest {
                from: Some(ts(day - 15 * DAY)),
                to: Some(ts(day + DAY)),
                group_by: 0,
                model: model.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.model(), model);
        let mut rows: Vec<Credited> = r
            .rows
            .iter()
            .map(|r| (r.value.clone(), r.leads, r.mqls, r.sqls, r.customers, r.won_revenue, r.cost_per_mql))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let t = r.total.unwrap();
        rows.push((t.value, t.leads, t.mqls, t.sqls, t.customers, t.won_revenue, t.cost_per_mql));
        rows
    };
    let s = |v: &str| v.to_owned();
    let total = (s(""), 1.0, 1.0, 1.0, 1.0, 10_000.0, Some(600.0));
    use pb::AttributionModel as M;
    assert_eq!(
        report(M::FirstTouch).await,
        [
            (s("fall"), 0.0, 0.0, 0.0, 0.0, 0.0, None),
            (s("q4"), 0.0, 0.0, 0.0, 0.0, 0.0, None),
            (s("spring"), 1.0, 1.0, 1.0, 1.0, 10_000.0, Some(100.0)),
            total.clone()
        ]
    );
    assert_eq!(
        report(M::LastTouch).await,
        [
            (s("fall"), 0.0, 0.0, 0.0, 0.0, 0.0, None),
            (s("q4"), 0.0, 1.0, 1.0, 1.0, 10_000.0, Some(300.0)),
            (s("spring"), 1.0, 0.0, 0.0, 0.0, 0.0, None),
            total.clone()
        ]
    );
    // Thirds: the extra millionth to the earliest touch.
    assert_eq!(
        report(M::Linear).await,
        [
            (s("fall"), 0.0, 0.333333, 0.333333, 0.333333, 3_333.33, Some(600.0)),
            (s("q4"), 0.0, 0.333333, 0.333333, 0.333333, 3_333.33, Some(900.0)),
            (s("spring"), 1.0, 0.333334, 0.333334, 0.333334, 3_333.33, Some(300.0)),
            total.clone()
        ]
    );
    assert_eq!(
        report(M::PositionBased).await,
        [
            (s("fall"), 0.0, 0.2, 0.2, 0.2, 2_000.0, Some(1_000.0)),
            (s("q4"), 0.0, 0.4, 0.4, 0.4, 4_000.0, Some(750.0)),
            (s("spring"), 1.0, 0.4, 0.4, 0.4, 4_000.0, Some(250.0)),
            total.clone()
        ]
    );
    // Ages 14, 7 and 0 days with the default 7-day half-life: weights 1/4,
    // 1/2 and 1 of 7/4.
    assert_eq!(
        report(M::TimeDecay).await,
        [
            (s("fall"), 0.0, 0.285714, 0.285714, 0.285714, 2_857.14, Some(700.0)),
            (s("q4"), 0.0, 0.571429, 0.571429, 0.571429, 5_714.29, Some(525.0)),
            (s("spring"), 1.0, 0.142857, 0.142857, 0.142857, 1_428.57, Some(700.0)),
            total
        ]
    );

    let addr = format!("http://127.0.0.1:{}", app.port);
    let table = Command::new(env!("CARGO_BIN_EXE_leadscore"))
        .args(["report", "campaigns", "--addr", &addr, "--from", "2026-11-01", "--to", TOMORROW, "--model", "linear"])
        .env_remove("LEADSCORE_TOKEN")
        .output()
        .unwrap();
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("by campaign, linear attribution, in USD"), "{text}");
    let chart = text.split("MQLs credited").nth(1).unwrap_or_else(|| panic!("no MQL chart: {text}"));
    assert_eq!(chart.lines().filter(|l| l.contains('█')).count(), 3, "{text}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_touch_credit_is_shared_as_each_model_says_on_redis() {
    let redis = RedisServer::start();
    multi_touch(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_shares_multi_touch_credit_the_same_way() {
    multi_touch(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_kept_in_one_currency_is_not_relabelled_by_another_deployment() {
    let redis = RedisServer::start();
    let mut euros = settings(Some(redis.url()));
    euros.currency = "EUR".into();
    // A service that recorded no spend fixes no currency.
    TestApp::spawn(euros.clone()).await.stop().await;
    let app = TestApp::spawn(settings(Some(redis.url()))).await;
    let mut profiles = ProfilesClient::new(app.channel().await);
    profiles.record_spend(pb::RecordSpendRequest { spend: vec![spend("q4", "google", TODAY, "10")] }).await.unwrap();
    app.stop().await;
    let refused = match leadscore::startup::Application::build(euros).await {
        Ok(_) => panic!("started over spend kept in USD"),
        Err(e) => e.to_string(),
    };
    assert!(refused.contains("in USD") && refused.contains("currency = \"USD\""), "{refused}");
}
