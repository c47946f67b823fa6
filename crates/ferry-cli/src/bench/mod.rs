//! `ferry bench storm`: a boot storm against a real `ferry serve` (its own process, its
//! own network namespace, SQLite store, real WireGuard device), through the complete
//! node protocol for N simulated nodes.
//!
//! By default (`--wire`) every simulated node is a real WireGuard peer inside this
//! process (`wire.rs`: boringtun's Noise state machine and smoltcp's TCP/IP): it
//! handshakes with the server's device over UDP and fetches its documents and phones
//! home through the encrypted tunnel. `--no-wire` takes WireGuard out of the data path:
//! the namespace routes the tunnel network to loopback (`ip route add local
//! 100.64.0.0/16 dev lo`) and each simulated node binds its socket to its tunnel
//! address, so the server sees the source address a tunnel would deliver but never
//! handshakes nor decrypts. `--compare` runs both against the same server, one after
//! the other, and reports the ratio.

mod cgroup;
mod churn;
mod client;
mod failover;
mod lab;
mod pg_pair;
mod report;
mod scratch;
mod status_watch;
mod wire;
mod wire_http;
mod wire_node;

use anyhow::Context;
use clap::Args;
use report::Report;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Nodes in flight at once.
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Enroll every node before any fetches or phones home (peak tunnels = nodes).
    #[arg(long)]
    pub hold: bool,
    /// Every simulated node is a real WireGuard peer: handshake, then HTTP through the
    /// encrypted tunnel (the default).
    #[arg(long, overrides_with = "no_wire")]
    pub wire: bool,
    /// Take WireGuard out of the data path: nodes fetch over loopback from their tunnel
    /// address, the server never handshakes nor decrypts (the figures of earlier rounds).
    #[arg(long, overrides_with = "wire")]
    pub no_wire: bool,
    /// Run the storm twice against the same server, with WireGuard and without, and
    /// report both side by side with their ratio.
    #[arg(long, conflicts_with_all = ["wire", "no_wire"])]
    pub compare: bool,
    /// Inside the tunnel, one TCP connection for all of a node's requests instead of one
    /// per request (cloud-init and today's agent open one per document).
    #[arg(long)]
    pub keep_alive: bool,
    /// WireGuard backend of the server under test: userspace or wireguard-go.
    #[arg(long, default_value = "userspace", value_parser = ["userspace", "wireguard-go"])]
    pub backend: String,
    /// How many servers share the store. A simulated node starts at the server its MAC
    /// picks, as the agent does (`ferry.server_order=hashed`). More than one needs
    /// --store postgres://... (or --failover).
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// PostgreSQL to run on instead of each server's embedded SQLite: the bench creates
    /// (and afterwards drops) a scratch database there. The servers run in the lab's
    /// network namespace, so use the unix socket: postgres://USER@localhost:PORT/postgres?host=/SOCKET/DIR
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Run each server in a cgroup of its own with this share of one CPU core
    /// (cgroup v1 cpu.cfs_quota_us or v2 cpu.max), the simulated nodes and PostgreSQL
    /// outside those budgets: simulated machines for a capacity-per-server figure.
    /// From 0.1 (the kernel's least quota in the 10 ms period used) to 64.
    #[arg(long, value_name = "FRACTION")]
    pub server_cpu: Option<f64>,
    /// A simulated node whose boot fails (refused, timed out, HTTP 5xx) boots again
    /// from the start until this many seconds have passed, as the agent retries; its
    /// errors are then reported as retried, and only a node that never completes
    /// fails the run. 0: no retries, every error fails the run.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub retry_for: u64,
    /// A PostgreSQL failover drill: the bench starts its own primary and a streaming
    /// standby (Debian's PostgreSQL: pg_basebackup -R), the servers connect with a
    /// two-host URL (target_session_attrs=read-write), and a third of the way into the
    /// storm the primary is killed (SIGKILL) and the standby promoted (pg_ctl promote)
    /// --promote-after seconds later. Implies --retry-for 120 unless given.
    #[arg(long, conflicts_with_all = ["store", "hold"])]
    pub failover: bool,
    /// With --failover: seconds between killing the primary and promoting the standby
    /// (the time a person or an HA manager takes to decide).
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub promote_after: f64,
    /// While the storm runs, follow the audit log as `ferry node status --watch` does
    /// (the same fold, one poll a second) and report whether that view saw every node
    /// phone home and how far it lagged behind; a node it never saw fails the run.
    #[arg(long)]
    pub watch_status: bool,
    /// Peers for the side-by-side churn comparison (0: skip).
    #[arg(long, default_value_t = 1000)]
    pub churn_peers: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub async fn storm(args: StormArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "ferry bench storm needs root (network namespaces): sudo ferry bench storm"
    );
    anyhow::ensure!(args.nodes > 0 && args.concurrency > 0, "--nodes and --concurrency must be positive");
    anyhow::ensure!((1..=8).contains(&args.servers), "--servers takes 1 to 8");
    anyhow::ensure!(
        args.servers == 1 || args.store.is_some() || args.failover,
        "several servers need a shared store: add --store postgres://..."
    );
    if let Some(share) = args.server_cpu {
        anyhow::ensure!(
            (0.1..=64.0).contains(&share),
            "--server-cpu takes a share of one core from 0.1 (the kernel's least quota) to 64, e.g. 0.25"
        );
    }
    anyhow::ensure!(args.promote_after >= 0.0 && args.promote_after < 600.0, "--promote-after takes 0 to 600 seconds");
    let mut args = args;
    if args.failover && args.retry_for == 0 {
        args.retry_for = 120;
    }
    let modes = if args.compare { vec![true, false] } else { vec![!args.no_wire] };
    // The lab's servers share one namespace, and every ferry server uses the same
    // tunnel address on its own device: only one device can own the route back to the
    // nodes, so real tunnels work against one server at a time here.
    anyhow::ensure!(
        args.servers == 1 || modes == [false],
        "several servers share the lab's namespace and tunnel address, so their tunnels cannot all route: \
         add --no-wire to --servers {}",
        args.servers
    );
    let lab = lab::Lab::start(&args).await?;
    let pids: Vec<String> = lab.servers.iter().map(|s| s.pid.to_string()).collect();
    eprintln!(
        "storm: {} nodes, concurrency {}, {} server(s) (pid {}) in namespace {} ({} backend, {} store); {}",
        args.nodes,
        args.concurrency,
        lab.servers.len(),
        pids.join(", "),
        lab.netns,
        args.backend,
        match (&args.store, args.failover) {
            (_, true) => "PostgreSQL primary + standby, failover drill",
            (Some(_), _) => "PostgreSQL",
            _ => "SQLite",
        },
        match &modes[..] {
            [true] => "nodes are WireGuard peers (handshake, HTTP inside the tunnel)",
            [false] => "no WireGuard: tunnel network routed to lo, nodes bind their tunnel addresses",
            _ => "with WireGuard, then without (--compare)",
        }
    );
    lab.add_nodes(args.nodes).await?;
    let targets = lab.targets().await?;
    let mut runs = Vec::new();
    for wire in modes {
        let plan = client::Plan {
            targets: lab.targets().await?,
            wire,
            keep_alive: args.keep_alive,
            retry_for: Duration::from_secs(args.retry_for),
        };
        runs.push(run(&lab, &args, plan).await?);
    }
    drop(targets);
    let churn = if args.churn_peers > 0 {
        Some(churn::compare(&lab, args.churn_peers, args.backend == "wireguard-go").await?)
    } else {
        None
    };
    let report = Report::new(&args, &runs, churn);
    lab.stop().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    report.ok().then_some(()).context("the storm had errors or leaks (see above)")
}

/// One storm through every node, then the leak check.
async fn run(lab: &lab::Lab, args: &StormArgs, plan: client::Plan) -> anyhow::Result<report::Run> {
    let wire = plan.wire;
    lab.route_tunnel_network_to_lo(!wire)?;
    lab.reset_peak_rss();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let plan = Arc::new(plan);
    let stats = Arc::new(report::Stats::default());
    let cpu_before = lab.server_cpu();
    let postgres_before = lab.postgres_cpu().await;
    let throttled_before = lab.throttled_secs();
    let drops_before = lab.udp_receive_drops();
    let client_before = client_cpu_secs();
    let started = Instant::now();
    let (nodes, concurrency, hold) = (args.nodes, args.concurrency, args.hold);
    let watcher = match args.watch_status {
        true => {
            let names = (0..nodes).map(client::node_name).collect();
            Some(status_watch::Watcher::start(lab.servers[0].admin_socket.clone(), names).await?)
        }
        false => None,
    };
    let stats2 = stats.clone();
    let drill = args
        .failover
        .then(|| failover::Drill::start(lab, stats.clone(), args.nodes, args.promote_after))
        .transpose()?;
    lab.in_netns(move || async move {
        let progress = indicatif::ProgressBar::new(nodes as u64 * if hold { 2 } else { 1 });
        progress.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        progress.set_message(if wire { "nodes (wire)" } else { "nodes (no wire)" });
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        if hold {
            let enroll = (0..nodes).map(|i| client::enroll_only(i, 0, plan.clone(), stats2.clone()));
            let sessions = client::run_all(enroll, &sem, &progress).await;
            let finish = sessions.into_iter().map(|s| client::finish(s, plan.clone(), stats2.clone()));
            client::run_all(finish, &sem, &progress).await;
        } else {
            let boots = (0..nodes).map(|i| client::full_boot(i, plan.clone(), stats2.clone()));
            client::run_all(boots, &sem, &progress).await;
        }
        progress.finish_and_clear();
    })
    .await?;
    let elapsed = started.elapsed();
    let status_watch = match watcher {
        Some(w) => Some(w.finish(&stats.phoned_home_at()).await),
        None => None,
    };
    let failover = match drill {
        Some(d) => Some(d.finish(lab).await?),
        None => None,
    };
    let postgres_cpu_s = match (postgres_before, lab.postgres_cpu().await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let throttled_s = lab.throttled_secs().map(|t| t - throttled_before.unwrap_or(0.0));
    let client_cpu_s = client_cpu_secs() - client_before;
    let client_peak_rss_kib = lab::peak_rss_kib("self");
    let server_cpu = lab.server_cpu().since(&cpu_before);
    let server_peak_rss_kib = lab.server_peak_rss_kib();
    let udp_receive_drops = lab.udp_receive_drops() - drops_before;
    let leaks = lab.verify_no_leaks(Duration::from_secs(20)).await?;
    let stats = Arc::try_unwrap(stats).map_err(|_| anyhow::anyhow!("a simulated node outlived the storm"))?;
    Ok(report::Run {
        wire,
        stats,
        elapsed,
        server_cpu,
        server_peak_rss_kib,
        client_cpu_s,
        client_peak_rss_kib,
        udp_receive_drops,
        leaks,
        postgres_cpu_s,
        throttled_s,
        retrying: args.retry_for > 0,
        failover,
        status_watch,
    })
}

/// This process's CPU seconds so far: the simulated nodes (and the bench's own idle
/// runtime).
fn client_cpu_secs() -> f64 {
    lab::cpu_secs(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}
