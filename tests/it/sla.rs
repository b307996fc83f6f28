//! The sales follow-up agreement (`[sla]`): hand-overs on the desk,
//! decisions in time and late, breaches as triggers and in the funnel, on
//! Redis and on the embedded store.

use std::collections::HashMap;

use leadscore::api::pb;
use leadscore::api::pb::nurture_client::NurtureClient;
use leadscore::api::pb::profiles_client::ProfilesClient;
use leadscore::api::pb::qualification_client::QualificationClient;

use crate::helpers::{DAY, ManualClock, RedisServer, TestApp, drain, metric_value, record, settings, signal, ts};

/// Friday 2026-11-20, 12:00 UTC (noon in London).
const NOW: i64 = 1_763_640_000_000 + 365 * DAY;
const HOUR: i64 = 3_600_000;

/// Four business hours in London (the default rules' escalation fires
/// when they pass).
const AGREEMENT: &str = r#"
[sla]
within = "4h"

[sla.business_hours]
zone = "Europe/London"
days = ["mon", "tue", "wed", "thu", "fri"]
open = "09:00"
close = "17:00"
holidays = ["2026-12-25"]
"#;

async fn app(redis: Option<&RedisServer>, clock: &std::sync::Arc<ManualClock>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    let shipped = "\n[sla]\nwithin = \"24h\"\nowner_attribute = \"owner\"\n";
    assert!(leadscore::DEFAULT_RULES.contains(shipped));
    std::fs::write(&path, leadscore::DEFAULT_RULES.replace(shipped, AGREEMENT)).unwrap();
    let mut s = settings(redis.map(|r| r.url()));
    s.rules = Some(path);
    s.inactivity_sweep_interval = leadscore::config::Millis(50);
    s.feed_poll_interval = leadscore::config::Millis(50);
    (TestApp::spawn_with_clock(s, clock.clone()).await, dir)
}

fn millis(d: &Option<pbjson_types::Duration>) -> i64 {
    d.as_ref().map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000).unwrap()
}

fn at(t: &Option<pbjson_types::Timestamp>) -> i64 {
    t.as_ref().map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000).unwrap()
}

async fn desk(profiles: &mut ProfilesClient<tonic::transport::Channel>) -> pb::ListHandoversResponse {
    profiles.list_handovers(pb::ListHandoversRequest { limit: 0 }).await.unwrap().into_inner()
}

async fn decide(crm: &mut QualificationClient<tonic::transport::Channel>, lead: &str, to: pb::Stage) {
    crm.set_stage(pb::SetStageRequest {
        lead_id: lead.into(),
        to: to.into(),
        actor: "rep@crm".into(),
        reason: "follow-up".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

async fn follow_up(redis: Option<&RedisServer>) {
    let clock = ManualClock::at(NOW);
    let (app, _dir) = app(redis, &clock).await;
    let channel = app.channel().await;
    let mut client = app.client().await;
    let mut profiles = ProfilesClient::new(channel.clone());
    let mut crm = QualificationClient::new(channel.clone());
    let mut stream = NurtureClient::new(channel)
        .stream_triggers(pb::StreamTriggersRequest {
            group: "automation".into(),
            consumer: "w".into(),
            max_in_flight: 0,
        })
        .await
        .unwrap()
        .into_inner();

    // Three VPs become MQLs at noon: handed over, due at 16:00.
    for (lead, owner) in [("prompt", "ann@crm"), ("slow", "bob@crm"), ("forgotten", "")] {
        let mut attributes = HashMap::from([("seniority".to_owned(), "vp".to_owned())]);
        if !owner.is_empty() {
            attributes.insert("owner".into(), owner.into());
        }
        let lead_proto = pb::Lead { lead_id: lead.into(), attributes, ..Default::default() };
        client.upsert_lead(pb::UpsertLeadRequest { lead: Some(lead_proto) }).await.unwrap();
        let mut signals = vec![
            signal(&format!("{lead}-1"), lead, "content_download", NOW),
            signal(&format!("{lead}-2"), lead, "content_download", NOW),
            signal(&format!("{lead}-3"), lead, "webinar_attended", NOW),
        ];
        for s in &mut signals {
            s.properties = HashMap::from([("source".to_owned(), "webinar".to_owned())]);
        }
        client.record_signals(record(signals)).await.unwrap();
    }
    let due = NOW + 4 * HOUR;
    let now = desk(&mut profiles).await;
    assert_eq!(now.waiting, 3);
    assert_eq!(now.agreement, "within 4h of business hours: Europe/London, mon tue wed thu fri 09:00-17:00, 1 holiday");
    let leads: Vec<_> = now.handovers.iter().map(|h| h.lead_id.as_str()).collect();
    assert_eq!(leads, ["forgotten", "prompt", "slow"], "same hand-over time: by id");
    let slow = &now.handovers[2];
    assert_eq!((at(&slow.handed_over_at), at(&slow.due), slow.overdue), (NOW, due, false));
    assert_eq!((slow.owner.as_str(), slow.source.as_str(), millis(&slow.age)), ("bob@crm", "webinar", 0));
    let mqls = drain(&mut stream).await;
    assert_eq!(mqls.len(), 3, "the default rules alert sales of each new MQL: {mqls:?}");
    let mut nurture = NurtureClient::new(app.channel().await);
    let trigger_ids = mqls.into_iter().map(|t| t.trigger_id).collect();
    nurture.ack_triggers(pb::AckTriggersRequest { group: "automation".into(), trigger_ids }).await.unwrap();

    // Ann accepts hers after an hour: in time.
    clock.advance(HOUR);
    decide(&mut crm, "prompt", pb::Stage::Sal).await;
    assert_eq!(desk(&mut profiles).await.waiting, 2);

    // At 16:00 the others are due, not late: nothing fires.
    clock.advance(3 * HOUR);
    assert!(drain(&mut stream).await.is_empty());

    // Thirty seconds later both breach, once, with owner and lateness.
    clock.advance(30_000);
    let mut breaches = drain(&mut stream).await;
    breaches.sort_by(|a, b| a.lead_id.cmp(&b.lead_id));
    let got: Vec<_> = breaches
        .iter()
        .map(|t| (t.definition_id.as_str(), t.program.as_str(), t.lead_id.as_str(), t.owner.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("sla_escalation", "sales-escalation", "forgotten", ""),
            ("sla_escalation", "sales-escalation", "slow", "bob@crm")
        ]
    );
    for t in &breaches {
        assert_eq!((at(&t.handed_over_at), at(&t.due), millis(&t.late_by)), (NOW, due, 30_000));
        assert_eq!(t.stage(), pb::Stage::Mql);
        assert!(t.reason.contains("no sales decision by 2026-11-20T16:00:00Z"), "{}", t.reason);
    }
    clock.advance(HOUR);
    assert!(drain(&mut stream).await.is_empty(), "a breach fires once");

    // Still on the desk, overdue; the evening does not count.
    let evening = desk(&mut profiles).await;
    assert_eq!(evening.waiting, 2);
    assert!(evening.handovers.iter().all(|h| h.overdue && millis(&h.age) == 5 * HOUR));
    assert!(evening.handovers.iter().all(|h| millis(&h.waiting) == 5 * HOUR + 30_000));

    // Bob recycles his on Monday: late.
    clock.advance(3 * DAY);
    decide(&mut crm, "slow", pb::Stage::Recycled).await;
    let day = NOW - NOW.rem_euclid(DAY);
    let funnel = profiles
        .get_funnel(pb::GetFunnelRequest {
            from: Some(ts(day)),
            to: Some(ts(day + 4 * DAY)),
            group_by: pb::FunnelGroupBy::Source.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let total = funnel.total.unwrap();
    assert_eq!((total.handovers_on_time, total.handovers_late, total.sla_breaches), (1, 1, 2));
    assert_eq!(total.sla_attainment, Some(0.5));
    let median = millis(&total.speed_to_lead_median);
    assert!((HOUR * 95 / 100..=HOUR * 105 / 100).contains(&median), "{median}");
    let p90 = millis(&total.speed_to_lead_p90);
    let waited = 3 * DAY + 5 * HOUR + 30_000;
    assert!((waited * 95 / 100..=waited * 105 / 100).contains(&p90), "{p90}");
    let webinar = &funnel.groups.iter().find(|g| g.value == "webinar").unwrap().funnel.as_ref().unwrap();
    assert_eq!((webinar.handovers_on_time, webinar.handovers_late, webinar.sla_breaches), (1, 1, 2));
    // Breaches count on the deadline's day: none the day after.
    let one_day = |from: i64| pb::GetFunnelRequest { from: Some(ts(from)), to: Some(ts(from + DAY)), group_by: 0 };
    let next_day = profiles.get_funnel(one_day(day + DAY)).await.unwrap().into_inner().total.unwrap();
    assert_eq!(next_day.sla_breaches, 0);
    assert_eq!(next_day.sla_attainment, None);

    let left = desk(&mut profiles).await;
    assert_eq!(left.handovers.iter().map(|h| h.lead_id.as_str()).collect::<Vec<_>>(), ["forgotten"]);
    let metrics = app.scrape_metrics().await;
    assert_eq!(metric_value(&metrics, "leadscore_sla_breaches_total"), 2.0);
    app.stop().await;
}

#[tokio::test]
async fn the_follow_up_agreement_on_redis() {
    let redis = RedisServer::start();
    follow_up(Some(&redis)).await;
}

#[tokio::test]
async fn the_follow_up_agreement_on_the_embedded_store() {
    follow_up(None).await;
}

#[tokio::test]
async fn the_desk_refuses_a_limit_too_large() {
    let app = TestApp::spawn(settings(None)).await;
    let mut profiles = ProfilesClient::new(app.channel().await);
    let err = profiles.list_handovers(pb::ListHandoversRequest { limit: 501 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(crate::helpers::violated_fields(&err), ["limit"]);
    let empty = desk(&mut profiles).await;
    assert_eq!((empty.waiting, empty.handovers.len(), empty.agreement.as_str()), (0, 0, "within 24h"));
    app.stop().await;
}
