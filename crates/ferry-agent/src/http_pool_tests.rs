//! The real transport against a small HTTP/1.1 server on loopback that counts the
//! connections it accepts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{HyperTransport, Request, Transport};

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers every request of a connection (HTTP/1.1 keep-alive).
    KeepAlive,
    /// Answers with `Connection: close` and closes.
    CloseEach,
    /// Answers the first request of a connection, then reads the next and closes
    /// without answering (a kept connection broken under the client).
    AnswerOnce,
}

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    requests: Mutex<Vec<String>>,
}

/// Serves on loopback until the test ends; returns its base URL and counts.
async fn server(behaviour: Behaviour) -> (String, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let counts = Arc::new(Counts::default());
    let seen = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, behaviour, seen.clone()));
        }
    });
    (base, counts)
}

async fn serve(mut s: TcpStream, behaviour: Behaviour, counts: Arc<Counts>) {
    let mut buf = Vec::new();
    for answered in 0.. {
        let Some(line) = read_request(&mut s, &mut buf).await else { return };
        counts.requests.lock().expect("lock").push(line);
        let close = match behaviour {
            Behaviour::KeepAlive => false,
            Behaviour::CloseEach => true,
            Behaviour::AnswerOnce if answered > 0 => return,
            Behaviour::AnswerOnce => false,
        };
        let header = if close { "Connection: close\r\n" } else { "" };
        let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n{header}\r\nok\n");
        if s.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// One request (head and `Content-Length` body) from `s`: its request line.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..head_end + len);
    Some(head.lines().next().unwrap_or("").to_owned())
}

fn get(base: &str, path: &str) -> Request {
    Request::get(format!("{base}{path}"), Duration::from_secs(5))
}

fn post(base: &str, path: &str) -> Request {
    Request::post(format!("{base}{path}"), Some(b"{}".to_vec()), Duration::from_secs(5))
}

fn requests(counts: &Counts) -> Vec<String> {
    counts.requests.lock().expect("lock").clone()
}

#[tokio::test]
async fn the_requests_of_a_boot_share_one_connection() {
    let (base, counts) = server(Behaviour::KeepAlive).await;
    let transport = HyperTransport::default();
    for name in ["/meta-data", "/user-data", "/vendor-data", "/network-config"] {
        let resp = transport.send(get(&base, name)).await.expect("answer");
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok\n"[..]));
    }
    transport.send(post(&base, "/phone-home")).await.expect("phone-home");
    assert_eq!(requests(&counts).len(), 5);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1, "five requests, one connection");
}

#[tokio::test]
async fn a_server_that_closes_each_connection_still_answers_every_request() {
    let (base, counts) = server(Behaviour::CloseEach).await;
    let transport = HyperTransport::default();
    for _ in 0..3 {
        transport.send(get(&base, "/meta-data")).await.expect("answer");
        // Let the client see the close before the next request, as between documents.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    transport.send(post(&base, "/phone-home")).await.expect("phone-home on a new connection");
    assert_eq!(counts.connections.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_get_on_a_broken_kept_connection_is_sent_again_on_a_new_one() {
    let (base, counts) = server(Behaviour::AnswerOnce).await;
    let transport = HyperTransport::default();
    transport.send(get(&base, "/meta-data")).await.expect("first answer");
    let resp = transport.send(get(&base, "/user-data")).await.expect("answered on a new connection");
    assert_eq!(resp.status, 200);
    assert_eq!(requests(&counts), ["GET /meta-data HTTP/1.1", "GET /user-data HTTP/1.1", "GET /user-data HTTP/1.1"]);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_post_written_on_a_broken_kept_connection_is_not_sent_again() {
    let (base, counts) = server(Behaviour::AnswerOnce).await;
    let transport = HyperTransport::default();
    transport.send(get(&base, "/meta-data")).await.expect("first answer");
    let err = transport.send(post(&base, "/phone-home")).await.expect_err("the server took it and closed");
    assert!(err.0.contains("request failed"), "{err}");
    // The server may have acted on it: a repeated phone-home is refused (its tunnel is closed).
    assert_eq!(requests(&counts), ["GET /meta-data HTTP/1.1", "POST /phone-home HTTP/1.1"]);
    assert_eq!(counts.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn another_target_or_a_removed_tunnel_closes_the_kept_connection() {
    let (a, at_a) = server(Behaviour::KeepAlive).await;
    let (b, at_b) = server(Behaviour::KeepAlive).await;
    let transport = HyperTransport::default();
    for base in [&a, &a, &b, &a] {
        transport.send(get(base, "/meta-data")).await.expect("answer");
    }
    assert_eq!(at_a.connections.load(Ordering::SeqCst), 2, "the request to b closed a's connection");
    assert_eq!(at_b.connections.load(Ordering::SeqCst), 1);
    transport.drop_connections();
    transport.send(get(&a, "/meta-data")).await.expect("answer");
    assert_eq!(at_a.connections.load(Ordering::SeqCst), 3, "dropped with the tunnel");
}

#[tokio::test]
async fn a_request_cut_by_its_timeout_does_not_leave_its_connection_for_the_next() {
    // Answers the first request, then never answers the next one on that connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut next = 0;
                while read_request(&mut s, &mut buf).await.is_some() {
                    next += 1;
                    if next == 2 {
                        continue; // silent
                    }
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n").await;
                }
            });
        }
    });
    let transport = HyperTransport::default();
    transport.send(get(&base, "/a")).await.expect("answer");
    let slow = Request::get(format!("{base}/b"), Duration::from_millis(200));
    let err = transport.send(slow).await.expect_err("no answer");
    assert!(err.0.contains("timed out"), "{err}");
    transport.send(get(&base, "/c")).await.expect("answer on a new connection");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
