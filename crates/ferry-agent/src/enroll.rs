//! Transitions `Start → Challenged → Enrolled`: get a nonce, prove identity, check the
//! server's key against the pinned one and validate the tunnel parameters. (With a TPM,
//! `Challenged → Attested → Enrolled`: see `attest.rs`.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_api::enroll::{Challenge, EnrollRequest, EnrollResponse, Proofs, CHALLENGE_PATH, ENROLL_PATH};
use ferry_core::enroll::{asset_tag_proof, NONCE_LEN};
use ferry_wg::PublicKey;
use hyper::Uri;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::attest::TpmEvidence;
use crate::error::AgentError;
use crate::http::{Request, Transport};
use crate::machine::{Agent, Lease, State, Verdict};
use crate::tunnel::TunnelFactory;

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    /// `Start → Challenged`, or back to `Start` after a back-off, or `Failed`.
    pub(crate) async fn challenge(&mut self) -> State {
        let challenge: Challenge = match self.post(CHALLENGE_PATH, None::<&()>, "challenge request").await {
            Ok(c) => c,
            Err(next) => return next,
        };
        match STANDARD.decode(challenge.nonce.as_bytes()) {
            Ok(bytes) if bytes.len() == NONCE_LEN => {
                tracing::debug!("got a nonce, valid for {} s", challenge.expires_in_secs);
                State::Challenged { nonce: challenge.nonce, nonce_bytes: bytes }
            }
            _ => State::Failed(AgentError::Protocol(format!(
                "the challenge nonce is not {NONCE_LEN} bytes of standard base64"
            ))),
        }
    }

    /// POSTs `body` as JSON to an enrollment API path and decodes the answer. `Err` is
    /// the next state: `Start` after a back-off (transient failure), or `Failed`.
    pub(crate) async fn post<A: DeserializeOwned>(
        &mut self,
        path: &str,
        body: Option<&impl Serialize>,
        what: &str,
    ) -> Result<A, State> {
        let json = match body.map(serde_json::to_vec).transpose() {
            Ok(json) => json,
            Err(e) => return Err(State::Failed(AgentError::Protocol(format!("cannot encode the {what}: {e}")))),
        };
        let url = self.server().url(path);
        let timeout = self.deadline.cap(self.cfg.tuning.request_timeout);
        let resp = match self.transport.send(Request::post(url, json, timeout)).await {
            Ok(r) => r,
            Err(e) => return Err(self.retry_enrollment(e.0, None).await),
        };
        let resp = match self.judge(resp, what) {
            Verdict::Ok(r) => r,
            Verdict::Retry { why, retry_after } => return Err(self.retry_enrollment(why, retry_after).await),
            Verdict::Fail(e) => return Err(State::Failed(e)),
        };
        serde_json::from_slice(&resp.body).map_err(|e| {
            State::Failed(AgentError::Protocol(format!("the answer to the {what} is not valid JSON: {e}")))
        })
    }

    /// `Challenged → Enrolled` (or `Attested → Enrolled` with the TPM's evidence); `Start`
    /// after a back-off (a fresh nonce is needed); `Failed` on refusal (no retry: policy),
    /// key mismatch or a malformed answer.
    pub(crate) async fn enroll(&mut self, nonce: String, nonce_bytes: &[u8], tpm: Option<TpmEvidence>) -> State {
        // The asset-tag proof binds the node name: the configured one, else the one the
        // server recognised in the TPM round trip.
        let node = self.cfg.node.as_ref().or(tpm.as_ref().map(|t| &t.node));
        let proof = match (&self.cfg.asset_tag, node) {
            (Some(tag), Some(node)) => {
                Some(STANDARD.encode(asset_tag_proof(tag.as_bytes(), nonce_bytes, &self.public_key.0, node)))
            }
            _ => None,
        };
        tracing::info!(
            mac = %self.mac,
            node = node.map_or("(unknown)", |n| n.as_str()),
            asset_tag_proof = proof.is_some(),
            tpm_proof = tpm.is_some(),
            "enrolling with {}",
            self.server().base
        );
        let request = EnrollRequest {
            mac: self.mac.to_string(),
            public_key: self.public_key.to_base64(),
            nonce,
            proofs: Proofs { asset_tag: proof, tpm: tpm.map(|t| t.proof) },
            mode: Some(match self.cfg.mode {
                crate::args::Mode::Fetch => "fetch".into(),
                crate::args::Mode::CloudInit => "cloud-init".into(),
            }),
        };
        let answer: EnrollResponse = match self.post(ENROLL_PATH, Some(&request), "enrollment request").await {
            Ok(a) => a,
            Err(next) => return next,
        };
        match self.validate(answer).await {
            Ok(lease) => {
                tracing::info!(node = %lease.node, address = %lease.node_address, ttl_secs = lease.expires_in.as_secs(), "enrolled");
                // With one server, enrollment is not retried from here on: release the
                // TPM. With several, a lost server means enrolling again elsewhere.
                if !self.has_other_servers() {
                    self.tpm = None;
                }
                State::Enrolled { lease }
            }
            Err(e) => State::Failed(e),
        }
    }

    /// Checks the answer: pinned key first (an impostor gets nothing further), then
    /// addresses, and that both URLs point inside the tunnel.
    pub(crate) async fn validate(&self, a: EnrollResponse) -> Result<Lease, AgentError> {
        let offered = a.server_public_key.parse::<PublicKey>().ok();
        let Some(server_key) = offered.filter(|k| self.cfg.pinned.contains(k)) else {
            let pinned: Vec<String> = self.cfg.pinned.iter().map(PublicKey::to_base64).collect();
            return Err(AgentError::KeyMismatch {
                pinned: pinned.join(","),
                offered: a.server_public_key.chars().take(64).collect(),
            });
        };
        let ip = |what: &str, s: &str| {
            s.parse::<IpAddr>().map_err(|_| AgentError::Protocol(format!("{what} {s:?} is not an IP address")))
        };
        let node_address = ip("node_address", &a.node_address)?;
        let server_address = ip("server_address", &a.server_address)?;
        if node_address.is_ipv4() != server_address.is_ipv4() {
            return Err(AgentError::Protocol("node_address and server_address are of different IP versions".into()));
        }
        for (what, url) in [("datasource_url", &a.datasource_url), ("phone_home_url", &a.phone_home_url)] {
            check_inside_tunnel(what, url, server_address)?;
        }
        if let Some(mine) = &self.cfg.node {
            if mine.as_str() != a.node {
                tracing::warn!(configured = %mine, enrolled = %a.node, "the server enrolled this MAC as another node");
            }
        }
        Ok(Lease {
            server_key,
            endpoint: self.resolve_endpoint(&a.endpoint).await?,
            node: a.node,
            node_address,
            server_address,
            expires_in: Duration::from_secs(a.expires_in_secs),
            expires_at: a.expires_at,
            datasource_url: a.datasource_url,
            phone_home_url: a.phone_home_url,
        })
    }

    /// `host:port` of the server's WireGuard device; an unspecified host (0.0.0.0, ::)
    /// means "the host the agent enrolled with".
    async fn resolve_endpoint(&self, endpoint: &str) -> Result<SocketAddr, AgentError> {
        let bad = |why: String| AgentError::Protocol(format!("WireGuard endpoint {endpoint:?}: {why}"));
        let (host, port) = endpoint.rsplit_once(':').ok_or_else(|| bad("expected host:port".into()))?;
        let port: u16 = port.parse().map_err(|_| bad("invalid port".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match host.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => self.server().host.clone(),
            _ => host.to_string(),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let mut addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| bad(format!("cannot resolve {host}: {e}")))?;
        addrs.next().ok_or_else(|| bad(format!("{host} resolves to no address")))
    }
}

/// A datasource or phone-home URL must be `http://SERVER_TUNNEL_ADDRESS[:port]/...`:
/// secrets are fetched only through the tunnel.
pub fn check_inside_tunnel(what: &str, url: &str, server_address: IpAddr) -> Result<(), AgentError> {
    let outside = || {
        AgentError::Protocol(format!(
            "{what} {url:?} is not inside the tunnel (it must be http://{server_address}...): refusing to \
             fetch documents outside the tunnel"
        ))
    };
    let uri: Uri = url.parse().map_err(|_| outside())?;
    let host = uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']'));
    let inside =
        uri.scheme_str() == Some("http") && host.and_then(|h| h.parse::<IpAddr>().ok()) == Some(server_address);
    if inside {
        Ok(())
    } else {
        Err(outside())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_point_into_the_tunnel() {
        let s: IpAddr = "10.1.0.1".parse().expect("ip");
        assert!(check_inside_tunnel("u", "http://10.1.0.1:8081/", s).is_ok());
        assert!(check_inside_tunnel("u", "http://10.1.0.1/ds/", s).is_ok());
        for bad in
            ["http://10.1.0.2/", "https://10.1.0.1/", "http://evil.example/", "10.1.0.1/", "", "http://10.1.0.1.evil/"]
        {
            assert!(check_inside_tunnel("u", bad, s).is_err(), "{bad}");
        }
        let s6: IpAddr = "fd00::1".parse().expect("ip");
        assert!(check_inside_tunnel("u", "http://[fd00::1]:8081/", s6).is_ok());
    }
}
