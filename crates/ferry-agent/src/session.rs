//! Transitions once enrolled: `Enrolled → TunnelUp → Fetched → PhonedHome → TornDown`
//! (fetch mode) or `TunnelUp → Holding → TornDown` / `TunnelUp → Detached` (cloud-init).
//! Every request into the tunnel is bound to the tunnel's interface.

use std::time::Duration;

use ferry_api::enroll::PhoneHome;
use ferry_wg::PrivateKey;
use tokio::signal::unix::{signal, SignalKind};

use crate::args::Mode;
use crate::error::AgentError;
use crate::http::{join, Request, Response, Transport};
use crate::machine::{abort, Agent, Lease, State, StopFuture};
use crate::phone_home;
use crate::retry::{Deadline, RetryPolicy};
use crate::seed::{file_ds_line, url_ds_line, write_seed, DOCUMENTS};
use crate::state::{self, AgentState};
use crate::tunnel::{GuardPolicy, Tunnel, TunnelFactory, TunnelSpec};
use ferry_wg::BackendKind;

/// Longest delay between datasource probes or fetch retries.
const PROBE_MAX: Duration = Duration::from_secs(2);

/// The result of fetching one document.
/// Why a document could not be fetched: the server is gone (another may serve the
/// node), or it answered something that another server would answer too.
pub(crate) enum FetchFailure {
    ServerLost(AgentError),
    Fatal(AgentError),
}

pub(crate) enum Fetched {
    Body(Vec<u8>),
    Absent,
}

impl<T: Transport, F: TunnelFactory> Agent<T, F> {
    /// `Enrolled → TunnelUp`: the key goes into the device, and the datasource must answer
    /// through the tunnel within `--tunnel-timeout`.
    pub(crate) async fn bring_up(&mut self, lease: Lease) -> State {
        let Some(private_key) = self.key.take() else {
            return State::Failed(AgentError::Tunnel("the WireGuard key was already used: restart the agent".into()));
        };
        let tunnel = match self.tunnels.open(self.tunnel_spec(&lease, private_key)).await {
            Ok(t) => t,
            Err(e) => return State::Failed(e),
        };
        match self.wait_for_datasource(&lease).await {
            Ok(()) => State::TunnelUp { lease, tunnel },
            Err(e) => self.fail_over(tunnel, e).await,
        }
    }

    /// The tunnel to `lease`'s server with `private_key`.
    pub(crate) fn tunnel_spec(&self, lease: &Lease, private_key: PrivateKey) -> TunnelSpec {
        TunnelSpec {
            interface: self.cfg.interface.clone(),
            backend: self.cfg.backend,
            private_key,
            node_address: lease.node_address,
            server_address: lease.server_address,
            server_key: lease.server_key,
            endpoint: lease.endpoint,
            keepalive: self.cfg.keepalive,
            guard: match self.cfg.mode {
                Mode::CloudInit => GuardPolicy::Required,
                Mode::Fetch => GuardPolicy::BestEffort,
            },
        }
    }

    /// How long a request into the tunnel is retried: until `--timeout`; with several
    /// servers until `--tunnel-timeout`, so that one that stops answering is given up
    /// sooner.
    fn patience(&self) -> Deadline {
        match self.has_other_servers() {
            true => Deadline::after(self.deadline.cap(self.cfg.tunnel_timeout)),
            false => self.deadline,
        }
    }

    /// A request into the tunnel: it may leave only through the tunnel's interface.
    fn through_tunnel(&self, req: Request) -> Request {
        req.via(&self.cfg.interface)
    }

    pub(crate) async fn wait_for_datasource(&self, lease: &Lease) -> Result<(), AgentError> {
        let limit = Deadline::after(self.deadline.cap(self.cfg.tunnel_timeout));
        let mut retry = RetryPolicy::new(self.cfg.tuning.probe_initial, PROBE_MAX);
        let url = join(&lease.datasource_url, "meta-data");
        loop {
            let timeout = limit.cap(self.cfg.tuning.probe_timeout);
            let (last, retry_after) =
                match self.transport.send(self.through_tunnel(Request::get(url.clone(), timeout))).await {
                    Ok(r) if r.is_success() => {
                        tracing::info!("the datasource answers through the tunnel");
                        return Ok(());
                    }
                    Ok(r) if r.status == 429 || r.status >= 500 => retry_later(&r),
                    Ok(r) => {
                        return Err(AgentError::Tunnel(format!(
                            "the datasource answered HTTP {} ({}) through the tunnel: the server does not serve \
                         this tunnel (expired? check `ferry audit` on the server)",
                            r.status,
                            r.error_text()
                        )))
                    }
                    Err(e) => (e.0, None),
                };
            tracing::debug!("datasource not reachable through the tunnel yet: {last}");
            if !retry.wait(retry_after, &limit).await {
                return Err(AgentError::Tunnel(format!(
                    "the datasource {url} did not answer through the tunnel within {} s (last error: {last}): \
                     check that UDP reaches the server's WireGuard endpoint {} from this node, and that \
                     ferry.pubkey= is the server's key (with a wrong key the handshake fails silently)",
                    limit.total().as_secs(),
                    lease.endpoint
                )));
            }
        }
    }

    /// `TunnelUp → Fetched` (fetch mode), `→ Holding` or `→ Detached` (cloud-init mode).
    pub(crate) async fn use_tunnel(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>) -> State {
        if self.cfg.mode == Mode::CloudInit {
            return self.serve_cloud_init(lease, tunnel).await;
        }
        let mut docs = Vec::new();
        for (name, required) in DOCUMENTS {
            match self.fetch(&lease, name, required).await {
                Ok(Fetched::Body(body)) => docs.push((name, body)),
                Ok(Fetched::Absent) => tracing::info!("{name} is absent (404): not written"),
                Err(FetchFailure::ServerLost(e)) => return self.fail_over(tunnel, e).await,
                Err(FetchFailure::Fatal(e)) => return abort(tunnel, e).await,
            }
        }
        if let Err(e) = write_seed(&self.cfg.seed_dir, &docs) {
            return abort(tunnel, e).await;
        }
        tracing::info!(dir = %self.cfg.seed_dir.display(), documents = docs.len(), "seed written");
        let meta_data = docs.into_iter().find(|(n, _)| *n == "meta-data").map(|(_, b)| b).unwrap_or_default();
        State::Fetched { lease, tunnel, meta_data }
    }

    /// One document. Unanswered requests are retried until `--timeout`, or with several
    /// servers until `--tunnel-timeout` (then the server counts as lost).
    pub(crate) async fn fetch(&self, lease: &Lease, name: &str, required: bool) -> Result<Fetched, FetchFailure> {
        let url = join(&lease.datasource_url, name);
        let mut retry = RetryPolicy::new(self.cfg.tuning.probe_initial, PROBE_MAX);
        let patience = self.patience();
        loop {
            let timeout = self.deadline.cap(self.cfg.tuning.request_timeout);
            let (last, retry_after) =
                match self.transport.send(self.through_tunnel(Request::get(url.clone(), timeout))).await {
                    Ok(r) if r.is_success() => return Ok(Fetched::Body(r.body)),
                    Ok(r) if r.status == 404 && !required => return Ok(Fetched::Absent),
                    Ok(r) if r.status == 429 || r.status >= 500 => retry_later(&r),
                    Ok(r) => {
                        return Err(FetchFailure::Fatal(AgentError::Fetch(format!(
                            "{url} answered HTTP {} ({}){}",
                            r.status,
                            r.error_text(),
                            if r.status == 404 { ": the server has no such document for this node" } else { "" }
                        ))))
                    }
                    Err(e) => (e.0, None),
                };
            if retry.wait(retry_after, &patience).await {
                continue;
            }
            return Err(match self.has_other_servers() {
                true => FetchFailure::ServerLost(AgentError::Fetch(format!(
                    "{url}: {last} (no answer within the --tunnel-timeout of {} s)",
                    patience.total().as_secs()
                ))),
                false => FetchFailure::Fatal(AgentError::Fetch(format!(
                    "{url}: {last} (gave up at the --timeout of {} s)",
                    patience.total().as_secs()
                ))),
            });
        }
    }

    /// `Fetched → PhonedHome`. A failed phone-home is logged, not fatal: the seed is
    /// written, and the server expires an unconfirmed tunnel at its TTL.
    pub(crate) async fn phone_home(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>, meta_data: &[u8]) -> State {
        // Host certificates first: the tunnel closes with the phone-home.
        self.certify_host_keys(&lease).await;
        let hostname = phone_home::kernel_hostname(&self.cfg.hostname_file);
        let mut report = phone_home::build(meta_data, hostname, &self.cfg.ssh_dir);
        // In fetch mode (an initramfs) no sshd has keys yet: report the ones the seed
        // gives cloud-init to install (`ssh_keys`), which the booted OS will present.
        if let Ok(user_data) = std::fs::read(self.cfg.seed_dir.join("user-data")) {
            phone_home::fill_keys_from_user_data(&mut report, &user_data);
        }
        match self.post_phone_home(&lease, &report).await {
            Ok(()) => {
                self.phoned_home = true;
                tracing::info!("phoned home");
            }
            // Another server can still record this boot: enroll there and boot again.
            Err(why) if self.has_other_servers() => {
                return self.fail_over(tunnel, AgentError::Fetch(format!("phone-home failed: {why}"))).await
            }
            Err(why) => tracing::warn!(
                "phone-home to {} failed: {why}; the seed is written anyway and the server will drop the \
                 tunnel at its TTL ({})",
                lease.phone_home_url,
                lease.expires_at
            ),
        }
        State::PhonedHome { lease, tunnel }
    }

    async fn post_phone_home(&self, lease: &Lease, report: &PhoneHome) -> Result<(), String> {
        let body = serde_json::to_vec(report).map_err(|e| e.to_string())?;
        let mut retry = RetryPolicy::new(self.cfg.tuning.probe_initial, PROBE_MAX);
        let patience = self.patience();
        loop {
            let timeout = self.deadline.cap(self.cfg.tuning.request_timeout);
            let req = self.through_tunnel(Request::post(lease.phone_home_url.clone(), Some(body.clone()), timeout));
            let (last, retry_after) = match self.transport.send(req).await {
                Ok(r) if r.is_success() => return Ok(()),
                Ok(r) if r.status == 429 || r.status >= 500 => retry_later(&r),
                Ok(r) => return Err(format!("HTTP {}: {}", r.status, r.error_text())),
                Err(e) => (e.0, None),
            };
            if !retry.wait(retry_after, &patience).await {
                return Err(last);
            }
        }
    }

    /// `PhonedHome → TornDown`: remove the interface, then print the seed's `ds=` line.
    pub(crate) async fn finish(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>) -> State {
        let name = tunnel.interface().to_string();
        if let Err(e) = tunnel.close().await {
            tracing::warn!(interface = %name, "{e}");
        }
        match self.emit(file_ds_line(&self.cfg.seed_dir)) {
            Ok(()) => State::TornDown { lease },
            Err(e) => State::Failed(e),
        }
    }

    /// cloud-init mode: write the node's network-config drop-in, the state file, print the
    /// datasource line, then hold the tunnel (userspace, `--hold`, or several servers) or leave a kernel interface behind.
    async fn serve_cloud_init(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>) -> State {
        // With several servers the agent must stay to watch the server and fail over.
        let detach = tunnel.backend() == BackendKind::Kernel && !self.cfg.hold && !self.has_other_servers();
        if tunnel.backend() == BackendKind::Kernel && !self.cfg.hold && !detach {
            tracing::info!("several servers: holding the tunnel (as with --hold) to move it if its server is lost");
        }
        // Listen for SIGTERM/SIGINT before announcing anything, so a prompt teardown is not lost.
        let stop = match (detach, self.stop_override.take()) {
            (true, _) => None,
            (false, Some(stop)) => Some(stop),
            (false, None) => match stop_signals() {
                Ok(stop) => Some(stop),
                Err(e) => return abort(tunnel, e).await,
            },
        };
        // cloud-init reads network-config from the system configuration, not the URL.
        let network_config = match self.fetch(&lease, "network-config", false).await {
            Ok(Fetched::Body(body)) => Some(body),
            Ok(Fetched::Absent) => None,
            Err(FetchFailure::ServerLost(e)) => return self.fail_over(tunnel, e).await,
            Err(FetchFailure::Fatal(e)) => return abort(tunnel, e).await,
        };
        if let Err(e) = crate::network_config::install(&self.cfg.network_config_file, network_config.as_deref()) {
            return abort(tunnel, e).await;
        }
        let ds = url_ds_line(&lease.datasource_url);
        if let Err(e) = self.record(&lease, tunnel.as_ref(), !detach, &ds) {
            return abort(tunnel, e).await;
        }
        if let Err(e) = self.emit(ds) {
            let _ = state::remove(&self.cfg.state_dir);
            return abort(tunnel, e).await;
        }
        match stop {
            None => {
                tunnel.detach();
                State::Detached { lease }
            }
            Some(stop) => {
                tracing::info!(interface = %tunnel.interface(), "holding the tunnel for cloud-init until SIGTERM");
                State::Holding { lease, tunnel, stop }
            }
        }
    }

    /// Writes the state file `teardown` (and boot scripts) read.
    pub(crate) fn record(&self, lease: &Lease, tunnel: &dyn Tunnel, held: bool, ds: &str) -> Result<(), AgentError> {
        let record = AgentState {
            interface: tunnel.interface().to_string(),
            backend: tunnel.backend(),
            pid: std::process::id(),
            held,
            node: lease.node.clone(),
            ds: ds.to_string(),
            datasource_url: lease.datasource_url.clone(),
            phone_home_url: lease.phone_home_url.clone(),
            expires_at: lease.expires_at.clone(),
            guard: tunnel.guard().map(str::to_owned),
        };
        state::write(&self.cfg.state_dir, &record)
    }

    /// `Holding → TornDown` on SIGTERM/SIGINT, or once the server's TTL has passed;
    /// `Holding → ServerLost` when the watcher loses the server (several servers).
    pub(crate) async fn hold(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>, mut stop: StopFuture) -> State {
        let ttl = async {
            if lease.expires_in.is_zero() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(lease.expires_in + self.cfg.tuning.ttl_grace).await;
        };
        let lost = tokio::select! {
            () = &mut stop => {
                tracing::info!("stop requested: removing the tunnel");
                None
            }
            () = ttl => {
                tracing::warn!("the tunnel's TTL has passed (the server dropped the peer): removing the interface");
                None
            }
            why = self.watch_server(&lease, tunnel.as_ref()) => Some(why),
        };
        match lost {
            Some(why) => State::ServerLost { lease, tunnel, stop, why },
            None => self.release(lease, tunnel).await,
        }
    }

    /// Removes a held tunnel (interface and guard) and the state file: `TornDown`.
    pub(crate) async fn release(&mut self, lease: Lease, tunnel: Box<dyn Tunnel>) -> State {
        let name = tunnel.interface().to_string();
        if let Err(e) = tunnel.close().await {
            tracing::warn!(interface = %name, "{e}");
        }
        if let Err(e) = state::remove(&self.cfg.state_dir) {
            tracing::warn!("{e}");
        }
        State::TornDown { lease }
    }
}

/// An answer worth another try (429, 5xx): what to report if it is the last, and the
/// server's Retry-After for the wait.
fn retry_later(r: &Response) -> (String, Option<Duration>) {
    let after = r.retry_after.map(|d| format!(", Retry-After {} s", d.as_secs())).unwrap_or_default();
    (format!("HTTP {}: {}{after}", r.status, r.error_text()), r.retry_after)
}

fn stop_signals() -> Result<StopFuture, AgentError> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| AgentError::io("cannot handle SIGTERM", e))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| AgentError::io("cannot handle SIGINT", e))?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }))
}
