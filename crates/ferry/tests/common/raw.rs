//! Raw HTTP/1.1 to the provisioning listener from inside a node's network namespace:
//! what an attacker on the provisioning network can send, byte for byte.

use super::cluster::SERVER_IP;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Runs `f` on a thread inside network namespace `ns`: its sockets, and the processes
/// it spawns, live there.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

pub fn connect() -> TcpStream {
    let s = TcpStream::connect((SERVER_IP, 8470)).expect("connect to the provisioning listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One HTTP/1.1 exchange on a new connection (call inside a node's namespace).
pub fn exchange(request: &[u8]) -> Reply {
    let mut s = connect();
    s.write_all(request).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the answer");
    parse(&raw)
}

pub fn parse(raw: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    let retry_after = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
        .map(|(_, v)| v.trim().parse().expect("Retry-After in seconds"));
    Reply { status, retry_after, body: body.to_owned() }
}

/// A JSON POST with extra header lines (each ending in `\r\n`).
pub fn post(path: &str, headers: &str, body: &str) -> Reply {
    post_bytes(path, headers, body.as_bytes())
}

pub fn post_bytes(path: &str, headers: &str, body: &[u8]) -> Reply {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {SERVER_IP}:8470\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    exchange(&[head.as_bytes(), body].concat())
}

pub fn challenge() -> Reply {
    post("/v1/enroll/challenge", "", "")
}

pub fn get(path: &str) -> Reply {
    exchange(format!("GET {path} HTTP/1.1\r\nHost: {SERVER_IP}:8470\r\nConnection: close\r\n\r\n").as_bytes())
}

/// `n` GETs of `path` on one keep-alive connection to `addr` (reconnecting if the server
/// closes it); the status of each. Call inside the right network namespace.
pub fn get_keep_alive(addr: &str, path: &str, n: usize) -> Vec<u16> {
    use std::io::{BufRead, BufReader};
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut statuses = Vec::with_capacity(n);
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut failures = 0;
    while statuses.len() < n {
        assert!(failures < 100, "the server closed 100 connections in a row without an answer");
        let reader = conn.get_or_insert_with(|| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            BufReader::new(s)
        });
        if reader.get_mut().write_all(request.as_bytes()).is_err() {
            (conn, failures) = (None, failures + 1);
            continue;
        }
        let (mut line, mut status, mut length, mut close) = (String::new(), None, 0usize, false);
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status.is_none() {
                status = l.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
            } else if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let Some(status) = status else {
            (conn, failures) = (None, failures + 1);
            continue;
        };
        failures = 0;
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("read the body");
        statuses.push(status);
        if close {
            conn = None;
        }
    }
    statuses
}
