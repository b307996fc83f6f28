//! `GetCohortScoreProfile` over a large population.
//!
//!     cargo run --release --example cohort_profile -- http://127.0.0.1:50051 1000000 50
//!
//! Loads `N` leads (default 1,000,000) through `RecordSignals` — 1000 new
//! leads per call, one signal each, of varied types and ages so the scores
//! spread — unless the service already holds them (pass `0` to skip
//! loading), then asks for this month's cohort profile `Q` times (default
//! 50) and prints the latency percentiles and the answer. With a fourth
//! argument `rescore`, it then follows the rescore of every stored lead (the
//! one a rule reload started, or one `Rescore` starts; polled with
//! `GetRescoreJob` every 100 ms) and prints the leads per second.
//!
//!     cargo run --release --example cohort_profile -- http://127.0.0.1:50051 1000000 200 rescore

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leadscore::api::pb::{self, profiles_client::ProfilesClient, qualification_client::QualificationClient};

#[path = "population/mod.rs"]
mod population;

const TYPES: [&str; 8] = [
    "page_view",
    "email_open",
    "email_click",
    "content_download",
    "pricing_page_view",
    "webinar_attended",
    "demo_requested",
    "careers_page_view",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let queries: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let rescore = args.next().as_deref() == Some("rescore");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;

    population::load(&addr, n, |i| {
        // Deterministic spread: type and age (up to 60 days) per lead.
        let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        pb::Signal {
            event_id: format!("cohort-bench-{i}"),
            lead_id: format!("cohort-bench-lead-{i}"),
            r#type: TYPES[(h >> 7) as usize % TYPES.len()].into(),
            occurred_at: Some(pbjson_types::Timestamp { seconds: now - ((h >> 20) % (60 * 86_400)) as i64, nanos: 0 }),
            ..Default::default()
        }
    })
    .await?;

    let today = chrono::Utc::now().date_naive();
    let first = chrono::Datelike::with_day(&today, 1).unwrap_or(today);
    let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
    let at = |d: chrono::NaiveDate| pbjson_types::Timestamp {
        seconds: d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp()),
        nanos: 0,
    };
    let mut profiles = ProfilesClient::connect(addr.clone()).await?;
    let request = pb::GetCohortScoreProfileRequest {
        created_from: Some(at(first)),
        created_to: Some(at(next)),
        ..Default::default()
    };
    let mut latencies = population::Latencies::default();
    let mut answer = None;
    for _ in 0..queries.max(1) {
        answer = Some(latencies.time(profiles.get_cohort_score_profile(request.clone())).await?.into_inner());
    }
    let answer = answer.unwrap_or_default();
    println!("GetCohortScoreProfile over {} leads ({} calls): {latencies}", answer.lead_count, latencies.calls());
    println!(
        "  p50 {}  p90 {}  p99 {}  min {}  max {}  buckets {}  MQL rate {}",
        answer.p50,
        answer.p90,
        answer.p99,
        answer.min,
        answer.max,
        answer.histogram.len(),
        answer.mql_rate
    );
    if rescore {
        rescore_all(addr).await?;
    }
    Ok(())
}

/// Follows the rescore in force (a reload starts one; `Rescore` returns it,
/// or starts one) to its end, superseding jobs included, and prints how
/// fast it went from the job's own start and finish times.
async fn rescore_all(addr: String) -> Result<(), Box<dyn std::error::Error>> {
    let mut qualification = QualificationClient::connect(addr).await?;
    let mut job_id = qualification.rescore(pb::RescoreRequest {}).await?.into_inner().job_id;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = qualification.get_rescore_job(pb::GetRescoreJobRequest { job_id: job_id.clone() }).await?;
        let status = status.into_inner();
        match status.state() {
            pb::RescoreState::Running => continue,
            pb::RescoreState::Superseded => job_id = status.superseded_by.clone(),
            pb::RescoreState::Done => {
                let seconds =
                    |t: Option<pbjson_types::Timestamp>| t.map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
                let took = seconds(status.finished_at) - seconds(status.started_at);
                println!(
                    "Rescore of {} leads under {}: {took:.1}s ({:.0} leads/s), {} rebuilt from raw history, {} stage changes",
                    status.processed,
                    status.rule_set_version,
                    status.processed as f64 / took.max(1e-9),
                    status.rebuilt,
                    status.stage_changes
                );
                return Ok(());
            }
            state => return Err(format!("rescore ended {state:?}: {}", status.error).into()),
        }
    }
}
