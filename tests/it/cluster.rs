//! The service on a real three-node Redis Cluster: scoring, qualification,
//! nurture triggers and cohort profiles, end to end over gRPC.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use leadscore::api::pb;
use leadscore::api::pb::nurture_client::NurtureClient;
use leadscore::api::pb::profiles_client::ProfilesClient;
use leadscore::api::pb::qualification_client::QualificationClient;

use crate::helpers::{RedisCluster, TestApp, now_millis, record, settings, signal, ts};

#[tokio::test]
async fn scoring_qualification_and_triggers_work_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start() else { return };
    let mut s = settings(Some(cluster.url()));
    s.redis_timeout = leadscore::config::Millis(2_000);
    let app = TestApp::spawn(s).await;
    app.wait_health(tonic_health::pb::health_check_response::ServingStatus::Serving).await;
    let mut scoring = app.client().await;

    // Scoring: one call over leads of many partitions (many slots).
    let now = now_millis();
    let ids: Vec<String> = (0..60).map(|i| format!("c-{i}")).collect();
    let signals = ids.iter().map(|id| signal(&format!("{id}-pv"), id, "page_view", now)).collect();
    let recorded = scoring.record_signals(record(signals)).await.unwrap().into_inner();
    assert_eq!(recorded.scores.len(), 60);
    let mut wanted = ids.clone();
    wanted.push("nobody".into());
    let scores = scoring
        .score_leads(pb::ScoreLeadsRequest { lead_ids: wanted, model: String::new() })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<&str> = scores.scores.iter().map(|s| s.lead_id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>(), "request order kept across nodes");
    assert!(scores.scores.iter().all(|s| s.behavior > 0.0));
    assert_eq!(scores.not_found_lead_ids, ["nobody"]);

    // Qualification and triggers: a fit lead downloads its way to MQL.
    let mut nurture = NurtureClient::new(app.channel().await);
    let mut stream = nurture
        .stream_triggers(pb::StreamTriggersRequest { group: "g".into(), consumer: "w".into(), max_in_flight: 0 })
        .await
        .unwrap()
        .into_inner();
    let attributes: HashMap<String, String> = [("seniority".to_string(), "vp".to_string())].into();
    scoring
        .upsert_lead(pb::UpsertLeadRequest {
            lead: Some(pb::Lead { lead_id: "vip".into(), attributes, ..Default::default() }),
        })
        .await
        .unwrap();
    let downloads = (0..4).map(|i| signal(&format!("vip-{i}"), "vip", "content_download", now - i * 60_000)).collect();
    let response = scoring.record_signals(record(downloads)).await.unwrap().into_inner();
    assert_eq!(response.scores[0].stage(), pb::Stage::Mql);
    let trigger = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a trigger in time")
        .unwrap()
        .unwrap()
        .trigger
        .unwrap();
    assert_eq!((trigger.lead_id.as_str(), trigger.definition_id.as_str()), ("vip", "sales_alert_new_mql"));
    let acked = nurture
        .ack_triggers(pb::AckTriggersRequest { group: "g".into(), trigger_ids: vec![trigger.trigger_id] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.acknowledged, 1);
    let mut qualification = QualificationClient::new(app.channel().await);
    let feed = qualification
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: String::new(), limit: 100 })
        .await
        .unwrap()
        .into_inner();
    assert!(feed.changes.iter().any(|c| c.lead_id == "vip"), "{feed:?}");

    // Cohort profile: aggregates from every partition, on every node.
    let today = Utc.timestamp_millis_opt(now).unwrap();
    let month = Utc.with_ymd_and_hms(today.year(), today.month(), 1, 0, 0, 0).unwrap();
    let next = if today.month() == 12 {
        Utc.with_ymd_and_hms(today.year() + 1, 1, 1, 0, 0, 0).unwrap()
    } else {
        Utc.with_ymd_and_hms(today.year(), today.month() + 1, 1, 0, 0, 0).unwrap()
    };
    let mut profiles = ProfilesClient::new(app.channel().await);
    let this_month = pb::GetCohortScoreProfileRequest {
        created_from: Some(ts(month.timestamp_millis())),
        created_to: Some(ts(next.timestamp_millis())),
        ..Default::default()
    };
    let cohort = profiles.get_cohort_score_profile(this_month.clone()).await.unwrap().into_inner();
    assert_eq!(cohort.lead_count, 61);
    assert!(cluster.keys_per_node().iter().all(|keys| !keys.is_empty()));

    // Erasure: the lead's keys, feed entries and cohort share go, in one
    // script in its slot.
    let receipt = profiles
        .forget_lead(pb::ForgetLeadRequest { lead_id: "vip".into(), actor: "dpo".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(receipt.found && receipt.signals == 4, "{receipt:?}");
    assert!(cluster.keys_per_node().iter().flatten().all(|k| !k.contains("vip")));
    let feed = qualification
        .list_qualification_changes(pb::ListQualificationChangesRequest { after_cursor: String::new(), limit: 100 })
        .await
        .unwrap()
        .into_inner();
    assert!(feed.changes.iter().all(|c| c.lead_id != "vip"), "{feed:?}");
    assert_eq!(feed.changes.iter().filter(|c| c.erased.is_some()).count(), 1);
    let cohort = profiles.get_cohort_score_profile(this_month).await.unwrap().into_inner();
    assert_eq!(cohort.lead_count, 60);
    app.stop().await;
}
