//! The HTTP calls the agent makes, behind a trait so the state machine can be tested
//! with a fake server. The real transport is a minimal HTTP/1.1 client over TCP (hyper)
//! that keeps one connection open for the next request (`http_pool.rs`).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

/// Largest response body accepted (cloud-init documents included).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Longest Retry-After honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest server error text repeated, in characters.
pub const MAX_ERROR_TEXT: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
}

/// One request. `json` is sent with `Content-Type: application/json` (`text/plain`
/// when [`Request::post_text`] made it); a POST without it has an empty body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub json: Option<Vec<u8>>,
    pub timeout: Duration,
    /// The interface the connection must leave through (`SO_BINDTODEVICE`): requests
    /// into the tunnel name its interface, so they never go anywhere else (not to a
    /// local address, not out of another interface).
    pub interface: Option<String>,
    /// The body is plain text, not JSON.
    pub text: bool,
}

impl Request {
    pub fn get(url: String, timeout: Duration) -> Self {
        Request { method: Method::Get, url, json: None, timeout, interface: None, text: false }
    }
    pub fn post(url: String, json: Option<Vec<u8>>, timeout: Duration) -> Self {
        Request { method: Method::Post, url, json, timeout, interface: None, text: false }
    }
    /// A POST of plain text (`text/plain; charset=utf-8`).
    pub fn post_text(url: String, text: String, timeout: Duration) -> Self {
        Request { text: true, ..Request::post(url, Some(text.into_bytes()), timeout) }
    }
    /// The same request, sent only through `interface`.
    pub fn via(mut self, interface: &str) -> Self {
        self.interface = Some(interface.to_string());
        self
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The `Retry-After` header, if present and valid.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
    /// The error text of a ferry error body, or the start of the body: at most
    /// [`MAX_ERROR_TEXT`] characters on one line, control characters (newlines, terminal
    /// escapes) replaced by spaces. It goes into the agent's errors and onto the console,
    /// and whoever answers (an impostor, anyone on the path of plain HTTP) chooses it.
    pub fn error_text(&self) -> String {
        let text = match serde_json::from_slice::<ferry_api::ApiError>(&self.body) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(&self.body[..self.body.len().min(4 * MAX_ERROR_TEXT)]).into_owned(),
        };
        text.trim().chars().take(MAX_ERROR_TEXT).map(|c| if c.is_control() { ' ' } else { c }).collect()
    }
}

/// The request did not complete (no route, refused, timed out, reset, oversized body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// Sends HTTP requests.
#[async_trait]
pub trait Transport: Send + Sync {
    async fn send(&self, req: Request) -> Result<Response, TransportError>;
    /// Closes any connection kept open for the next request (the tunnel it ran
    /// through is being removed).
    fn drop_connections(&self) {}
}

/// The real transport: HTTP/1.1 over TCP, or TLS for `https://` URLs, which need
/// `tls_pins`: the server's certificate is accepted if its SHA-256 is one of the pins,
/// and only then (no CA, no name check: the pin is the identity, as with `ferry.pubkey=`
/// for WireGuard). It keeps the last connection open and reuses it for the next request
/// to the same target (`http_pool.rs`).
#[derive(Debug, Clone, Default)]
pub struct HyperTransport {
    pub(crate) tls_pins: Vec<[u8; 32]>,
    pub(crate) idle: crate::http_pool::IdleSlot,
}

impl HyperTransport {
    pub fn new(tls_pins: Vec<[u8; 32]>) -> Self {
        HyperTransport { tls_pins, idle: Default::default() }
    }
}

#[async_trait]
impl Transport for HyperTransport {
    async fn send(&self, req: Request) -> Result<Response, TransportError> {
        let url = req.url.clone();
        // The kept connection is taken out for the request and put back only after a
        // complete answer: a request cut by the timeout drops its connection.
        match tokio::time::timeout(req.timeout, self.send_reusing(req)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError(format!("no answer from {url} (timed out)"))),
        }
    }

    fn drop_connections(&self) {
        self.idle.clear();
    }
}

/// A TCP connection to `target`, leaving only through `interface` when one is given.
pub(crate) async fn connect_via(
    target: std::net::SocketAddr,
    interface: Option<&str>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match target {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(name) = interface {
        socket.bind_device(Some(name.as_bytes())).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot bind the connection to interface {name}: {e}"))
        })?;
    }
    socket.connect(target).await
}

/// A TLS client that accepts exactly the pinned certificates.
pub(crate) fn pinned_tls(pins: Vec<[u8; 32]>) -> std::sync::Arc<rustls::ClientConfig> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = std::sync::Arc::new(PinnedCertificate { pins, provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// Certificate pinning: the end-entity certificate's SHA-256 must be a pin; the
/// handshake signatures are still verified, so only the key's holder gets through.
#[derive(Debug)]
struct PinnedCertificate {
    pins: Vec<[u8; 32]>,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let seen: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        // The pin is a public digest of a public certificate: no timing to hide.
        if self.pins.contains(&seen) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server's TLS certificate is not one pinned by ferry.tls=".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Parses a `Retry-After` value: delay seconds, or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let when = httpdate::parse_http_date(value).ok()?;
        when.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Joins a document name to a datasource base URL (`http://h/ds` or `http://h/ds/`).
pub fn join(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(MAX_RETRY_AFTER));
        // 1994-11-06 08:49:37 GMT is 784111777; one minute later:
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:48:37 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn error_texts_are_short_single_lines() {
        let answer = |body: Vec<u8>| Response { status: 500, retry_after: None, body };
        let json = |error: &str| serde_json::to_vec(&serde_json::json!({"error": error, "kind": "x"})).unwrap();
        assert_eq!(answer(json("  database busy\n")).error_text(), "database busy");
        let long = answer(json(&"x".repeat(1 << 20))).error_text();
        assert_eq!(long.chars().count(), MAX_ERROR_TEXT, "a megabyte of error is cut");
        let forged = answer(json("refused\n2038-01-01 INFO enrolled \u{1b}[2Jok")).error_text();
        assert!(!forged.chars().any(char::is_control), "{forged:?}");
        assert!(forged.starts_with("refused 2038"), "{forged:?}");
        let plain = answer(b"<html>\r\n<h1>Bad Gateway</h1>".to_vec()).error_text();
        assert_eq!(plain, "<html>  <h1>Bad Gateway</h1>");
        assert_eq!(answer("é".repeat(1000).into_bytes()).error_text().chars().count(), MAX_ERROR_TEXT);
    }

    #[test]
    fn joins_document_names() {
        assert_eq!(join("http://10.1.0.1/ds/", "meta-data"), "http://10.1.0.1/ds/meta-data");
        assert_eq!(join("http://10.1.0.1/ds", "meta-data"), "http://10.1.0.1/ds/meta-data");
    }

    /// A one-shot HTTP server on loopback that records the request and sends `reply`.
    async fn one_shot(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.expect("read");
            s.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn real_transport_round_trip() {
        let (base, server) =
            one_shot("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy").await;
        let resp = HyperTransport::default()
            .send(Request::post(format!("{base}/v1/enroll"), Some(b"{}".to_vec()), Duration::from_secs(5)))
            .await
            .expect("answer");
        assert_eq!(
            (resp.status, resp.retry_after, resp.body.as_slice()),
            (503, Some(Duration::from_secs(7)), &b"busy"[..])
        );
        let seen = server.await.expect("server");
        assert!(seen.starts_with("POST /v1/enroll HTTP/1.1\r\n"), "{seen}");
        assert!(seen.to_ascii_lowercase().contains("content-type: application/json"), "{seen}");
    }

    #[tokio::test]
    async fn unreachable_is_a_transport_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = HyperTransport::default()
            .send(Request::get(format!("http://{addr}/x"), Duration::from_secs(5)))
            .await
            .expect_err("nothing listens");
        assert!(err.0.contains("cannot connect"), "{err}");
    }
}
