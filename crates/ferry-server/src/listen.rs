//! One accept loop for every listener (PRODUCT.md invariant 13: nothing a node or its
//! users can do exhausts the server): the admin unix socket, the provisioning listener
//! (plain and TLS), the remote admin listener and the tunnel datasource.
//!
//! Per connection:
//! - **header timeout**: a request's head must arrive within it of the connection (or of
//!   the previous answer on it: hyper restarts the timer whenever it waits for a head),
//!   so silent, slow (slowloris) and idle keep-alive connections end;
//! - **idle timeout**: no byte moved either way and no request being handled for that
//!   long ends the connection (a client that stops reading a streamed artifact);
//! - **caps**: at most `max_per_source` connections per source (the TCP peer's address,
//!   or the peer's uid on the unix socket) and `max_total` in all; a connection over
//!   either is closed as soon as it is accepted, counted in
//!   `ferry_connections_refused_total`, and logged at most once per second;
//! - a [`ConnectionWatcher`] may close it from outside (the datasource closes a
//!   tunnel's connections when the tunnel ends).
//!
//! The timeout on a whole request is a layer of each router (it answers 408).

use crate::metrics::{ConnectionLabel, ListenerLabel, Metrics};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

/// Largest request head (request line and headers) the listeners read; above it 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Both ends of a TCP connection: the remote is the caller, the local address is the
/// one the node reached us on (the default WireGuard endpoint to hand back).
#[derive(Debug, Clone, Copy)]
pub struct TcpConn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The credentials of the process at the other end of the admin socket (SO_PEERCRED).
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

/// A listening socket [`serve`] accepts connections from.
pub trait Incoming: Send + Sync + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What each request carries as `ConnectInfo`.
    type Info: Clone + Send + Sync + 'static;
    /// Whom the per-source cap counts.
    type Source: Hash + Eq + Clone + std::fmt::Debug + Send + Sync + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<(Self::Io, Self::Info, Self::Source)>> + Send;
}

impl Incoming for TcpListener {
    type Io = tokio::net::TcpStream;
    type Info = TcpConn;
    type Source = IpAddr;
    async fn accept(&self) -> std::io::Result<(Self::Io, TcpConn, IpAddr)> {
        let (stream, remote) = TcpListener::accept(self).await?;
        let local = stream.local_addr().unwrap_or(remote);
        Ok((stream, TcpConn { local, remote }, remote.ip().to_canonical()))
    }
}

impl Incoming for UnixListener {
    type Io = tokio::net::UnixStream;
    type Info = PeerCred;
    type Source = Option<u32>;
    async fn accept(&self) -> std::io::Result<(Self::Io, PeerCred, Option<u32>)> {
        let (stream, _) = UnixListener::accept(self).await?;
        let cred = match stream.peer_cred() {
            Ok(c) => PeerCred { uid: Some(c.uid()), pid: c.pid() },
            Err(_) => PeerCred { uid: None, pid: None },
        };
        Ok((stream, cred, cred.uid))
    }
}

/// A listener's timeouts and connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_per_source: usize,
    pub max_total: usize,
}

impl ConnLimits {
    /// From a config section's values (seconds, counts), each at least 1
    /// ([`crate::Config::validate`]).
    pub fn new(header_timeout_secs: u64, idle_timeout_secs: u64, max_per_source: usize, max_total: usize) -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(header_timeout_secs),
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            max_per_source,
            max_total,
        }
    }
}

/// The admin listeners' limits (the unix socket counts per uid; only admins can
/// connect to either, so these only stop runaway clients).
pub const ADMIN_LIMITS: ConnLimits = ConnLimits {
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    max_per_source: 256,
    max_total: 1024,
};

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    PerSource,
    Total,
}

impl Cap {
    fn as_str(self) -> &'static str {
        match self {
            Cap::PerSource => "per-source",
            Cap::Total => "total",
        }
    }
}

/// The open connections of one listener (or of several sharing the caps, like the
/// plain and TLS provisioning listeners), by source.
pub struct ConnCaps<S: Hash + Eq> {
    listener: &'static str,
    limits: ConnLimits,
    open: Mutex<(usize, HashMap<S, usize>)>,
    metrics: Arc<Metrics>,
    /// Milliseconds (of [`now_ms`]) of the last refusal logged.
    last_log_ms: AtomicU64,
}

impl<S: Hash + Eq + Clone + std::fmt::Debug> ConnCaps<S> {
    pub fn new(listener: &'static str, limits: ConnLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(ConnCaps {
            listener,
            limits,
            open: Mutex::new((0, HashMap::new())),
            metrics,
            last_log_ms: AtomicU64::new(0),
        })
    }

    /// A place for one more connection from `source`, held until the guard drops.
    pub fn admit(self: &Arc<Self>, source: &S) -> Result<Admission<S>, Cap> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *open;
        if *total >= self.limits.max_total {
            return Err(Cap::Total);
        }
        let n = by_source.entry(source.clone()).or_insert(0);
        if *n >= self.limits.max_per_source {
            return Err(Cap::PerSource);
        }
        *n += 1;
        *total += 1;
        self.metrics.connections_open.get_or_create(&ListenerLabel { listener: self.listener }).inc();
        self.metrics.connections_accepted.get_or_create(&ListenerLabel { listener: self.listener }).inc();
        Ok(Admission { caps: self.clone(), source: source.clone() })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn label(&self, cause: &'static str) -> ConnectionLabel {
        ConnectionLabel { listener: self.listener, cause }
    }

    /// Counts a refusal; logs at most one a second per listener.
    fn refused(&self, cap: Cap, source: &S) {
        self.metrics.connections_refused.get_or_create(&self.label(cap.as_str())).inc();
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self.last_log_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let (limit, key) = match cap {
                Cap::PerSource => (self.limits.max_per_source, "max_connections_per_source"),
                Cap::Total => (self.limits.max_total, "max_connections"),
            };
            tracing::warn!(
                listener = self.listener,
                ?source,
                cap = cap.as_str(),
                limit,
                "connection refused: {limit} connections already open (`{key}`); further refusals are counted in \
                 ferry_connections_refused_total and logged at most once a second"
            );
        }
    }
}

/// One admitted connection's place under the caps.
pub struct Admission<S: Hash + Eq + Clone + std::fmt::Debug> {
    caps: Arc<ConnCaps<S>>,
    source: S,
}

impl<S: Hash + Eq + Clone + std::fmt::Debug> Drop for Admission<S> {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
        self.caps.metrics.connections_open.get_or_create(&ListenerLabel { listener: self.caps.listener }).dec();
    }
}

/// Told of every admitted connection, so it can close the connection from outside.
pub trait ConnectionWatcher<I>: Send + Sync + 'static {
    /// `close` ends the connection; what is returned is kept for the connection's life
    /// and dropped when it ends.
    fn connected(&self, info: &I, close: CancellationToken) -> Box<dyn Send + Sync>;
}

/// A listener and what [`serve`] needs to run it.
pub struct Listener<L: Incoming> {
    /// For logs and metrics (`provisioning`, `datasource`, ...).
    pub name: &'static str,
    pub incoming: L,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub caps: Arc<ConnCaps<L::Source>>,
    pub watcher: Option<Arc<dyn ConnectionWatcher<L::Info>>>,
}

/// Milliseconds since the first call: a monotonic clock cheap to store in an atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection last moved a byte, and how many of its requests are being handled.
struct Activity {
    last_io_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity { last_io_ms: AtomicU64::new(now_ms()), in_flight: AtomicUsize::new(0) })
    }

    fn touch(&self) {
        self.last_io_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Resolves once nothing moved and no request was being handled for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let quiet = Duration::from_millis(now_ms().saturating_sub(self.last_io_ms.load(Ordering::Relaxed)));
            let busy = self.in_flight.load(Ordering::Relaxed) > 0;
            if !busy && quiet >= limit {
                return;
            }
            let wait = if busy { limit } else { limit - quiet };
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }
}

/// A request being handled (the handler has not answered yet).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: &Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(a.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// The connection's socket, recording when bytes move.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a connection ended.
enum Ended {
    /// The client closed it, or hyper did (header timeout, protocol error).
    Served(Result<(), hyper::Error>),
    Idle,
    /// Closed from outside ([`ConnectionWatcher`]).
    Closed,
    TlsFailed(String),
}

async fn run<C: GracefulConnection<Error = hyper::Error>>(
    conn: C,
    watcher: Watcher,
    activity: &Activity,
    idle: Duration,
    close: &CancellationToken,
) -> Ended {
    tokio::select! {
        r = watcher.watch(conn) => Ended::Served(r),
        () = activity.idle_for(idle) => Ended::Idle,
        () = close.cancelled() => Ended::Closed,
    }
}

/// Serves `app` on the listener until `stopped` (HTTP/1.1). Each request carries
/// `ConnectInfo<L::Info>`. On stop it accepts no more connections and lets open ones
/// finish, for up to `drain`.
pub async fn serve<L: Incoming>(
    listener: Listener<L>,
    app: Router,
    drain: Duration,
    stopped: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let Listener { name, incoming, tls, caps, watcher } = listener;
    let limits = caps.limits;
    let mut http = hyper::server::conn::http1::Builder::new();
    // Request heads above 64 KiB are refused (431); bodies have their own limits per route.
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).max_header_size(MAX_HEAD_BYTES);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stopped);
    loop {
        let (io, info, source) = tokio::select! {
            accepted = incoming.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(name, e).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        let admission = match caps.admit(&source) {
            Ok(a) => a,
            Err(cap) => {
                // Dropping the socket closes it: the client sees its connection end at once.
                caps.refused(cap, &source);
                continue;
            }
        };
        let close = CancellationToken::new();
        let registration = watcher.as_ref().map(|w| w.connected(&info, close.clone()));
        let activity = Activity::new();
        let io = Tracked { inner: io, activity: activity.clone() };
        let service = {
            let (app, activity) = (app.clone(), activity.clone());
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(info.clone()));
                let in_flight = InFlight::new(&activity);
                // A Router is always ready, so `call` needs no `poll_ready` first.
                let answer = tower::Service::call(&mut app.clone(), req);
                async move {
                    let r = answer.await;
                    drop(in_flight);
                    r
                }
            })
        };
        let (http, conn_watcher, tls, metrics) = (http.clone(), graceful.watcher(), tls.clone(), caps.metrics.clone());
        tokio::spawn(async move {
            let _held = (admission, registration);
            let ended = match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(io), service);
                    run(conn, conn_watcher, &activity, limits.idle_timeout, &close).await
                }
                // The handshake runs in the connection's task, under the header timeout,
                // so a slow or silent TLS client holds up no one.
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(stream)) => {
                        let conn = http.serve_connection(TokioIo::new(stream), service);
                        run(conn, conn_watcher, &activity, limits.idle_timeout, &close).await
                    }
                    Ok(Err(e)) => Ended::TlsFailed(e.to_string()),
                    Err(_) => Ended::TlsFailed("timed out".into()),
                },
            };
            let cut = |cause| metrics.connections_cut.get_or_create(&ConnectionLabel { listener: name, cause }).inc();
            match ended {
                Ended::Served(Ok(())) => {}
                Ended::Served(Err(e)) => {
                    tracing::debug!(listener = name, source = ?source, error = %e, "connection ended with an error")
                }
                Ended::Idle => {
                    cut("idle");
                    tracing::debug!(listener = name, source = ?source, "connection closed: idle");
                }
                Ended::Closed => {
                    cut("closed");
                    tracing::debug!(listener = name, source = ?source, "connection closed: its tunnel ended");
                }
                Ended::TlsFailed(e) => {
                    tracing::debug!(listener = name, source = ?source, error = %e, "TLS handshake failed")
                }
            }
        });
    }
    drop(incoming);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = name, "connections still open after {} s; closing them", drain.as_secs());
    }
    Ok(())
}

/// Errors of one connection (reset before accept) are the client's business; others
/// (out of file descriptors) are logged and retried after a pause, as axum::serve does.
async fn accept_error(listener: &str, e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(listener, error = %e, "cannot accept a connection; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Raises this process's soft limit on open files to its hard limit (systemd starts
/// services with a soft limit of 1,024), and says whether the listeners' caps fit.
pub fn raise_open_files_limit(caps_total: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    // Room for the store, the device, logs and the connections' own bookkeeping.
    let needed = caps_total.saturating_add(1024);
    if hard < needed {
        tracing::warn!(
            limit = hard,
            needed,
            "the open-files limit is below what the connection caps allow; raise LimitNOFILE= (systemd) or \
             lower max_connections"
        );
    }
    Ok(hard)
}

#[cfg(test)]
#[path = "listen_tests.rs"]
mod tests;
