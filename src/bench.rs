//! `leadscore bench`: a load generator for a running service (and, for the
//! Redis ceiling, for the Redis store directly).
//!
//! Closed loop (`--rate 0`): `concurrency` callers send one call after
//! another. Open loop (`--rate R`): calls are due at R per second whatever
//! happens; each caller takes the next due slot, waits for its time, and a
//! call's latency is measured **from when it was due**, so a stalled service
//! is not hidden by callers that stopped sending (no coordinated omission).
//! Latencies go into HDR histograms (µs, 3 significant digits), kept apart
//! for successful and for refused (`RESOURCE_EXHAUSTED`) calls.

use crate::store::Leads;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::api::pb;
use crate::api::pb::lead_scoring_client::LeadScoringClient;
use crate::domain::Stage;
use crate::domain::{Clock, IngestPolicy, LeadId, SystemClock};
use crate::rules::RuleSet;
use crate::store::FeedPolicy;
use crate::store::redis::{RedisSettings, RedisStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `RecordSignals` with one signal.
    Record,
    /// `RecordSignals` with `--batch` signals over the population.
    RecordBatch,
    /// `ScoreLead` of a stored lead.
    Score,
    /// 80% `Record`, 20% `Score`.
    Mixed,
    /// The health `Check`: the no-op RPC ceiling of the same server.
    Noop,
    /// The Redis work of a single-signal `RecordSignals` (the same pipelined
    /// ingest script calls), sent by the store itself without gRPC: the
    /// Redis ceiling. Needs `--redis-url`.
    StoreIngest,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// The service.
    #[arg(long, env = "LEADSCORE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// What to send.
    #[arg(long, value_enum, default_value = "record")]
    pub scenario: Scenario,
    /// Calls in flight at most (callers).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// HTTP/2 connections the callers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Open loop: calls per second offered; 0 for closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Leads in the population.
    #[arg(long, default_value_t = 10_000)]
    pub leads: usize,
    /// Signals per call (record-batch).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// The Redis store-ingest writes to (a Redis of its own).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Key prefix of the store (store-ingest).
    #[arg(long, default_value = "ls")]
    pub redis_key_prefix: String,
    /// Key partitions of the store (store-ingest).
    #[arg(long, default_value_t = 64)]
    pub redis_partitions: u32,
    /// Stop after this many calls (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    pub calls: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Keep the leads the run wrote (`bench-0` … `bench-<leads - 1>`). By
    /// default they are erased when it ends (ForgetLeads, admin scope), so
    /// a benchmark leaves no leads in cohorts, funnels and reports.
    /// store-ingest writes to Redis directly and is never cleaned up: point
    /// it at a Redis of its own.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub concurrency: usize,
    /// Offered calls per second (open loop), or null.
    pub offered_rate: Option<f64>,
    pub seconds: f64,
    /// Every call sent, warm-up included.
    pub sent: u64,
    pub ok: u64,
    /// Errors by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub calls_per_s: f64,
    /// Signals recorded per second (record scenarios).
    pub signals_per_s: f64,
    /// Latency of successful calls, µs.
    pub ok_latency: Percentiles,
    /// Latency of calls refused with RESOURCE_EXHAUSTED, µs (from when
    /// they were due).
    pub shed_latency: Option<Percentiles>,
    /// The same from when each was sent: how fast the service refuses.
    pub shed_sent_latency: Option<Percentiles>,
    /// Leads of the run erased when it ended (null with --keep or for
    /// store-ingest).
    pub erased: Option<u64>,
    /// Why the run's leads could not be erased.
    pub cleanup_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Self {
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// What one call turned out to be.
enum Outcome {
    Ok { signals: u64 },
    Shed,
    Failed(String),
}

/// Sends the calls of a scenario.
#[derive(Clone)]
enum Caller {
    Grpc(
        Vec<(
            LeadScoringClient<crate::client::Connection>,
            tonic_health::pb::health_client::HealthClient<crate::client::Connection>,
        )>,
    ),
    Store {
        store: Arc<RedisStore>,
        rules: Arc<RuleSet>,
        policy: IngestPolicy,
    },
}

/// A run's identity in event ids, so runs never de-duplicate each other.
fn run_id() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn signal(run: u128, call: u64, index: usize, lead: usize, now_ms: i64) -> pb::Signal {
    pb::Signal {
        event_id: format!("b{run}-{call}-{index}"),
        lead_id: format!("bench-{lead}"),
        r#type: "page_view".into(),
        occurred_at: Some(pbjson_types::Timestamp { seconds: now_ms / 1000, nanos: 0 }),
        properties: [("url".to_string(), "https://example.com/pricing".to_string())].into(),
        ..Default::default()
    }
}

fn code_name(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

impl Caller {
    async fn call(&self, scenario: Scenario, args: &BenchArgs, run: u128, call: u64) -> Outcome {
        let now_ms = SystemClock.now().millis();
        let lead = (call as usize).wrapping_mul(7919) % args.leads.max(1);
        let scenario = match scenario {
            Scenario::Mixed if call % 5 == 4 => Scenario::Score,
            Scenario::Mixed => Scenario::Record,
            other => other,
        };
        let grpc = |result: Result<u64, tonic::Status>| match result {
            Ok(signals) => Outcome::Ok { signals },
            Err(s) if s.code() == tonic::Code::ResourceExhausted => Outcome::Shed,
            Err(s) => Outcome::Failed(code_name(&s)),
        };
        match self {
            Caller::Grpc(clients) => {
                let (mut client, mut health) = clients[call as usize % clients.len()].clone();
                match scenario {
                    Scenario::Record | Scenario::Mixed => {
                        let request = pb::RecordSignalsRequest { signals: vec![signal(run, call, 0, lead, now_ms)] };
                        grpc(client.record_signals(request).await.map(|_| 1))
                    }
                    Scenario::RecordBatch => {
                        let signals: Vec<pb::Signal> = (0..args.batch)
                            .map(|i| signal(run, call, i, (lead + i * 13) % args.leads.max(1), now_ms))
                            .collect();
                        let n = signals.len() as u64;
                        grpc(client.record_signals(pb::RecordSignalsRequest { signals }).await.map(|_| n))
                    }
                    Scenario::Score => {
                        let request = pb::ScoreLeadRequest { lead_id: format!("bench-{lead}"), ..Default::default() };
                        grpc(client.score_lead(request).await.map(|_| 0))
                    }
                    Scenario::Noop => {
                        let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
                        grpc(health.check(request).await.map(|_| 0))
                    }
                    Scenario::StoreIngest => Outcome::Failed("store-ingest needs --redis-url".into()),
                }
            }
            Caller::Store { store, rules, policy } => {
                let pb_signal = signal(run, call, 0, lead, now_ms);
                let now = SystemClock.now();
                let parsed =
                    match crate::api::convert::signals(vec![pb_signal], rules, now, 1000, 300_000, policy.retention_ms)
                    {
                        Ok(p) => p,
                        Err(e) => return Outcome::Failed(format!("{e:?}")),
                    };
                // The service's own write path without gRPC: read the lead,
                // compute with the scoring core, write.
                let settings = crate::transition::Settings::new(*policy);
                let Some((lead_id, signal)) = parsed.into_iter().next() else {
                    return Outcome::Failed("no signal".into());
                };
                let lead_id: LeadId = lead_id;
                let stored = match store.load(std::slice::from_ref(&lead_id)).await {
                    Ok(mut s) => s.pop().flatten(),
                    Err(e) => return Outcome::Failed(format!("{e}")),
                };
                let stage = if lead_id.visitor().is_some() { Stage::Anonymous } else { Stage::Lead };
                let recorded =
                    crate::transition::record_signals(rules, &settings, now, stored, &lead_id, stage, &[signal]);
                let changes: Vec<_> = recorded.change.into_iter().collect();
                let defaults = crate::config::Settings::default();
                let feed = FeedPolicy {
                    history_limit: defaults.stage_history_limit,
                    retention_ms: defaults.feed_retention.0,
                    trigger_retention_ms: defaults.trigger_retention.0,
                };
                match store.apply(&changes, &feed).await {
                    Ok(_) => Outcome::Ok { signals: 1 },
                    Err(e) => Outcome::Failed(format!("{e}")),
                }
            }
        }
    }
}

/// Stores one signal for every lead of the population (score and mixed
/// read them), 500 per call.
async fn prefill(caller: &Caller, args: &BenchArgs, run: u128) -> Result<(), Box<dyn std::error::Error>> {
    let Caller::Grpc(clients) = caller else { return Ok(()) };
    let mut client = clients[0].0.clone();
    let now_ms = SystemClock.now().millis();
    let leads: Vec<usize> = (0..args.leads).collect();
    let bar = crate::client::progress(args.leads as u64, "loading the population", "leads");
    for (chunk_index, chunk) in leads.chunks(500).enumerate() {
        bar.inc(chunk.len() as u64);
        let signals = chunk
            .iter()
            .enumerate()
            .map(|(i, &lead)| signal(run, u64::MAX - chunk_index as u64, i, lead, now_ms))
            .collect();
        client.record_signals(pb::RecordSignalsRequest { signals }).await?;
    }
    bar.finish_and_clear();
    Ok(())
}

pub async fn run(args: BenchArgs) -> Result<Report, Box<dyn std::error::Error>> {
    if args.concurrency == 0 || args.connections == 0 || args.leads == 0 || args.batch == 0 {
        return Err("concurrency, connections, leads and batch must be at least 1".into());
    }
    let caller = match args.scenario {
        Scenario::StoreIngest => {
            let url = args.redis_url.clone().ok_or("store-ingest needs --redis-url")?;
            let store = RedisStore::connect(&RedisSettings {
                url,
                key_prefix: args.redis_key_prefix.clone(),
                partitions: args.redis_partitions,
                command_timeout: Duration::from_secs(2),
                tls: Default::default(),
            })?;
            let rules = RuleSet::parse(crate::DEFAULT_RULES).map_err(|e| format!("{e:?}"))?;
            let defaults = crate::config::Settings::default();
            let policy = IngestPolicy {
                dedupe_window_ms: defaults.dedupe_window.0,
                retention_ms: defaults.signal_retention.0,
                history_limit: defaults.history_limit,
            };
            Caller::Store { store: Arc::new(store), rules: Arc::new(rules), policy }
        }
        _ => {
            let mut clients = Vec::new();
            for _ in 0..args.connections {
                let connection = crate::client::connect(&args.addr).await?;
                clients.push((
                    LeadScoringClient::new(connection.clone()),
                    tonic_health::pb::health_client::HealthClient::new(connection),
                ));
            }
            Caller::Grpc(clients)
        }
    };
    let run = run_id();
    if matches!(args.scenario, Scenario::Score | Scenario::Mixed) {
        prefill(&caller, &args, run).await?;
    }
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let warm = Duration::from_secs_f64(args.warmup.max(0.0));
    let end = warm + Duration::from_secs_f64(args.duration.max(0.1));
    let ticker = tokio::spawn(show_progress(args.clone(), next.clone(), start, warm, end));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (caller, args, next) = (caller.clone(), args.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = Histogram::<u64>::new(3).expect("3 significant digits");
            let mut shed = Histogram::<u64>::new(3).expect("3 significant digits");
            let mut shed_sent = Histogram::<u64>::new(3).expect("3 significant digits");
            let (mut signals, mut errors, mut sent) = (0u64, HashMap::<String, u64>::new(), 0u64);
            loop {
                let call = next.fetch_add(1, Ordering::Relaxed);
                if args.calls > 0 && call >= args.calls {
                    break;
                }
                let due = if args.rate > 0.0 {
                    let due = Duration::from_secs_f64(call as f64 / args.rate);
                    tokio::time::sleep_until(tokio::time::Instant::from_std(start + due)).await;
                    due
                } else {
                    start.elapsed()
                };
                if due >= end {
                    break;
                }
                let sent_at = Instant::now();
                let outcome = caller.call(args.scenario, &args, run, call).await;
                sent += 1;
                let latency = (start.elapsed().saturating_sub(due)).as_micros() as u64;
                let since_sent = sent_at.elapsed().as_micros() as u64;
                if due < warm {
                    continue;
                }
                match outcome {
                    Outcome::Ok { signals: n } => {
                        let _ = ok.record(latency.max(1));
                        signals += n;
                    }
                    Outcome::Shed => {
                        let _ = shed.record(latency.max(1));
                        let _ = shed_sent.record(since_sent.max(1));
                        *errors.entry("ResourceExhausted".into()).or_default() += 1;
                    }
                    Outcome::Failed(code) => *errors.entry(code).or_default() += 1,
                }
            }
            (ok, shed, shed_sent, signals, errors, sent)
        }));
    }
    let mut ok = Histogram::<u64>::new(3).expect("3 significant digits");
    let mut shed = Histogram::<u64>::new(3).expect("3 significant digits");
    let mut shed_sent = Histogram::<u64>::new(3).expect("3 significant digits");
    let (mut signals, mut errors, mut sent) = (0u64, BTreeMap::<String, u64>::new(), 0u64);
    for worker in workers {
        let (o, s, ss, n, e, c) = worker.await?;
        sent += c;
        ok.add(&o)?;
        shed.add(&s)?;
        shed_sent.add(&ss)?;
        signals += n;
        for (code, count) in e {
            *errors.entry(code).or_default() += count;
        }
    }
    ticker.abort();
    let _ = ticker.await;
    let seconds =
        if args.calls > 0 { start.elapsed().saturating_sub(warm).as_secs_f64() } else { args.duration.max(0.1) };
    let (erased, cleanup_error) = match &caller {
        Caller::Grpc(_) if !args.keep => match clean_up(&args.addr, args.leads).await {
            Ok(n) => (Some(n), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    Ok(Report {
        erased,
        cleanup_error,
        scenario: args.scenario,
        concurrency: args.concurrency,
        offered_rate: (args.rate > 0.0).then_some(args.rate),
        seconds,
        sent,
        ok: ok.len(),
        errors,
        calls_per_s: per_second(ok.len() as f64, seconds),
        signals_per_s: per_second(signals as f64, seconds),
        ok_latency: Percentiles::of(&ok).unwrap_or(Percentiles { p50: 0, p90: 0, p99: 0, p999: 0, max: 0 }),
        shed_latency: Percentiles::of(&shed),
        shed_sent_latency: Percentiles::of(&shed_sent),
    })
}

/// A rate, 0 over no time (a --calls run that ended within its warm-up).
fn per_second(n: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { n / seconds } else { 0.0 }
}

/// Leads erased per ForgetLeads call (within the default `max_batch_size`).
const CLEANUP_BATCH: usize = 100;

/// Erases the population `bench-0` … `bench-<leads - 1>` (ForgetLeads):
/// how many were there to erase.
async fn clean_up(addr: &str, leads: usize) -> Result<u64, String> {
    use crate::api::pb::profiles_client::ProfilesClient;
    let connection = crate::client::connect(addr).await.map_err(|e| e.to_string())?;
    let client = ProfilesClient::new(connection);
    let bar = crate::client::progress(leads as u64, "erasing the run's leads", "leads");
    let ids: Vec<String> = (0..leads).map(|n| format!("bench-{n}")).collect();
    let calls = futures::stream::iter(ids.chunks(CLEANUP_BATCH).map(|chunk| {
        let mut client = client.clone();
        let request = pb::ForgetLeadsRequest {
            lead_ids: chunk.to_vec(),
            actor: "leadscore bench".into(),
            reason: "benchmark clean-up".into(),
            ..Default::default()
        };
        async move { client.forget_leads(request).await }
    }));
    let mut replies = futures::StreamExt::buffer_unordered(calls, 4);
    let mut erased = 0;
    while let Some(reply) = futures::StreamExt::next(&mut replies).await {
        let reply = reply.map_err(|e| crate::client::refused(&e))?.into_inner();
        bar.inc(reply.receipts.len() as u64);
        erased += reply.receipts.iter().filter(|r| r.found).count() as u64;
    }
    bar.finish_and_clear();
    Ok(erased)
}

/// The run's progress on stderr while it lasts (a terminal only): the
/// calls sent of `--calls`, or the seconds of warm-up, then of measuring.
async fn show_progress(args: Arc<BenchArgs>, next: Arc<AtomicU64>, start: Instant, warm: Duration, end: Duration) {
    let bar = if args.calls > 0 {
        crate::client::progress(args.calls, "sending", "calls")
    } else {
        crate::client::progress(end.as_secs(), "warming up", "s")
    };
    let _clear = ClearOnDrop(bar.clone());
    loop {
        let elapsed = start.elapsed();
        if args.calls > 0 {
            bar.set_position(next.load(Ordering::Relaxed).min(args.calls));
        } else {
            bar.set_position(elapsed.as_secs().min(end.as_secs()));
        }
        if elapsed >= warm {
            bar.set_message("measuring");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes a progress bar off the terminal when its task ends (or is aborted).
struct ClearOnDrop(indicatif::ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let mut out = String::new();
    let offered = r.offered_rate.map_or("closed loop".to_string(), |rate| format!("open loop at {rate:.0}/s"));
    out.push_str(&format!("{:?}, {} callers, {offered}, {:.0} s\n", r.scenario, r.concurrency, r.seconds));
    out.push_str(&format!("  ok calls        {:>12}  ({:.0}/s)\n", r.ok, r.calls_per_s));
    if r.signals_per_s > 0.0 {
        out.push_str(&format!("  signals         {:>12.0}/s\n", r.signals_per_s));
    }
    let l = &r.ok_latency;
    out.push_str(&format!(
        "  latency         p50 {}  p90 {}  p99 {}  p99.9 {}  max {}\n",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max)
    ));
    if let (Some(s), Some(t)) = (&r.shed_latency, &r.shed_sent_latency) {
        out.push_str(&format!(
            "  refused latency p50 {}  p99 {}  max {} (from due)\n",
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        ));
        out.push_str(&format!(
            "  refused latency p50 {}  p99 {}  max {} (from sent)\n",
            ms(t.p50),
            ms(t.p99),
            ms(t.max)
        ));
    }
    for (code, count) in &r.errors {
        out.push_str(&format!("  error {code:<20} {count}\n"));
    }
    if let Some(n) = r.erased {
        out.push_str(&format!("  cleaned up      {n} leads of the run erased\n"));
    }
    out
}
