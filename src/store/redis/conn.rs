//! One connection type for a single Redis and for Redis Cluster.
//!
//! Every key leadscore writes carries its partition's hash tag, and every Lua
//! script touches one partition, so each script call and each single
//! command lives in one slot. Pipelines are different: a request that reads
//! or writes many leads pipelines commands for many partitions. Redis
//! Cluster refuses a pipeline across slots, so on a cluster a pipeline is
//! split by slot, the parts are sent concurrently (each to the node that
//! owns its slot) and the replies are put back in the pipeline's order.

use std::collections::HashMap;
use std::time::Duration;

use futures::FutureExt;
use futures::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Arg, Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tracing::Instrument;

/// The URL schemes of a Redis Cluster: `redis+cluster://host1:port,host2:port`,
/// and `rediss+cluster://…` over TLS.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";
pub const CLUSTER_TLS_SCHEME: &str = "rediss+cluster://";

/// TLS material for `rediss://` URLs beyond the system's trust store: a CA
/// bundle to trust, and a client certificate for servers that ask for one.
/// All PEM. `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls").field("ca", &self.ca.is_some()).field("client", &self.client.is_some()).finish()
    }
}

impl RedisTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .clone()
                .map(|(client_cert, client_key)| redis::ClientTlsConfig { client_cert, client_key }),
            root_cert: self.ca.clone(),
        }
    }
}

/// A connection to Redis or a Redis Cluster that traces each command or
/// pipeline (a client span named after the command, never with values) and
/// measures its latency.
#[derive(Clone)]
pub struct Conn {
    link: Link,
    latency: Option<prometheus::HistogramVec>,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Prepares a connection without waiting for Redis; the first command
    /// connects (and a store that is down reports errors until it answers).
    pub fn open(url: &str, timeout: Duration, tls: &RedisTls) -> Result<Self, String> {
        let secure = url.starts_with("rediss://") || url.starts_with(CLUSTER_TLS_SCHEME);
        if tls.is_set() && !secure {
            return Err("redis_tls_ca / redis_tls_cert need a rediss:// (or rediss+cluster://) URL".into());
        }
        if let Some(nodes) = cluster_nodes(url)? {
            let mut builder = redis::cluster::ClusterClient::builder(nodes);
            if tls.is_set() {
                builder = builder.certs(tls.certificates());
            }
            let client = builder
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(|e| format!("invalid Redis Cluster URL: {e}"))?;
            let config =
                redis::cluster::ClusterConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
            return Ok(Self::new(Link::Cluster(client.get_pending_async_connection_with_config(config))));
        }
        let client = if tls.is_set() {
            redis::Client::build_with_tls(url, tls.certificates())
        } else {
            redis::Client::open(url)
        }
        .map_err(|e| format!("invalid Redis URL or TLS material: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        ConnectionManager::new_lazy_with_config(client, config)
            .map(|c| Self::new(Link::Single(c)))
            .map_err(|e| format!("invalid Redis URL: {e}"))
    }

    fn new(link: Link) -> Self {
        Self { link, latency: None }
    }

    /// Observes every command's (or pipeline's) latency, in seconds, by
    /// operation.
    pub fn with_latency(mut self, histogram: prometheus::HistogramVec) -> Self {
        self.latency = Some(histogram);
        self
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }
}

/// Runs `future` in a client span of `operation`, timing it.
fn observed<'a, T: Send + 'a>(
    latency: Option<prometheus::HistogramVec>,
    operation: &'static str,
    batch: usize,
    future: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    let span = tracing::info_span!(
        "redis",
        otel.name = operation,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system = "redis",
        db.operation.name = operation,
        db.operation.batch.size = batch,
    );
    Box::pin(
        async move {
            let started = std::time::Instant::now();
            let result = future.await;
            if let Some(latency) = latency {
                latency.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
            }
            if result.is_err() {
                tracing::Span::current().record("otel.status_code", "ERROR");
            }
            result
        }
        .instrument(span),
    )
}

/// The seed nodes of a `redis+cluster://[user:password@]host:port,host:port`
/// URL as `redis://` URLs (credentials on each); `None` for any other URL.
pub fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, String> {
    let (scheme, rest) = match (url.strip_prefix(CLUSTER_SCHEME), url.strip_prefix(CLUSTER_TLS_SCHEME)) {
        (Some(rest), _) => ("redis", rest),
        (_, Some(rest)) => ("rediss", rest),
        _ => return Ok(None),
    };
    let (credentials, hosts) = match rest.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), rest),
    };
    let hosts = hosts.trim_end_matches('/');
    let nodes: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{credentials}{h}"))
        .collect();
    if nodes.is_empty() {
        return Err("a Redis Cluster URL names at least one node: redis+cluster://host:port[,host:port…]".into());
    }
    if hosts.contains('/') {
        return Err("a Redis Cluster has only database 0: drop the /db from the URL".into());
    }
    Ok(Some(nodes))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let latency = self.latency.clone();
        let future = match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        };
        observed(latency, operation(cmd), 1, future)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let latency = self.latency.clone();
        let future = match &mut self.link {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            // A transaction must be in one slot anyway: Redis says so if not.
            Link::Cluster(c) => {
                if pipeline.is_transaction() {
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    split_by_slot(c.clone(), pipeline, offset, count).boxed()
                }
            }
        };
        // Named after its commands when they are all alike (a pipeline of
        // script calls is "EVALSHA"), else "PIPELINE".
        let mut names = pipeline.cmd_iter().map(operation);
        let first = names.next().unwrap_or("PIPELINE");
        let name = if names.all(|n| n == first) { first } else { "PIPELINE" };
        observed(latency, name, pipeline.len(), future)
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Sends a pipeline as one pipeline per slot, concurrently; the replies come
/// back in the original order. Commands without a key ride with the first
/// slot's part.
async fn split_by_slot(
    conn: ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let groups = group_by_slot(pipeline.cmd_iter().map(first_key));
    if groups.len() <= 1 {
        let mut conn = conn;
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    let commands: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let parts = groups.iter().map(|indices| {
        let mut part = redis::pipe();
        for &i in indices {
            part.add_command(commands[i].clone());
        }
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(&part, 0, part.len()).await }
    });
    let replies = try_join_all(parts).await?;
    let mut out = vec![Value::Nil; commands.len()];
    for (indices, values) in groups.iter().zip(replies) {
        for (&i, value) in indices.iter().zip(values) {
            out[i] = value;
        }
    }
    Ok(out.into_iter().skip(offset).take(count).collect())
}

/// Command indices grouped by the slot of their first key, groups in order
/// of first appearance; keyless commands join the first group.
fn group_by_slot<'a>(keys: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_slot: HashMap<Slot, usize> = HashMap::new();
    let mut keyless = Vec::new();
    for (i, key) in keys.enumerate() {
        match key {
            Some(key) => {
                let slot = Slot::for_key(key);
                let group = *by_slot.entry(slot).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[group].push(i);
            }
            None => keyless.push(i),
        }
    }
    match groups.first_mut() {
        Some(first) => {
            first.extend(keyless);
            first.sort_unstable();
        }
        None if !keyless.is_empty() => groups.push(keyless),
        None => {}
    }
    groups
}

/// The commands leadscore sends, as metric labels and span names (a fixed
/// set: anything else is "OTHER").
const OPERATIONS: [&str; 26] = [
    "EVALSHA",
    "EVAL",
    "SCRIPT",
    "PING",
    "HGETALL",
    "HMGET",
    "HGET",
    "LRANGE",
    "SMEMBERS",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZCOUNT",
    "ZCARD",
    "ZMSCORE",
    "XRANGE",
    "XREVRANGE",
    "XREADGROUP",
    "XPENDING",
    "XCLAIM",
    "XACK",
    "XGROUP",
    "XINFO",
    "HINCRBY",
    "DEL",
    "EXPIRE",
    "MEMORY",
];

fn operation(cmd: &Cmd) -> &'static str {
    let Some(Arg::Simple(name)) = cmd.args_iter().next() else {
        return "OTHER";
    };
    OPERATIONS.iter().find(|op| op.as_bytes().eq_ignore_ascii_case(name)).copied().unwrap_or("OTHER")
}

/// The first key of a command leadscore sends, by the command's key
/// position.
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            Arg::Simple(bytes) => bytes,
            _ => b"0".as_slice(),
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" => {
            (args.get(2)? != b"0").then(|| args.get(3).copied()).flatten()
        }
        b"XREAD" | b"XREADGROUP" => {
            let streams = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(streams + 1).copied()
        }
        b"XINFO" | b"XGROUP" | b"MEMORY" | b"OBJECT" => args.get(2).copied(),
        b"PING" | b"SCRIPT" | b"INFO" | b"TIME" | b"CLIENT" | b"CONFIG" | b"DBSIZE" | b"FLUSHALL" => None,
        _ => args.get(1).copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_every_node_with_credentials() {
        assert_eq!(cluster_nodes("redis://h:1").unwrap(), None);
        assert_eq!(
            cluster_nodes("redis+cluster://u:p@a:7000,b:7001").unwrap().unwrap(),
            vec!["redis://u:p@a:7000", "redis://u:p@b:7001"]
        );
        assert_eq!(cluster_nodes("redis+cluster://a:7000/").unwrap().unwrap(), vec!["redis://a:7000"]);
        assert_eq!(
            cluster_nodes("rediss+cluster://a:7000,b:7001").unwrap().unwrap(),
            vec!["rediss://a:7000", "rediss://b:7001"]
        );
        assert!(cluster_nodes("redis+cluster://").is_err());
        assert!(cluster_nodes("redis+cluster://a:7000/2").is_err());
    }

    #[test]
    fn keys_are_found_where_each_command_keeps_them() {
        let evalsha = redis::cmd("EVALSHA").arg("abc").arg(2).arg("k1").arg("k2").arg("v").clone();
        assert_eq!(first_key(&evalsha), Some(b"k1".as_slice()));
        assert_eq!(first_key(redis::cmd("EVALSHA").arg("abc").arg(0).arg("v")), None);
        let read = redis::cmd("XREADGROUP").arg("GROUP").arg("g").arg("c").arg("STREAMS").arg("s").arg(">").clone();
        assert_eq!(first_key(&read), Some(b"s".as_slice()));
        assert_eq!(first_key(redis::cmd("XINFO").arg("STREAM").arg("s")), Some(b"s".as_slice()));
        assert_eq!(first_key(redis::cmd("HGETALL").arg("h")), Some(b"h".as_slice()));
        assert_eq!(first_key(&redis::cmd("PING")), None);
    }

    #[test]
    fn pipelines_split_by_hash_tag_in_first_appearance_order() {
        let keys: [Option<&[u8]>; 5] = [Some(b"a:{p1}:x"), Some(b"a:{p2}:x"), None, Some(b"b:{p1}:y"), Some(b"{p2}")];
        assert_eq!(group_by_slot(keys.into_iter()), vec![vec![0, 2, 3], vec![1, 4]]);
        assert_eq!(group_by_slot([None, None].into_iter()), vec![vec![0, 1]]);
        assert!(group_by_slot(std::iter::empty()).is_empty());
    }
}
