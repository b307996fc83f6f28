//! `GetCampaignReport` over a large population (bench/campaigns.sh).
//!
//!   campaign_report ADDR [LEADS] [QUERIES] [REDIS_URL]
//!
//! Loads LEADS leads (default 1,000,000) through `RecordSignals`, 1000
//! signals per call, each lead with three signals from campaigns drawn from
//! 100 (over 10 sources and 5 channels) that occurred within the last 30
//! days, and 90 days of spend for every campaign through `RecordSpend`;
//! then times QUERIES calls (default 100) of the report over the last 30
//! days under each attribution model, by campaign, by source and by
//! channel, one after another. With REDIS_URL, reads 1000 lead records
//! back and prints what their attribution journey takes.

use std::time::{SystemTime, UNIX_EPOCH};

use leadscore::api::pb;
use leadscore::api::pb::profiles_client::ProfilesClient;

#[path = "population/mod.rs"]
mod population;

const CAMPAIGNS: u64 = 100;
const SOURCES: u64 = 10;
const CHANNELS: u64 = 5;
const DAY: i64 = 86_400;
/// Signals (touches) per lead.
const TOUCHES: usize = 3;

fn campaign(c: u64) -> (String, String, String) {
    (format!("campaign-{c:03}"), format!("source-{}", c % SOURCES), format!("channel-{}", c % CHANNELS))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let queries: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(100).max(1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let today = now.div_euclid(DAY);

    population::load(&addr, n * TOUCHES, |i| {
        let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let (campaign, source, channel) = campaign((h >> 11) % CAMPAIGNS);
        pb::Signal {
            event_id: format!("campaign-bench-{i}"),
            lead_id: format!("campaign-bench-lead-{}", i / TOUCHES),
            r#type: "page_view".into(),
            occurred_at: Some(pbjson_types::Timestamp {
                seconds: now - ((h >> 20) % (30 * DAY as u64)) as i64,
                nanos: 0,
            }),
            properties: [("campaign", campaign), ("source", source), ("channel", channel)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ..Default::default()
        }
    })
    .await?;

    if let Some(url) = args.next() {
        journey_size(&url).await?;
    }
    let mut profiles = ProfilesClient::connect(addr).await?;
    let date = |day: i64| chrono::DateTime::from_timestamp(day * DAY, 0).map(|t| t.date_naive().to_string());
    let spend: Vec<pb::SpendEntry> = (0..CAMPAIGNS)
        .flat_map(|c| (today - 89..=today).map(move |d| (c, d)))
        .map(|(c, d)| {
            let (campaign, source, channel) = campaign(c);
            pb::SpendEntry {
                campaign,
                source,
                channel,
                day: date(d).unwrap_or_default(),
                amount: format!("{}.{:02}", 50 + c, d % 100),
                currency: String::new(),
            }
        })
        .collect();
    for chunk in spend.chunks(1000) {
        profiles.record_spend(pb::RecordSpendRequest { spend: chunk.to_vec() }).await?;
    }
    println!("recorded {} campaign days of spend", spend.len());

    let at = |day: i64| pbjson_types::Timestamp { seconds: day * DAY, nanos: 0 };
    let models = [
        pb::AttributionModel::FirstTouch,
        pb::AttributionModel::LastTouch,
        pb::AttributionModel::Linear,
        pb::AttributionModel::TimeDecay,
        pb::AttributionModel::PositionBased,
    ];
    let groupings = [
        ("campaign", pb::FunnelGroupBy::Campaign),
        ("source", pb::FunnelGroupBy::Source),
        ("channel", pb::FunnelGroupBy::Channel),
    ];
    for (model, (name, group_by)) in models.into_iter().flat_map(|m| groupings.map(|g| (m, g))) {
        let request = pb::GetCampaignReportRequest {
            from: Some(at(today - 29)),
            to: Some(at(today + 1)),
            group_by: group_by.into(),
            model: model.into(),
        };
        let mut latencies = population::Latencies::default();
        let mut answer = None;
        for _ in 0..queries {
            answer = Some(latencies.time(profiles.get_campaign_report(request)).await?.into_inner());
        }
        let answer = answer.unwrap_or_default();
        let total = answer.total.unwrap_or_default();
        println!(
            "GetCampaignReport {} by {name}, 30 days, {} rows, {} leads, spend {:.2} ({} calls): {latencies}",
            model.as_str_name().trim_start_matches("ATTRIBUTION_MODEL_").to_lowercase(),
            answer.rows.len(),
            total.leads,
            total.spend,
            latencies.calls()
        );
    }
    Ok(())
}

/// What 1000 lead records take in Redis, and their attribution journeys
/// within them (each record encoded again without its journey).
async fn journey_size(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    use leadscore::store::redis::record;
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let (mut records, mut memory, mut journeys, mut touches) = (0usize, 0usize, 0usize, 0usize);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    while keys.len() < 1000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("*:lead:campaign-bench-lead-*")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.truncate(1000);
    for key in &keys {
        let value: Vec<u8> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        let usage: usize = redis::cmd("MEMORY").arg("USAGE").arg(key).query_async(&mut conn).await?;
        let Some((version, bytes)) = record::split_version(&value) else { continue };
        let id = leadscore::domain::LeadId::parse(key.rsplit(":lead:").next().unwrap_or_default())?;
        let mut state = record::decode(&id, version, bytes)?;
        let whole = record::encode(&state).len();
        touches += state.journey.touches.len();
        state.journey = Default::default();
        journeys += whole - record::encode(&state).len();
        records += whole;
        memory += usage;
    }
    let n = keys.len().max(1);
    println!(
        "lead records ({n} read): mean {} B encoded, {} B in Redis (MEMORY USAGE); the attribution journey \
         ({:.1} touches, stages reached) {} B of it",
        records / n,
        memory / n,
        touches as f64 / n as f64,
        journeys / n
    );
    Ok(())
}
