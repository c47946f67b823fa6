//! The admin API client: HTTP/1.1 over the server's unix socket.

use anyhow::{anyhow, Context};
use ferry_api::ApiError;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;
use tokio::net::UnixStream;

pub struct AdminClient {
    socket: PathBuf,
}

impl AdminClient {
    pub fn new(socket: PathBuf) -> Self {
        AdminClient { socket }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let sock = self.socket.display();
            match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    anyhow!("cannot reach the ferry server at {sock}: is `ferry serve` running? (or set --socket / FERRY_ADMIN_SOCKET)")
                }
                std::io::ErrorKind::PermissionDenied => anyhow!("permission denied on {sock}: run as root or as a configured admin user"),
                _ => anyhow!("cannot connect to {sock}: {e}"),
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("admin socket handshake failed")?;
        tokio::spawn(conn);
        let body = match body {
            Some(b) => Full::new(Bytes::from(serde_json::to_vec(b)?)),
            None => Full::new(Bytes::new()),
        };
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "ferry")
            .header("content-type", "application/json")
            .body(body)?;
        let resp = sender.send_request(req).await.context("the ferry server closed the connection")?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.context("reading the server's answer")?.to_bytes();
        if !status.is_success() {
            let msg = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(anyhow!("{msg}"));
        }
        serde_json::from_slice(&bytes)
            .context("the server's answer is not the expected JSON (client and server versions differ?)")
    }
}
