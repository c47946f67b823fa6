//! Transitions `Start → Challenged → Enrolled`: get a nonce, prove identity, check the
//! server's key against the pinned one and validate the tunnel parameters. (With a TPM,
//! `Challenged → Attested → Enrolled`: see `attest.rs`.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_api::enroll::{Challenge, EnrollRequest, EnrollResponse, Proofs, CHALLENGE_PATH, ENROLL_PATH};
use ferry_core::enroll::{asset_tag_proof, ProofContext, NONCE_LEN};
use ferry_core::tunnel::TunnelNetwork;
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
        // A named key must be one we pin: an impostor is refused before anything is proved.
        let server_key = match &challenge.server_public_key {
            None => None,
            Some(named) => match named.parse::<PublicKey>().ok().filter(|k| self.cfg.pinned.contains(k)) {
                Some(key) => Some(key),
                None => return State::Failed(self.key_mismatch(named)),
            },
        };
        match STANDARD.decode(challenge.nonce.as_bytes()) {
            Ok(bytes) if bytes.len() == NONCE_LEN => {
                tracing::debug!("got a nonce, valid for {} s", challenge.expires_in_secs);
                State::Challenged { nonce: challenge.nonce, nonce_bytes: bytes, server_key }
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
    pub(crate) async fn enroll(
        &mut self,
        nonce: String,
        nonce_bytes: &[u8],
        server_key: Option<PublicKey>,
        tpm: Option<TpmEvidence>,
    ) -> State {
        // The asset-tag proof binds the node name: the configured one, else the one the
        // server recognised in the TPM round trip.
        let node = self.cfg.node.as_ref().or(tpm.as_ref().map(|t| &t.node));
        let proof = match (&self.cfg.asset_tag, node) {
            (Some(tag), Some(node)) => match self.asset_tag_proof(tag.as_bytes(), nonce_bytes, node, server_key) {
                Ok(proof) => Some(proof),
                Err(e) => return State::Failed(e),
            },
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
            proofs: Proofs { asset_tag_v2: proof, asset_tag_v1: None, tpm: tpm.map(|t| t.proof) },
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

    /// The asset-tag proof (v2, base64): keyed with the tag and the X25519 secret of this
    /// enrollment's WireGuard key and the pinned server key the challenge named.
    fn asset_tag_proof(
        &self,
        tag: &[u8],
        nonce: &[u8],
        node: &ferry_core::NodeName,
        server_key: Option<PublicKey>,
    ) -> Result<String, AgentError> {
        let Some(server_key) = server_key else {
            return Err(AgentError::Protocol(format!(
                "the server at {} named no WireGuard key in its challenge, so the asset-tag proof cannot be made; \
                 it is older than this agent: update the ferry server",
                self.server().base
            )));
        };
        let shared = self.key.as_ref().and_then(|k| k.shared_secret(&server_key)).ok_or_else(|| {
            AgentError::Protocol("the pinned server key is not a usable X25519 public key (low order)".into())
        })?;
        let ctx = ProofContext { nonce, wg_public_key: &self.public_key.0, node, server_public_key: &server_key.0 };
        Ok(STANDARD.encode(asset_tag_proof(tag, &shared, &ctx)))
    }

    fn key_mismatch(&self, offered: &str) -> AgentError {
        let pinned: Vec<String> = self.cfg.pinned.iter().map(PublicKey::to_base64).collect();
        AgentError::KeyMismatch { pinned: pinned.join(","), offered: offered.chars().take(64).collect() }
    }

    /// Checks the answer: pinned key first (an impostor gets nothing further), then
    /// addresses, and that both URLs point inside the tunnel.
    pub(crate) async fn validate(&self, a: EnrollResponse) -> Result<Lease, AgentError> {
        let offered = a.server_public_key.parse::<PublicKey>().ok();
        let Some(server_key) = offered.filter(|k| self.cfg.pinned.contains(k)) else {
            return Err(self.key_mismatch(&a.server_public_key));
        };
        let ip = |what: &str, s: &str| {
            s.parse::<IpAddr>().map_err(|_| AgentError::Protocol(format!("{what} {s:?} is not an IP address")))
        };
        let node_address = ip("node_address", &a.node_address)?;
        let server_address = ip("server_address", &a.server_address)?;
        check_tunnel_addresses(node_address, server_address, a.prefix_len)?;
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

/// The tunnel addresses must be what a ferry server hands out (ferry-core's
/// `TunnelNetwork`): one valid tunnel network holds both, the server has its first host
/// address, the node another host address; none of them loopback, link-local,
/// multicast or unspecified. Anything else points the node's traffic somewhere the
/// tunnel does not go.
fn check_tunnel_addresses(node: IpAddr, server: IpAddr, prefix_len: u8) -> Result<(), AgentError> {
    let refuse = |why: String| Err(AgentError::Impostor(why));
    if node.is_ipv4() != server.is_ipv4() {
        return refuse(format!("node_address {node} and server_address {server} are of different IP versions"));
    }
    for (what, ip) in [("server_address", server), ("node_address", node)] {
        if let Some(kind) = special_kind(ip) {
            return refuse(format!("{what} {ip} is a {kind} address, not a tunnel address"));
        }
    }
    let Some((base, broadcast)) = network_bounds(node, prefix_len) else {
        return refuse(format!("the tunnel network prefix /{prefix_len} is not valid for {node}"));
    };
    let network = match TunnelNetwork::parse(&format!("{base}/{prefix_len}")) {
        Ok(n) => n,
        Err(e) => return refuse(format!("the announced tunnel network {base}/{prefix_len} is not one: {e}")),
    };
    if !network.contains(server) || server != network.server_address() {
        return refuse(format!(
            "server_address {server} is not the server's address of the announced tunnel network {network} \
             (that is {})",
            network.server_address()
        ));
    }
    if node == server || node == base || (node.is_ipv4() && node == broadcast) {
        return refuse(format!("node_address {node} is not a node address of the tunnel network {network}"));
    }
    Ok(())
}

/// Why `ip` can never be a tunnel address, if it cannot.
fn special_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_loopback() => Some("loopback"),
        _ if ip.is_unspecified() => Some("unspecified"),
        _ if ip.is_multicast() => Some("multicast"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped"),
        _ => None,
    }
}

/// The network and broadcast (all host bits set) addresses of `ip`/`prefix_len`.
fn network_bounds(ip: IpAddr, prefix_len: u8) -> Option<(IpAddr, IpAddr)> {
    match ip {
        IpAddr::V4(v4) if prefix_len <= 32 => {
            let host = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let v = u32::from(v4);
            Some((std::net::Ipv4Addr::from(v & !host).into(), std::net::Ipv4Addr::from(v | host).into()))
        }
        IpAddr::V6(v6) if prefix_len <= 128 => {
            let host = u128::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
            let v = u128::from(v6);
            Some((std::net::Ipv6Addr::from(v & !host).into(), std::net::Ipv6Addr::from(v | host).into()))
        }
        _ => None,
    }
}

/// A datasource or phone-home URL must be `http://SERVER_TUNNEL_ADDRESS[:port]/...`:
/// secrets are fetched only through the tunnel.
pub fn check_inside_tunnel(what: &str, url: &str, server_address: IpAddr) -> Result<(), AgentError> {
    let outside = || {
        AgentError::Impostor(format!(
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
        let e = check_inside_tunnel("datasource_url", "http://127.0.0.1:8081/", s).expect_err("outside");
        assert_eq!(e.exit_code(), 4, "an impostor's answer: {e}");
    }

    fn addresses(node: &str, server: &str, prefix: u8) -> Result<(), AgentError> {
        check_tunnel_addresses(node.parse().expect("ip"), server.parse().expect("ip"), prefix)
    }

    #[test]
    fn tunnel_addresses_must_be_a_ferry_servers() {
        addresses("100.64.0.2", "100.64.0.1", 16).expect("the default network");
        addresses("100.64.3.7", "100.64.0.1", 16).expect("any node address");
        addresses("10.0.0.2", "10.0.0.1", 30).expect("the smallest network");
        addresses("fd42::2", "fd42::1", 64).expect("IPv6");
        for (node, server, prefix, says) in [
            ("100.64.0.2", "127.0.0.1", 16, "loopback"),
            ("127.0.0.2", "127.0.0.1", 8, "loopback"),
            ("100.64.0.2", "0.0.0.0", 16, "unspecified"),
            ("100.64.0.2", "224.0.0.1", 16, "multicast"),
            ("169.254.0.2", "169.254.0.1", 16, "link-local"),
            ("100.64.0.2", "198.18.0.11", 16, "not the server's address"),
            ("100.64.0.2", "100.64.0.9", 16, "not the server's address"),
            ("198.18.0.50", "198.18.0.11", 24, "not the server's address"),
            ("100.64.0.1", "100.64.0.1", 16, "not a node address"),
            ("100.64.255.255", "100.64.0.1", 16, "not a node address"),
            ("100.64.0.2", "100.64.0.1", 0, "not one"),
            ("100.64.0.2", "100.64.0.1", 33, "not valid"),
            ("100.64.0.2", "fd42::1", 16, "different IP versions"),
            ("fd42::2", "fe80::1", 64, "link-local"),
            ("fd42::2", "::ffff:100.64.0.1", 64, "IPv4-mapped"),
        ] {
            let e = addresses(node, server, prefix).expect_err(&format!("{node} {server}/{prefix}"));
            assert_eq!(e.exit_code(), 4, "{e}");
            let text = e.to_string();
            assert!(text.contains(says) && text.contains("impostor"), "{node} {server}/{prefix}: {text}");
        }
    }
}
