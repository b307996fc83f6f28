//! Shared by the benchmark examples (`cohort_profile`, `campaign_report`):
//! loading a population and timing calls.

use std::time::{Duration, Instant};

use futures::StreamExt;
use leadscore::api::pb::{self, lead_scoring_client::LeadScoringClient};

/// Sends `n` signals made by `signal(i)` through `RecordSignals`, 1000 per
/// call, two calls in flight, and prints how fast they loaded.
pub async fn load(
    addr: &str,
    n: usize,
    signal: impl Fn(usize) -> pb::Signal + Copy,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = LeadScoringClient::connect(addr.to_owned()).await?.max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let loaded = futures::stream::iter((0..n).step_by(1000))
        .map(|first| {
            let mut client = client.clone();
            async move {
                let signals = (first..(first + 1000).min(n)).map(signal).collect();
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
        println!("loaded {n} signals in {took:.1?} ({:.0} signals/s)", n as f64 / took.as_secs_f64());
    }
    Ok(())
}

/// Latencies of calls made one after another.
#[derive(Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Times `call`, keeping its answer.
    pub async fn time<T, F: std::future::Future<Output = T>>(&mut self, call: F) -> T {
        let started = Instant::now();
        let answer = call.await;
        self.0.push(started.elapsed());
        answer
    }

    pub fn calls(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Display for Latencies {
    /// `p50 … p90 … p99 … max … mean …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut samples = self.0.clone();
        samples.sort();
        if samples.is_empty() {
            return write!(f, "no calls");
        }
        let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        write!(
            f,
            "p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  mean {:?}",
            q(0.5),
            q(0.9),
            q(0.99),
            samples[samples.len() - 1],
            mean
        )
    }
}
