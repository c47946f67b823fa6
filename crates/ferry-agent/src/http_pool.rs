//! Connection reuse for [`HyperTransport`]: the agent's requests of one boot go to the
//! same place (enrollment to the provisioning URL, then documents, host certificates
//! and the phone-home into the tunnel), so one kept connection per target saves a TCP
//! (and WireGuard-carried) handshake and teardown per request on the server.
//!
//! One slot: the last connection, kept only after a complete answer, and only for the
//! same scheme, host, port and interface (the TLS pins are the transport's own). A
//! request elsewhere closes it; so does the state machine when it is done with a
//! tunnel ([`crate::http::Transport::drop_connections`]). A request that fails on a
//! kept connection is sent once more on a new one if that is safe: a GET always, a
//! POST only when hyper says it never wrote it (the server does not treat a repeated
//! phone-home as success: the first one closed the tunnel).

use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::Uri;
use hyper_util::rt::TokioIo;

use crate::http::{
    connect_via, parse_retry_after, pinned_tls, HyperTransport, Method, Request, Response, TransportError, MAX_BODY,
};

type Sender = SendRequest<Full<Bytes>>;

/// What a kept connection can serve: the same scheme, authority and interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    https: bool,
    authority: String,
    interface: Option<String>,
}

#[derive(Debug)]
struct Idle {
    target: Target,
    sender: Sender,
}

/// The connection kept for the next request (dropping its sender closes it).
#[derive(Debug, Clone, Default)]
pub(crate) struct IdleSlot(Arc<Mutex<Option<Idle>>>);

impl IdleSlot {
    /// The kept connection if it serves `target`; one to another target is closed.
    fn take(&self, target: &Target) -> Option<Sender> {
        let idle = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        (idle.target == *target).then_some(idle.sender)
    }

    fn keep(&self, target: Target, sender: Sender) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Idle { target, sender });
    }

    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A request's URL, parsed.
struct Destination {
    uri: Uri,
    target: Target,
    host: String,
    port: u16,
}

impl Destination {
    fn parse(req: &Request) -> Result<Self, TransportError> {
        let uri: Uri = req.url.parse().map_err(|e| fail(req, "invalid URL", &e))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(TransportError(format!("only http:// and https:// URLs are supported, not {}", req.url))),
        };
        let authority = uri.authority().ok_or_else(|| TransportError(format!("no host in {}", req.url)))?.clone();
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = Target { https, authority: authority.as_str().to_owned(), interface: req.interface.clone() };
        Ok(Destination { uri, target, host, port })
    }
}

fn fail(req: &Request, what: &str, e: &dyn std::fmt::Display) -> TransportError {
    TransportError(format!("{what} {}: {e}", req.url))
}

impl HyperTransport {
    /// One request: on the kept connection if there is one for its target, else (or
    /// when that fails in a way safe to repeat) on a new one.
    pub(crate) async fn send_reusing(&self, req: Request) -> Result<Response, TransportError> {
        let dest = Destination::parse(&req)?;
        if let Some(mut sender) = self.idle.take(&dest.target) {
            // An error here: the server closed the connection while it was idle.
            if sender.ready().await.is_ok() {
                match sender.try_send_request(build(&req, &dest)?).await {
                    Ok(resp) => return self.complete(resp, sender, dest.target, &req).await,
                    Err(mut e) => {
                        let unsent = e.take_message().is_some();
                        if !unsent && req.method != Method::Get {
                            return Err(fail(&req, "request failed:", e.error()));
                        }
                        tracing::debug!(url = %req.url, "the kept connection failed ({}): trying a new one", e.error());
                    }
                }
            }
        }
        let mut sender = self.connect(&req, &dest).await?;
        let resp = sender.send_request(build(&req, &dest)?).await.map_err(|e| fail(&req, "request failed:", &e))?;
        self.complete(resp, sender, dest.target, &req).await
    }

    /// A new connection to `dest` (TLS with the pins for `https://`).
    async fn connect(&self, req: &Request, dest: &Destination) -> Result<Sender, TransportError> {
        let stream = match req.interface.as_deref() {
            None => tokio::net::TcpStream::connect((dest.host.as_str(), dest.port)).await,
            Some(interface) => match dest.host.parse::<std::net::IpAddr>() {
                Ok(ip) => connect_via(std::net::SocketAddr::new(ip, dest.port), Some(interface)).await,
                Err(_) => {
                    Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a tunnel URL needs an IP address"))
                }
            },
        }
        .map_err(|e| fail(req, "cannot connect to", &e))?;
        if !dest.target.https {
            return handshake(stream, req).await;
        }
        if self.tls_pins.is_empty() {
            return Err(TransportError(format!("{} is https but no certificate is pinned (ferry.tls=)", req.url)));
        }
        let name =
            rustls::pki_types::ServerName::try_from(dest.host.clone()).map_err(|e| fail(req, "invalid host in", &e))?;
        let tls = tokio_rustls::TlsConnector::from(pinned_tls(self.tls_pins.clone()))
            .connect(name, stream)
            .await
            .map_err(|e| fail(req, "TLS with", &e))?;
        handshake(tls, req).await
    }

    /// Reads the answer (at most [`MAX_BODY`]); the connection is kept if it is still open.
    async fn complete(
        &self,
        resp: hyper::Response<Incoming>,
        sender: Sender,
        target: Target,
        req: &Request,
    ) -> Result<Response, TransportError> {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| fail(req, "cannot read the answer of", &format!("{e} (limit {MAX_BODY} bytes)")))?
            .to_bytes()
            .to_vec();
        if !sender.is_closed() {
            self.idle.keep(target, sender);
        }
        Ok(Response { status, retry_after, body })
    }
}

/// HTTP/1.1 over an established stream; the connection runs in its own task until its
/// sender is dropped or the server closes it.
async fn handshake<S>(stream: S, req: &Request) -> Result<Sender, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| fail(req, "HTTP handshake with", &e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("HTTP connection ended: {e}");
        }
    });
    Ok(sender)
}

fn build(req: &Request, dest: &Destination) -> Result<hyper::Request<Full<Bytes>>, TransportError> {
    let path = dest.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = match req.method {
        Method::Get => hyper::Method::GET,
        Method::Post => hyper::Method::POST,
    };
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, dest.target.authority.as_str())
        .header(hyper::header::USER_AGENT, concat!("ferry-agent/", env!("CARGO_PKG_VERSION")));
    if req.json.is_some() {
        let kind = if req.text { "text/plain; charset=utf-8" } else { "application/json" };
        builder = builder.header(hyper::header::CONTENT_TYPE, kind);
    }
    let body = Full::new(Bytes::from(req.json.clone().unwrap_or_default()));
    builder.body(body).map_err(|e| fail(req, "cannot build a request for", &e))
}

#[cfg(test)]
#[path = "http_pool_tests.rs"]
mod tests;
