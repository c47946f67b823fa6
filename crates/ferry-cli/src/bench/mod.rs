//! `ferry bench storm`: a boot storm against a real `ferry serve` (its own process, its
//! own network namespace, SQLite store, real WireGuard device), through the complete
//! node protocol for N simulated nodes.
//!
//! To reach the datasource from N tunnel addresses without N WireGuard clients, the
//! namespace routes the tunnel network to loopback (`ip route add local 100.64.0.0/16
//! dev lo`) and each simulated node binds its socket to its own tunnel address: the
//! server sees exactly the source address a real tunnel would deliver.

mod churn;
mod client;
mod lab;
mod report;
mod scratch;

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
    /// WireGuard backend of the server under test: userspace or wireguard-go.
    #[arg(long, default_value = "userspace", value_parser = ["userspace", "wireguard-go"])]
    pub backend: String,
    /// How many servers share the store; simulated node i enrolls at server i mod N.
    /// More than one needs --store postgres://...
    #[arg(long, default_value_t = 1)]
    pub servers: usize,
    /// PostgreSQL to run on instead of each server's embedded SQLite: the bench creates
    /// (and afterwards drops) a scratch database there. The servers run in the lab's
    /// network namespace, so use the unix socket: postgres://USER@localhost:PORT/postgres?host=/SOCKET/DIR
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
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
        args.servers == 1 || args.store.is_some(),
        "several servers need a shared store: add --store postgres://..."
    );
    let lab = lab::Lab::start(&args).await?;
    let pids: Vec<String> = lab.servers.iter().map(|s| s.pid.to_string()).collect();
    eprintln!(
        "storm: {} nodes, concurrency {}, {} server(s) (pid {}) in namespace {} ({} backend, {} store); tunnel \
         network routed to lo, simulated nodes bind their tunnel addresses",
        args.nodes,
        args.concurrency,
        lab.servers.len(),
        pids.join(", "),
        lab.netns,
        args.backend,
        if args.store.is_some() { "PostgreSQL" } else { "SQLite" }
    );
    lab.add_nodes(args.nodes).await?;
    let targets = Arc::new(lab.targets().await?);
    let stats = Arc::new(report::Stats::default());
    let started = Instant::now();
    let cpu_before = lab.server_cpu_secs();
    let nodes = args.nodes;
    let (concurrency, hold) = (args.concurrency, args.hold);
    let stats2 = stats.clone();
    let tg = targets.clone();
    lab.in_netns(move || async move {
        let progress = indicatif::ProgressBar::new(nodes as u64 * if hold { 2 } else { 1 });
        progress.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        progress.set_message("nodes");
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        if hold {
            let enroll = (0..nodes).map(|i| client::enroll_only(i, tg.clone(), stats2.clone()));
            let sessions = client::run_all(enroll, &sem, &progress).await;
            let finish = sessions.into_iter().map(|s| client::finish(s, stats2.clone()));
            client::run_all(finish, &sem, &progress).await;
        } else {
            let boots = (0..nodes).map(|i| client::full_boot(i, tg.clone(), stats2.clone()));
            client::run_all(boots, &sem, &progress).await;
        }
        progress.finish_and_clear();
    })
    .await?;
    let peak_tunnels = stats.peak_tunnels();
    let elapsed = started.elapsed();
    let cpu = lab.server_cpu_secs() - cpu_before;
    let rss_peak = lab.server_peak_rss_kib();
    let leaks = lab.verify_no_leaks(Duration::from_secs(20)).await?;
    let churn = if args.churn_peers > 0 {
        Some(churn::compare(&lab, args.churn_peers, args.backend == "wireguard-go").await?)
    } else {
        None
    };
    let report = Report::new(&args, &stats, elapsed, cpu, rss_peak, peak_tunnels, leaks, churn);
    lab.stop().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_text());
    }
    report.ok().then_some(()).context("the storm had errors or leaks (see above)")
}
