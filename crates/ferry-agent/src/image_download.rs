//! Downloading an image's root archive from the provisioning listener into a file,
//! hashing it on the way, resuming a broken transfer with `Range` (and `If-Range`, so a
//! resumed transfer never mixes two versions). The caller unpacks only a file whose
//! size and SHA-256 are what the server said inside the tunnel: a substituted, altered
//! or truncated archive is refused before anything is unpacked.
//!
//! Why not through the tunnel: the archive is already sealed (encrypted and
//! authenticated) and its digest comes through the tunnel; carrying gigabytes through
//! the server's userspace WireGuard costs the server CPU per byte for nothing
//! (docs/performance.md, "Image transport").

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use sha2::Digest;

use crate::error::AgentError;
use crate::retry::{Deadline, RetryPolicy};

/// No byte for this long: the connection is given up and the transfer resumed.
const STALL: Duration = Duration::from_secs(30);
/// Bytes gathered before each write to the file.
const WRITE: usize = 1 << 20;

/// What to download and what it must be.
pub struct Download<'a> {
    pub url: String,
    pub tls_pins: &'a [[u8; 32]],
    pub size: u64,
    pub sha256: &'a str,
    pub file: &'a Path,
}

/// How one attempt ended.
enum Attempt {
    Complete,
    /// Worth another try (from where the file ends): why, and the server's Retry-After.
    Retry(String, Option<Duration>),
}

fn refused(d: &Download<'_>, why: String) -> AgentError {
    AgentError::ImageRefused(format!("the image root at {} {why}", d.url))
}

/// Downloads `d` into `d.file` (created 0600, replaced), retrying and resuming until
/// `deadline`; returns the seconds it took. A transfer that moves keeps going past the
/// deadline; only a new attempt must start before it.
pub async fn download(d: &Download<'_>, deadline: &Deadline, retry: &mut RetryPolicy) -> Result<f64, AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let started = Instant::now();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(d.file)
        .map_err(|e| AgentError::io_path("create", d.file, e))?;
    let mut state = Progress { hash: sha2::Sha256::new(), written: 0 };
    loop {
        let result = attempt(d, &mut file, &mut state).await?;
        match result {
            Attempt::Complete => break,
            Attempt::Retry(why, after) => {
                tracing::warn!("downloading the image root: {why}; resuming at byte {}", state.written);
                if !retry.wait(after, deadline).await {
                    return Err(AgentError::Fetch(format!(
                        "the image root {} could not be downloaded within the --timeout of {} s (last error: {why})",
                        d.url,
                        deadline.total().as_secs()
                    )));
                }
            }
        }
    }
    file.sync_all().map_err(|e| AgentError::io_path("write", d.file, e))?;
    let got = format!("{:x}", state.hash.finalize());
    if got != d.sha256 {
        return Err(refused(
            d,
            format!(
                "has sha256:{got}, but the server said sha256:{} inside the tunnel: it was substituted or altered on \
                 the way; refused, nothing unpacked",
                d.sha256
            ),
        ));
    }
    Ok(started.elapsed().as_secs_f64())
}

struct Progress {
    hash: sha2::Sha256,
    written: u64,
}

/// One request: the whole archive, or the rest of it.
async fn attempt(d: &Download<'_>, file: &mut std::fs::File, p: &mut Progress) -> Result<Attempt, AgentError> {
    let resp = match tokio::time::timeout(STALL, request(d, p.written)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Ok(Attempt::Retry(e, None)),
        Err(_) => return Ok(Attempt::Retry("no answer (timed out)".into(), None)),
    };
    let status = resp.status().as_u16();
    let header = |name: hyper::header::HeaderName| {
        resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default()
    };
    match status {
        200 => {
            if p.written > 0 {
                // The server sent everything again (a new version, or no ranges): restart.
                file.set_len(0).map_err(|e| AgentError::io_path("truncate", d.file, e))?;
                std::io::Seek::rewind(file).map_err(|e| AgentError::io_path("rewind", d.file, e))?;
                *p = Progress { hash: sha2::Sha256::new(), written: 0 };
            }
            let length = header(hyper::header::CONTENT_LENGTH);
            if length != d.size.to_string() {
                return Err(refused(d, format!("is {length} bytes, but the server said {} inside the tunnel", d.size)));
            }
        }
        206 => {
            let expected = format!("bytes {}-{}/{}", p.written, d.size.saturating_sub(1), d.size);
            let range = header(hyper::header::CONTENT_RANGE);
            if range != expected {
                return Err(refused(
                    d,
                    format!("answered {range:?} to a resume at {} (expected {expected:?})", p.written),
                ));
            }
        }
        416 if p.written == d.size => return Ok(Attempt::Complete),
        429 | 500..=599 => {
            let after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::http::parse_retry_after(v, std::time::SystemTime::now()));
            return Ok(Attempt::Retry(format!("HTTP {status}"), after));
        }
        _ => {
            return Err(AgentError::Fetch(format!(
                "the image root {} answered HTTP {status}: is the image's root still in the server's object store? \
                 (`ferry image verify` on the server)",
                d.url
            )))
        }
    }
    let mut body = resp.into_body();
    let mut buf = Vec::with_capacity(WRITE);
    let result = loop {
        let frame = match tokio::time::timeout(STALL, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break Ok(()),
            Ok(Some(Err(e))) => break Err(format!("the transfer broke: {e}")),
            Err(_) => break Err(format!("no data for {} s", STALL.as_secs())),
        };
        let Ok(data) = frame.into_data() else { continue };
        if p.written + (buf.len() + data.len()) as u64 > d.size {
            return Err(refused(d, format!("sends more than the {} bytes the server said inside the tunnel", d.size)));
        }
        buf.extend_from_slice(&data);
        if buf.len() >= WRITE {
            flush(d, file, p, &mut buf)?;
        }
    };
    flush(d, file, p, &mut buf)?;
    match result {
        Ok(()) if p.written == d.size => Ok(Attempt::Complete),
        Ok(()) => Ok(Attempt::Retry(format!("the transfer ended at byte {} of {}", p.written, d.size), None)),
        Err(why) => Ok(Attempt::Retry(why, None)),
    }
}

fn flush(d: &Download<'_>, file: &mut std::fs::File, p: &mut Progress, buf: &mut Vec<u8>) -> Result<(), AgentError> {
    if buf.is_empty() {
        return Ok(());
    }
    file.write_all(buf).map_err(|e| AgentError::io_path("write", d.file, e))?;
    p.hash.update(&buf[..]);
    p.written += buf.len() as u64;
    buf.clear();
    Ok(())
}

/// Sends the GET (from byte `from`) and returns the answer's head; the body streams.
async fn request(d: &Download<'_>, from: u64) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let uri: Uri = d.url.parse().map_err(|e| format!("invalid URL {}: {e}", d.url))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("only http:// and https:// URLs are supported, not {}", d.url)),
    };
    let authority = uri.authority().ok_or_else(|| format!("no host in {}", d.url))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", d.url))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut builder = hyper::Request::builder()
        .method(hyper::Method::GET)
        .uri(target)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::USER_AGENT, concat!("ferry-agent/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONNECTION, "close");
    if from > 0 {
        builder = builder
            .header(hyper::header::RANGE, format!("bytes={from}-"))
            .header(hyper::header::IF_RANGE, format!("\"{}\"", d.sha256));
    }
    let req = builder.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    if !https {
        return send(stream, req).await;
    }
    if d.tls_pins.is_empty() {
        return Err(format!("{} is https but no certificate is pinned (ferry.tls=)", d.url));
    }
    let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| format!("invalid host in {}: {e}", d.url))?;
    let tls = tokio_rustls::TlsConnector::from(crate::http::pinned_tls(d.tls_pins.to_vec()))
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS with {}: {e}", d.url))?;
    send(tls, req).await
}

async fn send<S>(stream: S, req: hyper::Request<Empty<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("image download connection ended: {e}");
        }
    });
    sender.send_request(req).await.map_err(|e| format!("request failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each connection with the next of `replies` (built from the
    /// request it read) and records the requests.
    /// One answer, built from the request it answers.
    type Reply = Box<dyn Fn(&str) -> Vec<u8> + Send>;

    async fn server(replies: Vec<Reply>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in replies {
                let (mut s, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.expect("read");
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = s.write_all(&reply(&req)).await;
                seen.push(req);
            }
            seen
        });
        (format!("http://{addr}/boot/images/i/root"), task)
    }

    fn sha(data: &[u8]) -> String {
        format!("{:x}", sha2::Sha256::digest(data))
    }

    fn answer(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n{headers}\r\n").into_bytes();
        r.extend_from_slice(body);
        r
    }

    async fn run(url: String, data: &[u8], sha256: &str) -> (Result<f64, AgentError>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("image.part");
        let d = Download { url, tls_pins: &[], size: data.len() as u64, sha256, file: &file };
        let deadline = Deadline::after(Duration::from_secs(20));
        let mut retry = RetryPolicy::new(Duration::from_millis(10), Duration::from_millis(50));
        let r = download(&d, &deadline, &mut retry).await;
        (r, std::fs::read(&file).unwrap_or_default())
    }

    #[tokio::test]
    async fn a_broken_transfer_resumes_where_it_stopped() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (first, rest) = (data[..40_000].to_vec(), data[40_000..].to_vec());
        let len = data.len();
        let (url, server) = server(vec![
            // Announces everything, sends 40,000 bytes, closes.
            Box::new(move |_| answer("200 OK", &format!("Content-Length: {len}\r\n"), &first)),
            Box::new(move |_| {
                let range =
                    format!("Content-Range: bytes 40000-{}/{len}\r\nContent-Length: {}\r\n", len - 1, rest.len());
                answer("206 Partial Content", &range, &rest)
            }),
        ])
        .await;
        let (result, got) = run(url, &data, &sha(&data)).await;
        result.expect("downloaded");
        assert_eq!(got, data);
        let seen = server.await.unwrap();
        assert!(seen[1].contains("range: bytes=40000-") || seen[1].contains("Range: bytes=40000-"), "{}", seen[1]);
        assert!(seen[1].to_ascii_lowercase().contains(&format!("if-range: \"{}\"", sha(&data))), "{}", seen[1]);
    }

    #[tokio::test]
    async fn a_substituted_or_wrongly_sized_archive_is_refused() {
        let data = b"the real sealed image".to_vec();
        let forged = b"a forged sealed image".to_vec();
        let len = forged.len();
        let (url, _s) =
            server(vec![Box::new(move |_| answer("200 OK", &format!("Content-Length: {len}\r\n"), &forged))]).await;
        let (result, _) = run(url, &data, &sha(&data)).await;
        let err = result.expect_err("a different digest");
        assert_eq!(err.exit_code(), 7, "{err}");
        assert!(err.to_string().contains("nothing unpacked"), "{err}");

        let (url, _s) = server(vec![Box::new(|_| answer("200 OK", "Content-Length: 5\r\n", b"short"))]).await;
        let (result, _) = run(url, &data, &sha(&data)).await;
        let err = result.expect_err("another size");
        assert_eq!(err.exit_code(), 7, "{err}");
    }
}
