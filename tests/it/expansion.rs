//! Customers' expansion deals (`Qualification/RecordExpansion`): counted in
//! the funnel and the campaign report apart from new business, once per
//! deal however often the CRM sends it, on Redis and on the embedded store.

use leadscore::api::pb;
use leadscore::api::pb::profiles_client::ProfilesClient;
use leadscore::api::pb::qualification_client::QualificationClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::helpers::{
    DAY, ManualClock, RedisServer, TestApp, move_through, record, settings, touch, ts, upsert_vps, violated_fields,
};

/// 2026-11-20T12:00:00Z.
const NOW: i64 = 1_763_640_000_000 + 365 * DAY;

fn deal(id: &str, kind: pb::ExpansionKind, status: pb::DealStatus, amount: Option<f64>) -> pb::RecordExpansionRequest {
    pb::RecordExpansionRequest {
        lead_id: "a".into(),
        deal_id: id.into(),
        kind: kind.into(),
        status: status.into(),
        amount,
        actor: "am@crm".into(),
    }
}

async fn funnel(profiles: &mut ProfilesClient<Channel>) -> pb::GetFunnelResponse {
    let day = NOW - NOW.rem_euclid(DAY);
    funnel_of(profiles, day - DAY, day + 7 * DAY).await
}

/// The funnel of whole UTC days from `from` to `to` (midnights), by source.
async fn funnel_of(profiles: &mut ProfilesClient<Channel>, from: i64, to: i64) -> pb::GetFunnelResponse {
    profiles
        .get_funnel(pb::GetFunnelRequest {
            from: Some(ts(from)),
            to: Some(ts(to)),
            group_by: pb::FunnelGroupBy::Source.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// (campaign, new-business revenue, expansion revenue) per row.
async fn campaigns(profiles: &mut ProfilesClient<Channel>, model: pb::AttributionModel) -> Vec<(String, f64, f64)> {
    let day = NOW - NOW.rem_euclid(DAY);
    let r = profiles
        .get_campaign_report(pb::GetCampaignReportRequest {
            from: Some(ts(day - DAY)),
            to: Some(ts(day + 7 * DAY)),
            group_by: pb::FunnelGroupBy::Campaign.into(),
            model: model.into(),
        })
        .await
        .unwrap()
        .into_inner();
    r.rows.iter().chain(r.total.as_ref()).map(|r| (r.value.clone(), r.won_revenue, r.expansion_revenue)).collect()
}

async fn refused(crm: &mut QualificationClient<Channel>, request: pb::RecordExpansionRequest) -> (Code, String) {
    let status = crm.record_expansion(request).await.unwrap_err();
    let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
    (status.code(), reason)
}

async fn expansion(redis: Option<&RedisServer>) {
    let clock = ManualClock::at(NOW);
    let app = TestApp::spawn_with_clock(settings(redis.map(RedisServer::url)), clock.clone()).await;
    let mut leads = app.client().await;
    let mut profiles = ProfilesClient::new(app.channel().await);
    let mut crm = QualificationClient::new(app.channel().await);
    use pb::DealStatus::{Lost, Open, Won};
    use pb::ExpansionKind::{CrossSell, Upsell};

    // a came from q4 (google) and bought for 12,000; b is an MQL.
    upsert_vps(&mut leads, &["a", "b"]).await;
    for id in ["a", "b"] {
        let burst = (0..3).map(|k| touch(&format!("{id}{k}"), id, "webinar_attended", NOW - DAY, "q4", "google"));
        leads.record_signals(record(burst.collect())).await.unwrap();
    }
    leads.record_signals(record(vec![touch("a-demo", "a", "demo_requested", NOW, "q4", "google")])).await.unwrap();
    move_through(&mut crm, "a", &[(pb::Stage::Opportunity, None), (pb::Stage::Customer, Some(12_000.0))]).await;

    // A day on, the customer clicks an upsell mail, and account management
    // wins an upsell, loses a cross-sell and has one open.
    clock.advance(DAY);
    let click = touch("a-mail", "a", "email_click", NOW + DAY, "upsell-mail", "newsletter");
    leads.record_signals(record(vec![click])).await.unwrap();
    let opened = crm.record_expansion(deal("opp-1", Upsell, Open, Some(2_500.0))).await.unwrap().into_inner();
    assert!(opened.changed);
    let d = opened.deal.unwrap();
    assert_eq!((d.deal_id.as_str(), d.status(), d.amount, d.closed_at), ("opp-1", Open, 2_500.0, None));
    let won = crm.record_expansion(deal("opp-1", Upsell, Won, Some(3_000.0))).await.unwrap().into_inner();
    assert!(won.changed);
    assert_eq!((won.deal.as_ref().unwrap().status(), won.deal.as_ref().unwrap().amount), (Won, 3_000.0));
    assert!(won.deal.unwrap().closed_at.is_some());
    crm.record_expansion(deal("opp-2", CrossSell, Lost, Some(500.0))).await.unwrap();
    crm.record_expansion(deal("opp-3", Upsell, Open, Some(800.0))).await.unwrap();
    let repriced = crm.record_expansion(deal("opp-3", Upsell, Open, Some(1_000.0))).await.unwrap().into_inner();
    assert!(repriced.changed);

    let expected = pb::Funnel {
        expansion: vec![
            pb::ExpansionFunnel {
                kind: Upsell.into(),
                opened: 2,
                // opp-1 won for 3,000 (opened at 2,500), opp-3 repriced to 1,000.
                pipeline: 4_000.0,
                won: 1,
                revenue: 3_000.0,
                lost: 0,
            },
            pb::ExpansionFunnel { kind: CrossSell.into(), opened: 1, pipeline: 500.0, won: 0, revenue: 0.0, lost: 1 },
        ],
        expansion_revenue: 3_000.0,
        ..Default::default()
    };
    let check = |f: &pb::GetFunnelResponse| {
        let total = f.total.clone().unwrap();
        assert_eq!((&total.expansion, total.expansion_revenue), (&expected.expansion, 3_000.0));
        assert_eq!((total.won_deals, total.won_revenue), (1, 12_000.0), "new business apart");
        let google = f.groups.iter().find(|g| g.value == "google").unwrap().funnel.clone().unwrap();
        assert_eq!(google.expansion_revenue, 3_000.0, "under the customer's first touch");
    };
    let before = funnel(&mut profiles).await;
    check(&before);

    // Won revenue is shared among the touches before the win: q4 twice
    // (two days), upsell-mail once.
    let s = |v: &str| v.to_owned();
    assert_eq!(
        campaigns(&mut profiles, pb::AttributionModel::FirstTouch).await,
        [(s("q4"), 12_000.0, 3_000.0), (s(""), 12_000.0, 3_000.0)]
    );
    assert_eq!(
        campaigns(&mut profiles, pb::AttributionModel::LastTouch).await,
        [(s("q4"), 12_000.0, 0.0), (s("upsell-mail"), 0.0, 3_000.0), (s(""), 12_000.0, 3_000.0)]
    );
    assert_eq!(
        campaigns(&mut profiles, pb::AttributionModel::Linear).await,
        [(s("q4"), 12_000.0, 2_000.0), (s("upsell-mail"), 0.0, 1_000.0), (s(""), 12_000.0, 3_000.0)]
    );

    // Sent again (at-least-once delivery): nothing counts twice.
    for again in [
        deal("opp-1", Upsell, Won, None),
        deal("opp-1", Upsell, Won, Some(3_000.0)),
        deal("opp-2", CrossSell, Lost, None),
    ] {
        let answer = crm.record_expansion(again).await.unwrap().into_inner();
        assert!(!answer.changed);
    }
    // Refused, writing nothing: a closed deal sent otherwise, another kind,
    // a new deal of a lead that is not a customer, a lead never seen.
    assert_eq!(
        refused(&mut crm, deal("opp-1", Upsell, Lost, None)).await,
        (Code::FailedPrecondition, s("DEAL_CLOSED"))
    );
    assert_eq!(
        refused(&mut crm, deal("opp-1", Upsell, Won, Some(9.0))).await,
        (Code::FailedPrecondition, s("DEAL_CLOSED"))
    );
    assert_eq!(
        refused(&mut crm, deal("opp-3", CrossSell, Won, None)).await,
        (Code::FailedPrecondition, s("DEAL_KIND_CHANGED"))
    );
    let b = pb::RecordExpansionRequest { lead_id: "b".into(), ..deal("opp-9", Upsell, Open, Some(1.0)) };
    assert_eq!(refused(&mut crm, b).await, (Code::FailedPrecondition, s("NOT_A_CUSTOMER")));
    let nobody = pb::RecordExpansionRequest { lead_id: "nobody".into(), ..deal("opp-9", Upsell, Open, None) };
    assert_eq!(refused(&mut crm, nobody).await.0, Code::NotFound);
    let bad = crm
        .record_expansion(pb::RecordExpansionRequest {
            lead_id: "a".into(),
            deal_id: "x\u{7}".into(),
            kind: 7,
            status: 0,
            amount: Some(f64::NAN),
            actor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["deal_id", "kind", "status", "amount", "actor"]);
    // A first win needs its amount; the opening retried after the close
    // changes nothing.
    let unpriced = deal("opp-4", CrossSell, Won, None);
    assert_eq!(refused(&mut crm, unpriced).await, (Code::FailedPrecondition, s("AMOUNT_REQUIRED")));
    let late = crm.record_expansion(deal("opp-1", Upsell, Open, Some(2_500.0))).await.unwrap().into_inner();
    assert!(!late.changed);
    assert_eq!(late.deal.unwrap().status(), Won);
    let after = funnel(&mut profiles).await;
    check(&after);
    assert_eq!(after, before);

    // The next day, the open upsell is won at its amount: that day's funnel
    // shows the win, though the deal opened before it.
    clock.advance(DAY);
    crm.record_expansion(deal("opp-3", Upsell, Won, None)).await.unwrap();
    let day = NOW + 2 * DAY - (NOW + 2 * DAY).rem_euclid(DAY);
    let today = funnel_of(&mut profiles, day, day + DAY).await.total.unwrap();
    assert_eq!(
        today.expansion,
        [pb::ExpansionFunnel { kind: Upsell.into(), opened: 0, pipeline: 0.0, won: 1, revenue: 1_000.0, lost: 0 }]
    );
    assert_eq!(today.expansion_revenue, 1_000.0);
    app.stop().await;
}

#[tokio::test]
async fn expansion_on_redis() {
    let redis = RedisServer::start();
    expansion(Some(&redis)).await;
}

#[tokio::test]
async fn expansion_on_the_embedded_store() {
    expansion(None).await;
}
