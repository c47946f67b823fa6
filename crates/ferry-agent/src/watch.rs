//! Holding a tunnel with several servers: watch the server, and when it is lost move the
//! tunnel to the next one (`Holding → ServerLost → Holding`).
//!
//! **Watching.** Every 1–2 s (`watch_interval`, jittered) the agent opens (and closes) a TCP connection to
//! the datasource port through the tunnel, bound to its interface: only the server can
//! accept it (WireGuard's cryptokey routing), and no document is requested (nothing is
//! served or audited). The WireGuard handshake alone would not do: it proves the
//! server's *device*, which outlives a killed `ferry serve` (a kernel or wireguard-go
//! interface keeps handshaking), while cloud-init needs its datasource. The server
//! counts as lost once no probe has succeeded for 4 s (`watch_patience`: such a device
//! resets cloud-init's connections, and cloud-init 22.4 gives its datasource up after
//! 11 tries 1 s apart) **and** its
//! provisioning URL does not answer either: a server that still answers there is alive
//! and closed the tunnel itself (cloud-init phoned home, the TTL passed, an admin
//! revoked it), and moving elsewhere would only open a tunnel nobody uses.
//!
//! **Moving.** With a fresh key (and a fresh `--timeout`) the agent enrolls at the next
//! servers in turn until one accepts the node with the *same* datasource URL (the one
//! cloud-init was given: every server must use the same tunnel network and port), then
//! reconfigures the same interface in place (new key, peer, endpoint, maybe a new
//! node address; the route and the guard stay), waits until the datasource answers
//! through it, and rewrites the state file. Enrolling there replaces the node's tunnel
//! in the shared store, so no address is held twice. A stop request (SIGTERM) during
//! the move removes the tunnel at once; if no server takes the node within
//! `--timeout`, the agent removes the tunnel and fails.

use std::future::pending;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::Uri;
use tokio::time::Instant;

use crate::error::AgentError;
use crate::http::{Request, Transport};
use crate::machine::{Agent, Lease, State, StopFuture};
use crate::retry::{jitter, Deadline, RetryPolicy};
use crate::tunnel::{Tunnel, TunnelFactory};

/// What the watcher makes of the probes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The last probe went through.
    Alive,
    /// Probes have failed for this long (less than the patience).
    Silent(Duration),
    /// Probes have failed for the whole patience.
    Lost,
}

/// The watcher's memory: when a probe last went through.
#[derive(Debug, Clone)]
pub struct Watch {
    last_alive: Instant,
    patience: Duration,
}

impl Watch {
    /// Starts watching at `now` (the tunnel has just answered).
    pub fn new(now: Instant, patience: Duration) -> Self {
        Watch { last_alive: now, patience }
    }

    /// Records one probe's result at `now`.
    pub fn observe(&mut self, now: Instant, probe_ok: bool) -> Health {
        if probe_ok {
            self.last_alive = now;
            return Health::Alive;
        }
        let silent = now.saturating_duration_since(self.last_alive);
        if silent >= self.patience {
            Health::Lost
        } else {
            Health::Silent(silent)
        }
    }
}

/// The datasource's address and port, from its (validated `http://IP[:port]/`) URL.
fn datasource_socket(lease: &Lease) -> SocketAddr {
    let port = lease.datasource_url.parse::<Uri>().ok().and_then(|u| u.port_u16()).unwrap_or(80);
    SocketAddr::new(lease.server_address, port)
}

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    /// Resolves (with the reason) when the server holding the tunnel is lost; never with
    /// a single server (there is nowhere to go) or once the server closed the tunnel.
    pub(crate) async fn watch_server(&self, lease: &Lease, tunnel: &dyn Tunnel) -> AgentError {
        if !self.has_other_servers() {
            return pending().await;
        }
        let target = datasource_socket(lease);
        let mut watch = Watch::new(Instant::now(), self.cfg.tuning.watch_patience);
        let mut last_error = String::new();
        loop {
            // Jittered, so the nodes of a boot storm do not probe in step.
            tokio::time::sleep(jitter(self.cfg.tuning.watch_interval)).await;
            let probe = tunnel.probe(target, self.cfg.tuning.probe_timeout).await;
            let ok = probe.is_ok();
            if let Err(e) = probe {
                last_error = e;
            }
            match watch.observe(Instant::now(), ok) {
                Health::Alive => {}
                Health::Silent(d) => tracing::debug!(
                    "the datasource {target} has not answered through the tunnel for {:.1} s: {last_error}",
                    d.as_secs_f64()
                ),
                Health::Lost if self.provisioning_answers().await => {
                    tracing::info!(
                        "the datasource {target} no longer answers through the tunnel, but the server {} is up: \
                         it closed the tunnel (phone-home, TTL or revocation); holding until told to stop",
                        self.server().base
                    );
                    return pending().await;
                }
                Health::Lost => {
                    return AgentError::Tunnel(format!(
                        "the datasource {target} has not answered through the tunnel for {} s (last error: \
                         {last_error}) and {} does not answer on the provisioning network",
                        self.cfg.tuning.watch_patience.as_secs(),
                        self.server().base
                    ))
                }
            }
        }
    }

    /// Whether the server's provisioning URL gives any HTTP answer (it is alive).
    async fn provisioning_answers(&self) -> bool {
        let req = Request::get(self.server().url("/"), self.cfg.tuning.probe_timeout);
        self.transport.send(req).await.is_ok()
    }

    /// `ServerLost → Holding` at the next server that takes the node, `TornDown` on a
    /// stop request, or `Failed` (tunnel removed) when none does within `--timeout`.
    pub(crate) async fn rehome(
        &mut self,
        lease: Lease,
        mut tunnel: Box<dyn Tunnel>,
        mut stop: StopFuture,
        why: AgentError,
    ) -> State {
        tracing::warn!("lost the server {}: {why}; moving the tunnel to the next server", self.server().base);
        self.deadline = Deadline::after(self.cfg.timeout);
        self.retry = RetryPolicy::new(self.cfg.tuning.retry_initial, self.cfg.tuning.retry_max);
        self.fresh_key();
        self.next_server();
        let moved = tokio::select! {
            moved = self.move_tunnel(&lease, tunnel.as_mut()) => Some(moved),
            () = &mut stop => None,
        };
        let Some(moved) = moved else {
            tracing::info!("stop requested while moving the tunnel: removing it");
            return self.release(lease, tunnel).await;
        };
        match moved {
            Ok(new) => State::Holding { lease: new, tunnel, stop },
            Err(e) => match self.release(lease, tunnel).await {
                State::TornDown { .. } => State::Failed(e),
                other => other,
            },
        }
    }

    /// Enrolls at the next servers until one takes the node, and moves the tunnel there.
    async fn move_tunnel(&mut self, old: &Lease, tunnel: &mut dyn Tunnel) -> Result<Lease, AgentError> {
        let mut state = State::Start;
        loop {
            state = match state {
                State::Enrolled { lease } => match self.adopt(old, lease, tunnel).await {
                    Ok(lease) => return Ok(lease),
                    Err(e) => {
                        self.fresh_key();
                        self.retry_enrollment(e.to_string(), None).await
                    }
                },
                State::Failed(e) => return Err(e),
                other @ (State::Start | State::Challenged { .. } | State::Attested { .. }) => {
                    self.enrollment_step(other).await
                }
                other => return Err(AgentError::Protocol(format!("unexpected state {other:?} while re-enrolling"))),
            };
        }
    }

    /// Points the held tunnel at `lease`'s server, if it serves the datasource URL
    /// cloud-init was given, and waits until the datasource answers through it.
    async fn adopt(&mut self, old: &Lease, lease: Lease, tunnel: &mut dyn Tunnel) -> Result<Lease, AgentError> {
        if lease.datasource_url != old.datasource_url {
            return Err(AgentError::Tunnel(format!(
                "{} serves the datasource at {}, not at {} where cloud-init looks: give every server the \
                 same tunnel network and datasource port",
                self.server().base,
                lease.datasource_url,
                old.datasource_url
            )));
        }
        let key = self.key.take().ok_or_else(|| AgentError::Tunnel("the WireGuard key was already used".into()))?;
        tunnel.reconfigure(self.tunnel_spec(&lease, key)).await?;
        self.wait_for_datasource(&lease).await?;
        let ds = self.ds.clone().unwrap_or_default();
        self.record(&lease, tunnel, true, &ds)?;
        tracing::warn!(
            node_address = %lease.node_address,
            "the tunnel moved to {}: the datasource {} answers through it again",
            self.server().base,
            lease.datasource_url
        );
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_server_is_lost_only_after_the_whole_patience_without_an_answer() {
        let start = Instant::now();
        let mut w = Watch::new(start, Duration::from_secs(30));
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(w.observe(at(5), true), Health::Alive);
        assert_eq!(w.observe(at(10), false), Health::Silent(Duration::from_secs(5)));
        assert_eq!(w.observe(at(30), false), Health::Silent(Duration::from_secs(25)));
        assert_eq!(w.observe(at(34), true), Health::Alive, "one answer is enough");
        assert_eq!(w.observe(at(60), false), Health::Silent(Duration::from_secs(26)));
        assert_eq!(w.observe(at(64), false), Health::Lost);
        assert_eq!(w.observe(at(70), false), Health::Lost, "and stays lost");
    }

    #[test]
    fn the_probe_targets_the_datasource_port() {
        let mut lease = crate::test_fakes::lease();
        assert_eq!(datasource_socket(&lease).to_string(), "100.64.0.1:8081");
        lease.datasource_url = "http://100.64.0.1/".into();
        assert_eq!(datasource_socket(&lease).to_string(), "100.64.0.1:80");
    }
}
