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

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use leadscore::api::pb::{
    self, lead_scoring_client::LeadScoringClient, profiles_client::ProfilesClient,
    qualification_client::QualificationClient,
};

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

    let client = LeadScoringClient::connect(addr.clone()).await?.max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let loaded = futures::stream::iter((0..n).step_by(1000))
        .map(|first| {
            let mut client = client.clone();
            async move {
                let signals = (first..(first + 1000).min(n))
                    .map(|i| {
                        // Deterministic spread: type and age (up to 60 days) per lead.
                        let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        pb::Signal {
                            event_id: format!("cohort-bench-{i}"),
                            lead_id: format!("cohort-bench-lead-{i}"),
                            r#type: TYPES[(h >> 7) as usize % TYPES.len()].into(),
                            occurred_at: Some(prost_types::Timestamp {
                                seconds: now - ((h >> 20) % (60 * 86_400)) as i64,
                                nanos: 0,
                            }),
                            ..Default::default()
                        }
                    })
                    .collect();
                client.record_signals(pb::RecordSignalsRequest { signals }).await.map(|_| ())
            }
        })
        .buffer_unordered(2)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = loaded.into_iter().find(Result::is_err) {
        return Err(e.into());
    }
    if n > 0 {
        let took = started.elapsed();
        println!("loaded {n} leads in {took:.1?} ({:.0} leads/s)", n as f64 / took.as_secs_f64());
    }

    let today = chrono::Utc::now().date_naive();
    let first = chrono::Datelike::with_day(&today, 1).unwrap_or(today);
    let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
    let at = |d: chrono::NaiveDate| prost_types::Timestamp {
        seconds: d.and_hms_opt(0, 0, 0).map_or(0, |t| t.and_utc().timestamp()),
        nanos: 0,
    };
    let mut profiles = ProfilesClient::connect(addr.clone()).await?;
    let request = pb::GetCohortScoreProfileRequest {
        created_from: Some(at(first)),
        created_to: Some(at(next)),
        ..Default::default()
    };
    let mut samples = Vec::with_capacity(queries);
    let mut answer = None;
    for _ in 0..queries.max(1) {
        let started = Instant::now();
        answer = Some(profiles.get_cohort_score_profile(request.clone()).await?.into_inner());
        samples.push(started.elapsed());
    }
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let answer = answer.unwrap_or_default();
    println!(
        "GetCohortScoreProfile over {} leads ({} calls): p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  mean {:?}",
        answer.lead_count,
        samples.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        samples[samples.len() - 1],
        mean
    );
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
                    |t: Option<prost_types::Timestamp>| t.map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9);
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
