//! The audit trail: who changed what by hand, read back with a cursor, with
//! no personal values in it — on the embedded store and on Redis.

use std::collections::HashMap;
use std::io::Write;

use leadscore::api::pb;
use leadscore::api::pb::qualification_client::QualificationClient;

use crate::helpers::{RedisServer, TestApp, now_millis, record, settings, signal};

const TOKENS: &str = "crm qualify,ingest,admin crm-token-000000000001\n";

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", "Bearer crm-token-000000000001".parse().unwrap());
    request
}

async fn trail_tells_who_changed_what(redis: Option<&RedisServer>) {
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    tokens.write_all(TOKENS.as_bytes()).unwrap();
    let mut s = settings(redis.map(|r| r.url()));
    s.auth_tokens_file = Some(tokens.path().to_path_buf());
    let app = TestApp::spawn(s).await;
    let mut leads = pb::lead_scoring_client::LeadScoringClient::new(app.channel().await);
    let attributes: HashMap<String, String> =
        [("seniority".into(), "vp".into()), ("email".into(), "ada@example.com".into())].into();
    let lead = pb::Lead { lead_id: "audit-1".into(), attributes, ..Default::default() };
    leads.upsert_lead(with_token(pb::UpsertLeadRequest { lead: Some(lead.clone()) })).await.unwrap();
    // The same again changes nothing: not in the trail.
    leads.upsert_lead(with_token(pb::UpsertLeadRequest { lead: Some(lead.clone()) })).await.unwrap();
    let mut changed = lead.clone();
    changed.attributes.insert("email".into(), "ada@example.org".into());
    leads.upsert_lead(with_token(pb::UpsertLeadRequest { lead: Some(changed) })).await.unwrap();
    let now = now_millis();
    let signals = (0..4).map(|i| signal(&format!("a-{i}"), "audit-1", "content_download", now - i * 60_000)).collect();
    leads.record_signals(with_token(record(signals))).await.unwrap();
    let mut q = QualificationClient::new(app.channel().await);
    q.set_stage(with_token(pb::SetStageRequest {
        lead_id: "audit-1".into(),
        to: pb::Stage::Sal as i32,
        actor: "rep@example.com".into(),
        reason: "called back".into(),
        ..Default::default()
    }))
    .await
    .unwrap();

    // Events are appended on a task of their own, just after each change.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut page = loop {
        let page = q
            .list_audit_events(with_token(pb::ListAuditEventsRequest { after_cursor: String::new(), limit: 0 }))
            .await
            .unwrap()
            .into_inner();
        if page.events.len() >= 4 || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The rule set the service started with, new to the store, comes first.
    let started = page.events.remove(0);
    assert_eq!((started.action.as_str(), started.actor.as_str()), ("rule_set.activated", "start-up"));
    let shape: Vec<(&str, &str, &str, &str)> = page
        .events
        .iter()
        .map(|e| (e.action.as_str(), e.actor.as_str(), e.token.as_str(), e.subject.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("lead.upserted", "", "crm", "audit-1"),
            ("lead.upserted", "", "crm", "audit-1"),
            ("stage.set", "rep@example.com", "crm", "audit-1"),
        ]
    );
    assert_eq!(page.events[0].details["created"], "true");
    assert_eq!(page.events[0].details["attributes_changed"], "email seniority");
    assert_eq!(page.events[1].details["attributes_changed"], "email");
    let set = &page.events[2].details;
    assert_eq!((set["from"].as_str(), set["to"].as_str(), set["reason_given"].as_str()), ("MQL", "SAL", "true"));
    let all = format!("{:?}", page.events);
    assert!(!all.contains("ada@example") && !all.contains("called back"), "no personal values in the trail: {all}");

    // Paged with a cursor: from an event's id, the ones after it.
    let rest = q
        .list_audit_events(with_token(pb::ListAuditEventsRequest { after_cursor: page.events[0].id.clone(), limit: 1 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(
        (rest.events[0].id.as_str(), rest.next_cursor.as_str()),
        (page.events[1].id.as_str(), page.events[1].id.as_str())
    );
    let end = q
        .list_audit_events(with_token(pb::ListAuditEventsRequest { after_cursor: page.next_cursor.clone(), limit: 10 }))
        .await
        .unwrap()
        .into_inner();
    assert!(end.events.is_empty() && end.next_cursor == page.next_cursor);
    let bad = q
        .list_audit_events(with_token(pb::ListAuditEventsRequest { after_cursor: "zz".into(), limit: 10 }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // Reading a whole record is in the trail too.
    let mut profiles = pb::profiles_client::ProfilesClient::new(app.channel().await);
    profiles
        .export_lead(with_token(pb::ExportLeadRequest { lead_id: "audit-1".into(), ..Default::default() }))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let later = q
            .list_audit_events(with_token(pb::ListAuditEventsRequest {
                after_cursor: page.next_cursor.clone(),
                limit: 10,
            }))
            .await
            .unwrap()
            .into_inner();
        if let Some(e) = later.events.first() {
            assert_eq!((e.action.as_str(), e.token.as_str(), e.subject.as_str()), ("lead.exported", "crm", "audit-1"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no lead.exported event");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Admin only.
    let anonymous = q.list_audit_events(pb::ListAuditEventsRequest::default()).await.unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn trail_tells_who_changed_what_in_memory() {
    trail_tells_who_changed_what(None).await;
}

#[tokio::test]
async fn trail_tells_who_changed_what_on_redis() {
    let redis = RedisServer::start();
    trail_tells_who_changed_what(Some(&redis)).await;
}
