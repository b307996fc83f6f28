//! Round-trip time of single-signal `RecordSignals` calls, one at a time.
//!
//!     cargo run --release --example record_rtt -- http://127.0.0.1:50051 5000
//!
//! Sends `N` calls (default 5000, after 500 warm-up calls), each one
//! `page_view` for one of 1000 leads, and prints the latency percentiles.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leadscore::api::pb::{self, lead_scoring_client::LeadScoringClient};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let n: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5000);
    let mut client = LeadScoringClient::connect(addr).await?;
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let mut samples = Vec::with_capacity(n);
    for i in 0..(n + 500) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
        let signal = pb::Signal {
            event_id: format!("rtt-{run}-{i}"),
            lead_id: format!("rtt-lead-{}", i % 1000),
            r#type: "page_view".into(),
            occurred_at: Some(pbjson_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
            ..Default::default()
        };
        let started = Instant::now();
        client.record_signals(pb::RecordSignalsRequest { signals: vec![signal] }).await?;
        if i >= 500 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{n} sequential single-signal RecordSignals: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  mean {:?}",
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1],
        mean
    );
    Ok(())
}
