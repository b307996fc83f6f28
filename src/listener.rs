//! Accepting gRPC connections with bounds: at most `max_connections` open
//! (one more is closed at once, logged and counted), a connection that does
//! not send its first 24 bytes (the HTTP/2 preface, an HTTP/1.1 request
//! head or a TLS ClientHello are longer) within
//! `handshake_timeout` is closed, so is one that sends nothing for
//! `idle_timeout` (a live HTTP/2 client answers the keepalive pings, so it
//! is never idle that long; HTTP/1.1 has no pings: a stream that hears
//! nothing from its client that long is closed), and a failing `accept` (out of
//! descriptors) backs off instead of spinning.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::Metrics;

/// Bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; 0: no limit.
    pub max_connections: usize,
    /// Time a new connection has to send its first bytes.
    pub handshake_timeout: Duration,
    /// Time a connection may send nothing before it is closed.
    pub idle_timeout: Duration,
}

/// Bytes a client must send within `handshake_timeout`: the HTTP/2
/// connection preface (a TLS ClientHello is longer), so a client cannot
/// hold a place by trickling single bytes.
const GREETING: usize = 24;

/// Longest pause after a failed `accept`.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A refusal or an accept error is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The accepted connections of `listener`, bounded by `limits`; never ends
/// and never yields an error (errors are logged, counted and waited out).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<Bounded, io::Error>> {
    let state = Accept { listener, limits, metrics, open: Arc::new(AtomicUsize::new(0)), logged: None };
    futures::stream::unfold(state, |mut state| async move {
        let conn = state.next().await;
        Some((Ok(conn), state))
    })
}

struct Accept {
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    open: Arc<AtomicUsize>,
    /// When a refusal or accept error was last logged, and how many since.
    logged: Option<(Instant, u64)>,
}

impl Accept {
    async fn next(&mut self) -> Bounded {
        let mut backoff = Duration::from_millis(5);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let open = self.open.load(Ordering::Relaxed);
                    if self.limits.max_connections > 0 && open >= self.limits.max_connections {
                        self.metrics.connections_closed.with_label_values(&["limit"]).inc();
                        let max = self.limits.max_connections;
                        self.log(|n| {
                            tracing::warn!(
                                max_connections = max,
                                refused = n,
                                "connection limit reached: new connections are closed at once"
                            )
                        });
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    return Bounded::new(stream, self.limits, self.metrics.clone(), self.open.clone());
                }
                Err(e) => {
                    // Out of descriptors or memory: wait for some to free
                    // instead of spinning on the same error.
                    self.metrics.connections_closed.with_label_values(&["accept_error"]).inc();
                    self.log(|n| tracing::error!(error = %e, errors = n, backoff_ms = backoff.as_millis() as u64, "accepting a connection failed"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Logs through `log` (given the count since the last line) at most
    /// once every `LOG_EVERY`.
    fn log(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        match &mut self.logged {
            Some((at, count)) if now.duration_since(*at) < LOG_EVERY => *count += 1,
            _ => {
                let count = self.logged.map_or(1, |(_, n)| n + 1);
                self.logged = Some((now, 0));
                log(count);
            }
        }
    }
}

/// A connection that closes itself (an error to the HTTP/2 server) when it
/// sends nothing in time, and counts itself open until dropped.
pub struct Bounded {
    inner: TcpStream,
    /// Runs out at the handshake deadline, then at each idle deadline.
    timer: Pin<Box<Sleep>>,
    limits: ConnectionLimits,
    /// Bytes received, counted up to `GREETING` (then the handshake is over).
    received: usize,
    /// When the last byte arrived.
    last_heard: Instant,
    metrics: Arc<Metrics>,
    open: Arc<AtomicUsize>,
}

impl Bounded {
    fn new(inner: TcpStream, limits: ConnectionLimits, metrics: Arc<Metrics>, open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics.connections_open.inc();
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(limits.handshake_timeout)),
            limits,
            received: 0,
            last_heard: Instant::now(),
            metrics,
            open,
        }
    }

    fn greeted(&self) -> bool {
        self.received >= GREETING
    }

    /// Whether the connection stayed silent past its deadline: the whole
    /// greeting within `handshake_timeout` of opening, then a byte at least
    /// every `idle_timeout`.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.greeted() {
                let deadline = self.last_heard + self.limits.idle_timeout;
                if Instant::now() < deadline {
                    self.timer.as_mut().reset(deadline);
                    continue;
                }
            }
            let (reason, what) = if self.greeted() {
                ("idle", "idle connection closed")
            } else {
                ("handshake_timeout", "handshake timed out")
            };
            self.metrics.connections_closed.with_label_values(&[reason]).inc();
            let peer = self.inner.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::debug!(%peer, "{what}");
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, what));
        }
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections_open.dec();
    }
}

impl Connected for Bounded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for Bounded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    let was_greeted = self.greeted();
                    self.received = (self.received + n).min(GREETING);
                    self.last_heard = Instant::now();
                    if !was_greeted && self.greeted() {
                        let next = self.last_heard + self.limits.idle_timeout;
                        self.timer.as_mut().reset(next);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_silence(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
