//! Test helpers: spawn `redis-server` on a free port, start the service on
//! port 0, build clients and signals.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leadscore::api::pb;
use leadscore::api::pb::lead_scoring_client::LeadScoringClient;
use leadscore::config::Settings;
use leadscore::startup::Application;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` of our own, killed on drop. Keeps nothing on disk.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// More `redis-server` arguments, e.g. `--dir`.
    extra: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let mut server = Self { child: None, port, extra: extra.iter().map(|a| a.to_string()).collect() };
            server.spawn();
            if server.wait_ready() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts again on the same port with these arguments instead, without
    /// waiting for it to answer (it may be loading its data).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.extra = extra.iter().map(|a| a.to_string()).collect();
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen again on port {}", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}); install it (scripts/test.sh does) or put it on PATH")
            });
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        assert!(self.wait_ready(), "redis-server did not come back on port {}", self.port);
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A three-node Redis Cluster of our own (no replicas), killed on drop.
/// Each node keeps its cluster state in a temporary directory.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `None` (after saying why on stderr) when `redis-cli`, which creates
    /// the cluster, is not installed.
    pub fn start() -> Option<Self> {
        if Command::new("redis-cli").arg("--version").output().is_err() {
            eprintln!("SKIPPED: redis-cli is not on PATH, so no Redis Cluster can be created for this test");
            return None;
        }
        for _ in 0..3 {
            if let Some(cluster) = Self::try_start() {
                return Some(cluster);
            }
        }
        panic!("could not start a 3-node Redis Cluster on free ports");
    }

    fn try_start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        // Data and cluster-bus ports, all free (the bus port is not port + 10000,
        // which may not exist above 55535).
        let held: Vec<TcpListener> = (0..6).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(held);
        let mut cluster = Self { nodes: Vec::new(), ports: ports[..3].to_vec(), _dir: dir };
        for (port, bus) in ports[..3].iter().zip(&ports[3..]) {
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .arg("--dir")
                .arg(cluster._dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server runs");
            cluster.nodes.push(child);
        }
        for port in &cluster.ports {
            if !ping(&format!("redis://127.0.0.1:{port}")) {
                return None;
            }
        }
        let create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !create.success() {
            return None;
        }
        // Every node must agree the cluster is up before it takes commands.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = cluster.ports.iter().all(|port| {
                redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .and_then(|c| c.get_connection())
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return Some(cluster);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `redis+cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Keys stored on each node (KEYS * per node).
    pub fn keys_per_node(&self) -> Vec<Vec<String>> {
        self.ports
            .iter()
            .map(|port| {
                let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap();
                redis::cmd("KEYS").arg("*").query(&mut c).unwrap()
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ping(url: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(client) = redis::Client::open(url)
            && let Ok(mut conn) = client.get_connection()
            && redis::cmd("PING").query::<String>(&mut conn).is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Settings for a test: port 0, fast health checks, short Redis timeout.
pub fn settings(redis_url: Option<String>) -> Settings {
    Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        metrics_addr: "127.0.0.1:0".into(),
        redis_url,
        redis_timeout: leadscore::config::Millis(500),
        health_interval: leadscore::config::Millis(100),
        shutdown_grace: leadscore::config::Millis(2_000),
        // The groups the tests consume as: g0 … g63 for many at once.
        trigger_groups: ["automation", "crm-tasks", "inactivity-check", "g"]
            .into_iter()
            .map(str::to_owned)
            .chain((0..60).map(|i| format!("g{i}")))
            .collect(),
        ..Settings::default()
    }
}

/// The service running in this process.
pub struct TestApp {
    pub port: u16,
    pub metrics_port: Option<u16>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn at(millis: i64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self(std::sync::atomic::AtomicI64::new(millis)))
    }

    pub fn advance(&self, millis: i64) {
        self.0.fetch_add(millis, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn millis(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl leadscore::domain::Clock for ManualClock {
    fn now(&self) -> leadscore::domain::Timestamp {
        leadscore::domain::Timestamp::from_millis(self.millis())
    }
}

impl TestApp {
    pub async fn spawn(settings: Settings) -> Self {
        Self::spawn_with_clock(settings, std::sync::Arc::new(leadscore::domain::SystemClock)).await
    }

    pub async fn spawn_with_clock(settings: Settings, clock: std::sync::Arc<dyn leadscore::domain::Clock>) -> Self {
        let app = Application::build_with_clock(settings, clock).await.expect("application builds");
        let port = app.port();
        let metrics_port = app.metrics_port();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self { port, metrics_port, stop: Some(tx), task: Some(task) }
    }

    pub async fn channel(&self) -> Channel {
        let endpoint = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Channel::from_shared(endpoint.clone()).unwrap().connect().await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("cannot connect to the service: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    pub async fn client(&self) -> LeadScoringClient<Channel> {
        LeadScoringClient::new(self.channel().await)
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// Waits until health reports `want` (or fails after 10 s).
    pub async fn wait_health(&self, want: tonic_health::pb::health_check_response::ServingStatus) {
        let mut health = self.health().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map(|r| r.into_inner().status());
            if status.as_ref().ok() == Some(&want) {
                return;
            }
            assert!(Instant::now() < deadline, "health stayed {status:?}, wanted {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /metrics` over a plain TCP connection: the body.
    pub async fn scrape_metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = self.metrics_port.expect("metrics on");
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ends cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub fn now_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

pub fn ts(millis: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

pub const DAY: i64 = 86_400_000;

pub fn signal(event_id: &str, lead_id: &str, signal_type: &str, at_millis: i64) -> pb::Signal {
    pb::Signal {
        event_id: event_id.into(),
        lead_id: lead_id.into(),
        r#type: signal_type.into(),
        occurred_at: Some(ts(at_millis)),
        ..Default::default()
    }
}

pub fn record(signals: Vec<pb::Signal>) -> pb::RecordSignalsRequest {
    pb::RecordSignalsRequest { signals }
}

/// The field paths of an INVALID_ARGUMENT's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries BadRequest details")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

/// The value of the metric line that starts with `line_start` (name and
/// labels) in a Prometheus scrape; 0 when there is none.
pub fn metric_value(text: &str, line_start: &str) -> f64 {
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// Every trigger the stream delivers until it has been quiet for 600 ms.
/// (One long-lived stream per test: a stream closed and reopened could
/// leave a trigger held by the closed one until its visibility timeout.)
pub async fn drain(stream: &mut tonic::Streaming<pb::StreamTriggersResponse>) -> Vec<pb::NurtureTrigger> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(item))) =
        tokio::time::timeout(Duration::from_millis(600), stream.message()).await.map(|m| m.transpose())
    {
        got.push(item.trigger.unwrap());
    }
    got
}

/// A signal carrying a campaign, its source and channel `paid` (none of
/// them when `campaign` is empty): a touch for attribution.
pub fn touch(event: &str, lead: &str, t: &str, at: i64, campaign: &str, source: &str) -> pb::Signal {
    let mut s = signal(event, lead, t, at);
    if !campaign.is_empty() {
        s.properties = std::collections::HashMap::from([
            ("campaign".to_owned(), campaign.to_owned()),
            ("source".to_owned(), source.to_owned()),
            ("channel".to_owned(), "paid".to_owned()),
        ]);
    }
    s
}

/// Moves a lead through sales' stages by `SetStage` (a deal amount with
/// `CUSTOMER`).
pub async fn move_through(
    crm: &mut pb::qualification_client::QualificationClient<Channel>,
    lead: &str,
    path: &[(pb::Stage, Option<f64>)],
) {
    for (to, amount) in path {
        let request = pb::SetStageRequest {
            lead_id: lead.into(),
            to: (*to).into(),
            actor: "rep".into(),
            deal_amount: *amount,
            ..Default::default()
        };
        crm.set_stage(request).await.unwrap();
    }
}

/// Creates leads with a VP at a 1,500-person company (they qualify on
/// engagement alone).
pub async fn upsert_vps(leads: &mut LeadScoringClient<Channel>, ids: &[&str]) {
    for id in ids {
        let attributes = [("seniority", "vp"), ("company_size", "1500")].map(|(k, v)| (k.to_owned(), v.to_owned()));
        leads
            .upsert_lead(pb::UpsertLeadRequest {
                lead: Some(pb::Lead { lead_id: (*id).into(), attributes: attributes.into(), ..Default::default() }),
            })
            .await
            .unwrap();
    }
}
