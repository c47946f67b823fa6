//! The agent's protocol as an explicit state machine.
//!
//! ```text
//!            transient error (unreachable, 429, 5xx): back off, retry until --timeout
//!           ┌──────┐          ┌──────────────────────────┐
//!           ▼      │          ▼                          │
//!         Start ───┴──▶ Challenged ──▶ Enrolled ──▶ TunnelUp ──┬─(fetch)──▶ Fetched ──[▶ Unpacked]──▶ PhonedHome ──▶ TornDown
//!           │               │  │           │           │       ├─(cloud-init)──▶ Holding ──(SIGTERM, TTL)──▶ TornDown
//!           │        401 ───┘  └─ key      │           │       │                 │   ▲
//!           │                    mismatch, │           │       │    server lost  ▼   │ moved to the next server
//!           │                    impostor  │           │       │              ServerLost
//!           │                              │           │       └─(cloud-init, kernel, one server, no --hold)──▶ Detached
//!           ▼                              ▼           ▼
//!         Failed ◀──────────────────────────────────────  (a tunnel that is up is removed first)
//! ```
//!
//! `Holding → ServerLost → Holding`: with several servers, a holding agent watches the
//! server through the tunnel (`watch.rs`); when it is lost, the agent enrolls at the
//! next server with a fresh key and moves the same interface there, so cloud-init's
//! retries to the same datasource URL reach the new server.
//!
//! `Fetched → Unpacked` only with `--image-root`: the image root's key and digest through
//! the tunnel, the archive from the provisioning listener, checked, then unpacked
//! (`image.rs`).
//!
//! With a TPM configured, `Challenged → Attested` is the credential round trip
//! (`attest.rs`), with the same failures and retries as the other requests;
//! `Attested → Enrolled` is the enrollment carrying the TPM's evidence.
//!
//! Each transition is one call of [`Agent::step`]; [`Agent::run`] steps until a final
//! state (`TornDown`, `Detached`, `Failed`). HTTP goes through a [`Transport`] and the
//! tunnel through a [`TunnelFactory`], so every transition is tested with fakes.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use ferry_core::MacAddr;
use ferry_wg::{PrivateKey, PublicKey};

use crate::args::ServerOrder;
use crate::attest::{TpmBackend, TpmEvidence};
use crate::config::Config;
use crate::error::AgentError;
use crate::http::{Response, Transport};
use crate::retry::{Deadline, RetryPolicy};
use crate::tunnel::{Tunnel, TunnelFactory};

/// A future that resolves when the agent should stop holding the tunnel.
pub type StopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The tunnel parameters of an accepted enrollment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub node: String,
    /// The enrolling server's WireGuard key (one of the pinned keys).
    pub server_key: PublicKey,
    pub endpoint: SocketAddr,
    pub node_address: IpAddr,
    pub server_address: IpAddr,
    pub expires_in: Duration,
    pub expires_at: String,
    pub datasource_url: String,
    pub phone_home_url: String,
}

/// Where the agent is in the protocol.
pub enum State {
    /// Nothing done yet (or a retry after a transient failure): ask for a nonce.
    Start,
    /// Holding a fresh single-use nonce (base64, as received; and decoded), and the
    /// pinned server key the challenge named (the asset-tag proof is keyed with the
    /// X25519 secret shared with it).
    Challenged { nonce: String, nonce_bytes: Vec<u8>, server_key: Option<PublicKey> },
    /// With a TPM: the credential is activated and the PCRs quoted for this nonce.
    Attested { nonce: String, nonce_bytes: Vec<u8>, server_key: Option<PublicKey>, evidence: Box<TpmEvidence> },
    /// The server accepted the node and the pinned key matched.
    Enrolled { lease: Lease },
    /// The interface is up and the datasource answered through it.
    TunnelUp { lease: Lease, tunnel: Box<dyn Tunnel> },
    /// The seed is written (fetch mode); meta-data is kept for the phone-home report.
    Fetched { lease: Lease, tunnel: Box<dyn Tunnel>, meta_data: Vec<u8> },
    /// Fetch mode with `--image-root`: the node's image root is unpacked (`image.rs`).
    Unpacked { lease: Lease, tunnel: Box<dyn Tunnel>, meta_data: Vec<u8> },
    /// The server was told (or, after retries, could not be told) that the node is done.
    PhonedHome { lease: Lease, tunnel: Box<dyn Tunnel> },
    /// cloud-init mode: state file written, datasource line printed, tunnel held.
    Holding { lease: Lease, tunnel: Box<dyn Tunnel>, stop: StopFuture },
    /// cloud-init mode with several servers: the server holding the tunnel is lost.
    ServerLost { lease: Lease, tunnel: Box<dyn Tunnel>, stop: StopFuture, why: AgentError },
    /// cloud-init mode with kernel WireGuard: the agent exits leaving the interface.
    Detached { lease: Lease },
    /// The interface is gone: done.
    TornDown { lease: Lease },
    /// Stopped with an error (nothing of the tunnel is left).
    Failed(AgentError),
}

impl State {
    /// Whether the agent's next steps send requests (enrollment, documents, host
    /// certificates, phone-home) over the connection it may be keeping.
    fn sends_more_requests(&self) -> bool {
        matches!(
            self,
            State::Start
                | State::Challenged { .. }
                | State::Attested { .. }
                | State::Enrolled { .. }
                | State::TunnelUp { .. }
                | State::Fetched { .. }
                | State::Unpacked { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Start => "start",
            State::Challenged { .. } => "challenged",
            State::Attested { .. } => "attested",
            State::Enrolled { .. } => "enrolled",
            State::TunnelUp { .. } => "tunnel-up",
            State::Fetched { .. } => "fetched",
            State::Unpacked { .. } => "unpacked",
            State::PhonedHome { .. } => "phoned-home",
            State::Holding { .. } => "holding",
            State::ServerLost { .. } => "server-lost",
            State::Detached { .. } => "detached",
            State::TornDown { .. } => "torn-down",
            State::Failed(_) => "failed",
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Failed(e) => write!(f, "Failed({e})"),
            other => f.write_str(other.name()),
        }
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The node name the server enrolled.
    pub node: String,
    /// The line printed on standard output (`ds=nocloud;s=...`).
    pub ds: String,
    pub interface: String,
    /// Whether phone-home was acknowledged (fetch mode; cloud-init phones home itself).
    pub phoned_home: bool,
    /// cloud-init mode with kernel WireGuard: the interface was left up for `teardown`.
    pub detached: bool,
}

/// How a server answer is handled.
pub(crate) enum Verdict {
    Ok(Response),
    /// Worth retrying after a delay (the server's Retry-After, if any).
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    Fail(AgentError),
}

/// The agent: configuration, identity, transport and tunnel factory.
pub struct Agent<T, F> {
    pub(crate) cfg: Config,
    pub(crate) mac: MacAddr,
    pub(crate) transport: T,
    pub(crate) tunnels: F,
    /// The WireGuard private key: in memory only, moved into the device, zeroized on drop.
    pub(crate) key: Option<PrivateKey>,
    pub(crate) public_key: PublicKey,
    /// The TPM, when one is configured; released once enrolled.
    pub(crate) tpm: Option<Box<dyn TpmBackend>>,
    pub(crate) deadline: Deadline,
    /// Enrollment's waits between attempts, within `deadline`.
    pub(crate) retry: RetryPolicy,
    /// Which of `cfg.servers` is in use (first: `Config::server_order`).
    pub(crate) server_index: usize,
    out: Box<dyn Write + Send>,
    /// Replaces SIGTERM/SIGINT as the end of holding (tests).
    pub(crate) stop_override: Option<StopFuture>,
    pub(crate) ds: Option<String>,
    pub(crate) phoned_home: bool,
}

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    /// A new agent with a fresh WireGuard key; the `--timeout` clock starts now.
    pub fn new(cfg: Config, mac: MacAddr, transport: T, tunnels: F, out: Box<dyn Write + Send>) -> Self {
        let key = PrivateKey::generate();
        let public_key = key.public_key();
        let deadline = Deadline::after(cfg.timeout);
        let retry = RetryPolicy::new(cfg.tuning.retry_initial, cfg.tuning.retry_max);
        let server_index = match cfg.server_order {
            ServerOrder::Hashed => mac.first_server(cfg.servers.len()),
            ServerOrder::Listed => 0,
        };
        if cfg.servers.len() > 1 {
            tracing::info!(order = ?cfg.server_order, "trying {} first", cfg.servers[server_index].base);
        }
        Agent {
            cfg,
            mac,
            transport,
            tunnels,
            key: Some(key),
            public_key,
            tpm: None,
            deadline,
            retry,
            server_index,
            out,
            stop_override: None,
            ds: None,
            phoned_home: false,
        }
    }

    /// Proves the `tpm` factor with this TPM.
    pub(crate) fn with_tpm(mut self, tpm: Box<dyn TpmBackend>) -> Self {
        self.tpm = Some(tpm);
        self
    }

    /// Ends holding when `stop` resolves instead of on SIGTERM/SIGINT.
    #[cfg(test)]
    pub fn with_stop(mut self, stop: StopFuture) -> Self {
        self.stop_override = Some(stop);
        self
    }

    /// Steps from `Start` to a final state.
    pub async fn run(mut self) -> Result<Outcome, AgentError> {
        let mut state = State::Start;
        loop {
            tracing::debug!(state = state.name(), "agent state");
            state = match state {
                State::TornDown { lease } => return Ok(self.outcome(lease, false)),
                State::Detached { lease } => return Ok(self.outcome(lease, true)),
                State::Failed(e) => return Err(e),
                other => self.step(other).await,
            };
        }
    }

    fn outcome(&self, lease: Lease, detached: bool) -> Outcome {
        Outcome {
            node: lease.node,
            ds: self.ds.clone().unwrap_or_default(),
            interface: self.cfg.interface.clone(),
            phoned_home: self.phoned_home,
            detached,
        }
    }

    /// Performs one transition.
    pub async fn step(&mut self, state: State) -> State {
        let next = self.transition(state).await;
        if !next.sends_more_requests() {
            // The agent sends nothing more through this tunnel (or the provisioning
            // network): an idle connection would only hold a slot on the server.
            self.transport.drop_connections();
        }
        next
    }

    async fn transition(&mut self, state: State) -> State {
        match state {
            s @ (State::Start | State::Challenged { .. } | State::Attested { .. }) => self.enrollment_step(s).await,
            State::Enrolled { lease } => self.bring_up(lease).await,
            State::TunnelUp { lease, tunnel } => self.use_tunnel(lease, tunnel).await,
            State::Fetched { lease, tunnel, meta_data } if self.cfg.image.is_some() => {
                self.unpack_image(lease, tunnel, meta_data).await
            }
            State::Fetched { lease, tunnel, meta_data } | State::Unpacked { lease, tunnel, meta_data } => {
                self.phone_home(lease, tunnel, &meta_data).await
            }
            State::PhonedHome { lease, tunnel } => self.finish(lease, tunnel).await,
            State::Holding { lease, tunnel, stop } => self.hold(lease, tunnel, stop).await,
            State::ServerLost { lease, tunnel, stop, why } => self.rehome(lease, tunnel, stop, why).await,
            done @ (State::Detached { .. } | State::TornDown { .. } | State::Failed(_)) => done,
        }
    }

    /// The transitions up to `Enrolled` (also used to re-enroll while holding a tunnel).
    pub(crate) async fn enrollment_step(&mut self, state: State) -> State {
        match state {
            State::Start => self.challenge().await,
            State::Challenged { nonce, nonce_bytes, server_key } if self.tpm.is_some() => {
                self.attest(nonce, nonce_bytes, server_key).await
            }
            State::Challenged { nonce, nonce_bytes, server_key } => {
                self.enroll(nonce, &nonce_bytes, server_key, None).await
            }
            State::Attested { nonce, nonce_bytes, server_key, evidence } => {
                self.enroll(nonce, &nonce_bytes, server_key, Some(*evidence)).await
            }
            other => other,
        }
    }

    /// Classifies an enrollment-side answer.
    pub(crate) fn judge(&self, resp: Response, what: &str) -> Verdict {
        match resp.status {
            200..=299 => Verdict::Ok(resp),
            401 | 403 => Verdict::Fail(AgentError::Refused {
                mac: self.mac.to_string(),
                node: self.cfg.node.as_ref().map(|n| format!(", node {n}")).unwrap_or_default(),
            }),
            429 | 500..=599 => Verdict::Retry {
                why: format!("the server answered {} to the {what}: {}", resp.status, resp.error_text()),
                retry_after: resp.retry_after,
            },
            404 => Verdict::Fail(AgentError::Protocol(format!(
                "the {what} path was not found (404) on {}: is it a ferry server with enrollment enabled?",
                self.server().base
            ))),
            s => Verdict::Fail(AgentError::Protocol(format!("the {what} got HTTP {s}: {}", resp.error_text()))),
        }
    }

    /// The server in use.
    pub(crate) fn server(&self) -> &crate::config::ServerUrl {
        &self.cfg.servers[self.server_index % self.cfg.servers.len()]
    }

    /// Whether there is another server to fail over to.
    pub(crate) fn has_other_servers(&self) -> bool {
        self.cfg.servers.len() > 1
    }

    /// Moves on to the next server (round robin).
    pub(crate) fn next_server(&mut self) {
        if self.has_other_servers() {
            let from = self.server().base.clone();
            self.server_index = (self.server_index + 1) % self.cfg.servers.len();
            tracing::warn!("failing over from {from} to {}", self.server().base);
        }
    }

    /// Waits before retrying enrollment (at the next server, when there are several),
    /// or fails when `--timeout` would pass.
    pub(crate) async fn retry_enrollment(&mut self, why: String, retry_after: Option<Duration>) -> State {
        let wait = self.retry.delay(retry_after);
        tracing::warn!(
            "enrollment at {} not done yet: {why}; retrying in {:.1} s",
            self.server().base,
            wait.as_secs_f64()
        );
        if self.deadline.sleep_within(wait).await {
            self.next_server();
            State::Start
        } else {
            let servers: Vec<&str> = self.cfg.servers.iter().map(|s| s.base.as_str()).collect();
            State::Failed(AgentError::Unreachable {
                server: servers.join(", "),
                secs: self.deadline.total().as_secs(),
                last: why,
            })
        }
    }

    /// The server was lost after enrolling (its tunnel stopped answering): remove the
    /// tunnel and enroll again at the next server with a fresh key. Re-enrolling
    /// replaces the node's tunnel wherever it was, so this is safe to repeat.
    pub(crate) async fn fail_over(&mut self, tunnel: Box<dyn Tunnel>, why: AgentError) -> State {
        if !self.has_other_servers() || self.deadline.remaining().is_zero() {
            return abort(tunnel, why).await;
        }
        tracing::warn!("lost the server {}: {why}", self.server().base);
        let name = tunnel.interface().to_string();
        if let Err(e) = tunnel.close().await {
            tracing::warn!(interface = %name, "{e}");
        }
        self.fresh_key();
        self.next_server();
        State::Start
    }

    /// A new WireGuard key for the next enrollment (each server sees its own).
    pub(crate) fn fresh_key(&mut self) {
        let key = PrivateKey::generate();
        self.public_key = key.public_key();
        self.key = Some(key);
    }

    /// Prints the machine-readable line on standard output.
    pub(crate) fn emit(&mut self, line: String) -> Result<(), AgentError> {
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(|e| AgentError::io("cannot write the datasource line to standard output", e))?;
        self.ds = Some(line);
        Ok(())
    }
}

/// Removes a tunnel on the way to `Failed`.
pub(crate) async fn abort(tunnel: Box<dyn Tunnel>, err: AgentError) -> State {
    let name = tunnel.interface().to_string();
    if let Err(e) = tunnel.close().await {
        tracing::warn!(interface = %name, "{e}");
    }
    State::Failed(err)
}
