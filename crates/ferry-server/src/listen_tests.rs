//! The accept loop on loopback sockets: caps, idle connections, closing from outside.

use super::*;
use axum::routing::get;
use std::io::{Read, Write};

/// Timeouts far beyond the tests' length, but for `idle_secs`.
fn limits(per_source: usize, total: usize, idle_secs: u64) -> ConnLimits {
    ConnLimits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(idle_secs),
        max_per_source: per_source,
        max_total: total,
    }
}

/// Remembers every connection's close token.
#[derive(Default)]
struct Tokens(Mutex<Vec<CancellationToken>>);

impl ConnectionWatcher<TcpConn> for Tokens {
    fn connected(&self, _: &TcpConn, close: CancellationToken) -> Box<dyn Send + Sync> {
        self.0.lock().unwrap().push(close);
        Box::new(())
    }
}

struct Running {
    addr: SocketAddr,
    caps: Arc<ConnCaps<IpAddr>>,
    metrics: Arc<Metrics>,
    tokens: Arc<Tokens>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves a router with `/` (a short answer) and `/big` (64 MiB) on 127.0.0.1.
async fn start(limits: ConnLimits) -> Running {
    let incoming = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = incoming.local_addr().unwrap();
    let metrics = Arc::new(Metrics::default());
    let caps = ConnCaps::new("test", limits, metrics.clone());
    let tokens = Arc::new(Tokens::default());
    let app = Router::new().route("/", get(|| async { "ok" })).route("/big", get(|| async { vec![b'x'; 64 << 20] }));
    let watcher: Arc<dyn ConnectionWatcher<TcpConn>> = tokens.clone();
    let listener = Listener { name: "test", incoming, tls: None, caps: caps.clone(), watcher: Some(watcher) };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, app, Duration::from_secs(1), async move {
        let _ = stopped.await;
    }));
    Running { addr, caps, metrics, tokens, _stop: stop }
}

/// Whether the server closed the connection (EOF or reset) within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_source_cap_are_closed_at_once_and_places_come_back() {
    let r = start(limits(3, 100, 30)).await;
    let addr = r.addr;
    let mut conns: Vec<std::net::TcpStream> = (0..5).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    eventually("three admitted", || r.caps.open() == 3).await;
    let closed: Vec<bool> = tokio::task::spawn_blocking(move || {
        let c = conns.iter_mut().map(|s| closed_within(s, Duration::from_millis(300))).collect();
        (c, conns)
    })
    .await
    .map(|(c, held): (Vec<bool>, Vec<std::net::TcpStream>)| {
        drop(held);
        c
    })
    .unwrap();
    assert_eq!(closed, [false, false, false, true, true], "the first three stay, the surplus is closed");
    let refused =
        r.metrics.connections_refused.get_or_create(&ConnectionLabel { listener: "test", cause: "per-source" }).get();
    assert_eq!(refused, 2);
    // All five were dropped by the client: the places are given back.
    eventually("places given back", || r.caps.open() == 0).await;
    let ok = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("ok"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_cap_holds_across_sources() {
    let r = start(limits(10, 2, 30)).await;
    let addr = r.addr;
    let held = tokio::task::spawn_blocking(move || {
        let mut conns: Vec<std::net::TcpStream> = (0..3).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        let closed: Vec<bool> = conns.iter_mut().map(|s| closed_within(s, Duration::from_millis(300))).collect();
        (closed, conns)
    })
    .await
    .unwrap();
    assert_eq!(held.0, [false, false, true]);
    let refused =
        r.metrics.connections_refused.get_or_create(&ConnectionLabel { listener: "test", cause: "total" }).get();
    assert_eq!(refused, 1);
}

/// A client that asks for a big answer and stops reading: nothing moves, no request is
/// in progress (the handler answered; the body is stuck in the socket), so the idle
/// timeout (1 s here; the header timeout is 30 s) closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() {
    let r = start(limits(10, 10, 1)).await;
    let addr = r.addr;
    let stalled = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s
    })
    .await
    .unwrap();
    eventually("the connection to be admitted", || r.caps.open() == 1).await;
    let started = Instant::now();
    eventually("the stalled connection to be closed", || r.caps.open() == 0).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    let idle = r.metrics.connections_cut.get_or_create(&ConnectionLabel { listener: "test", cause: "idle" }).get();
    assert_eq!(idle, 1);
    drop(stalled);
}

/// A watcher's token closes the connection at once (the datasource does it when the
/// caller's tunnel ends), long before any timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_closes_a_connection_from_outside() {
    let r = start(limits(10, 10, 30)).await;
    let addr = r.addr;
    let mut kept = tokio::task::spawn_blocking(move || std::net::TcpStream::connect(addr).unwrap()).await.unwrap();
    eventually("the connection to be registered", || r.tokens.0.lock().unwrap().len() == 1).await;
    r.tokens.0.lock().unwrap()[0].cancel();
    let closed = tokio::task::spawn_blocking(move || closed_within(&mut kept, Duration::from_secs(2))).await.unwrap();
    assert!(closed, "closed by its token");
    eventually("its place given back", || r.caps.open() == 0).await;
}

/// A soft limit below the hard one (systemd's 1,024) is raised to the hard one.
#[test]
fn the_open_files_soft_limit_is_raised_to_the_hard_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // 1,024 like systemd (the other tests of this binary run meanwhile and need files).
    setrlimit(Resource::RLIMIT_NOFILE, 1024.min(hard - 1), hard).unwrap();
    assert_eq!(raise_open_files_limit(0).unwrap(), hard);
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
}
