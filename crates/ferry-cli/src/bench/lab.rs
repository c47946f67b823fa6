//! The server under test: a `ferry serve` process in a network namespace of its own.

use super::client::{node_mac, node_name, node_tag};
use super::report::{Cpu, Leaks};
use super::StormArgs;
use crate::client::AdminClient;
use anyhow::{bail, Context};
use ferry_api::admin::{AddNodes, AddProfiles, Changed, NewNode, NewProfile};
use hyper::Method;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `ferry serve` of the lab: server `i` (0-based) listens for provisioning on
/// 127.0.0.1:8470+10i, serves its datasource on port 8471+10i of the shared tunnel
/// address and has WireGuard device `fst<pid><i>` on port 51820+i.
pub struct LabServer {
    pub interface: String,
    pub pid: u32,
    pub provisioning: std::net::SocketAddr,
    pub client: AdminClient,
    pub admin_socket: PathBuf,
    child: Option<Child>,
    /// `--server-cpu`: the server's own cgroup (dropped after the server exits).
    budget: Option<super::cgroup::CpuBudget>,
    wg_go: Option<Child>,
}

pub struct Lab {
    pub netns: String,
    pub servers: Vec<LabServer>,
    dir: PathBuf,
    /// A scratch PostgreSQL database made for this run, dropped at the end.
    scratch: Option<super::scratch::ScratchDatabase>,
    /// `--failover`: the bench's own PostgreSQL primary and standby.
    pub pg_pair: Option<std::sync::Arc<super::pg_pair::PgPair>>,
    cleaned: bool,
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Lab {
    pub async fn start(args: &StormArgs) -> anyhow::Result<Lab> {
        let id = std::process::id();
        let netns = format!("ferrystorm{id}");
        let dir = std::env::temp_dir().join(format!("ferry-storm-{id}"));
        std::fs::create_dir_all(&dir)?;
        sh(&["ip", "netns", "add", &netns])?;
        let mut lab = Lab {
            netns: netns.clone(),
            servers: Vec::new(),
            dir: dir.clone(),
            scratch: None,
            pg_pair: None,
            cleaned: false,
        };
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        let store = match &args.store {
            None if args.failover => {
                let pair = super::pg_pair::PgPair::start().context("starting the PostgreSQL primary and standby")?;
                let url = pair.url.clone();
                lab.pg_pair = Some(std::sync::Arc::new(pair));
                format!("store = \"{url}\"\n")
            }
            Some(url) => {
                let scratch = super::scratch::ScratchDatabase::create(url).await?;
                let url = scratch.url.clone();
                lab.scratch = Some(scratch);
                format!("store = \"{url}\"\n")
            }
            None => String::new(),
        };
        for i in 0..args.servers {
            let server = lab.start_server(args, i, &store).await?;
            lab.servers.push(server);
        }
        Ok(lab)
    }

    async fn start_server(&mut self, args: &StormArgs, i: usize, store: &str) -> anyhow::Result<LabServer> {
        let netns = &self.netns;
        let interface = format!("fst{}{i}", std::process::id() % 100_000);
        let mut wg_go = None;
        let backend = if args.backend == "wireguard-go" {
            let child = Command::new("ip")
                .args(["netns", "exec", netns, "wireguard-go", "-f", &interface])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start wireguard-go: apt-get install -y wireguard-go")?;
            wg_go = Some(child);
            let sock = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
            wait_for(Duration::from_secs(10), || sock.exists()).context("wireguard-go did not create its socket")?;
            sh(&["ip", "-n", netns, "addr", "add", "100.64.0.1/16", "dev", &interface])?;
            sh(&["ip", "-n", netns, "link", "set", &interface, "up"])?;
            ferry_wg::BackendChoice::Uapi
        } else {
            ferry_wg::BackendChoice::Userspace
        };
        let dir = self.dir.join(format!("s{i}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("ferry.toml");
        let provisioning: std::net::SocketAddr = format!("127.0.0.1:{}", 8470 + 10 * i).parse()?;
        // Every simulated node comes from one address, so the per-source limits (meant for
        // one node per address: rate and connections) are set far above what the storm
        // sends; the global limit and the enrollment cap too, so the benchmark measures
        // the server, not its limits — their code still runs on every request. The
        // no-handshake deadline stays at its default unless --hold (whose nodes handshake
        // only after every node has enrolled, which can outlast it); --no-wire nodes never
        // handshake, but phone home long before the deadline.
        let deadline = if args.hold { "handshake_deadline_secs = 0\n" } else { "" };
        std::fs::write(
            &config,
            format!(
                "{store}secrets_key = \"{}\"\n[cluster]\nserver_id = \"s{i}\"\n\
                 [provisioning]\nlisten = \"{provisioning}\"\nmax_pending_nonces = 1000000\n\
                 max_pending_nonces_per_source = 1000000\n\
                 enroll_rate_per_source = 1000000\nenroll_burst_per_source = 1000000\n\
                 enroll_rate_global = 1000000\nenroll_burst_global = 1000000\n\
                 max_concurrent_enrollments = 100000\nmax_connections_per_source = 100000\n\
                 [datasource]\nport = {}\n\
                 [wireguard]\ninterface = \"{interface}\"\nbackend = \"{backend}\"\nlisten_port = {}\n\
                 tunnel_ttl_secs = 3600\n{deadline}",
                self.dir.join("secrets.key").display(),
                8471 + 10 * i,
                51820 + i,
            ),
        )?;
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let sock = dir.join("admin.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(&exe)
            .args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(&sock)
            .arg("--config")
            .arg(&config)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start ferry serve")?;
        let budget = match args.server_cpu {
            Some(share) => {
                let budget =
                    super::cgroup::CpuBudget::create(&format!("ferry-storm-{}-s{i}", std::process::id()), share)?;
                budget.add(child.id())?;
                Some(budget)
            }
            None => None,
        };
        let server = LabServer {
            interface,
            pid: child.id(),
            provisioning,
            client: AdminClient::new(sock.clone()),
            admin_socket: sock.clone(),
            child: Some(child),
            wg_go,
            budget,
        };
        wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&sock).is_ok())
            .with_context(|| format!("ferry serve did not start; see {}", dir.join("server.log").display()))?;
        Ok(server)
    }

    /// The first server's admin API (the inventory is shared).
    fn client(&self) -> &AdminClient {
        &self.servers[0].client
    }

    /// Registers the simulated nodes (asset-tag identity: they all connect from
    /// loopback) with one profile carrying real templates.
    pub async fn add_nodes(&self, n: usize) -> anyhow::Result<()> {
        let settings = serde_json::json!({
            "identity": ["asset-tag"],
            "cloud_init": {
                "user_data": "#cloud-config\nhostname: {{ node.name }}\nruncmd:\n- echo {{ ferry.tunnel_address }}\n",
                "network_config": "version: 2\nethernets: {}\n",
            }
        });
        let profile =
            NewProfile { name: "storm".parse()?, profiles: vec![], settings: serde_json::from_value(settings)? };
        self.client()
            .call::<Changed>(Method::POST, "/v1/profiles", Some(&AddProfiles { profiles: vec![profile] }))
            .await?;
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let nodes = chunk
                .iter()
                .map(|&i| -> anyhow::Result<NewNode> {
                    Ok(NewNode {
                        name: node_name(i).parse()?,
                        profiles: vec!["storm".parse()?],
                        settings: serde_json::from_value(
                            serde_json::json!({"interfaces": {"eth0": {"mac": node_mac(i)}}}),
                        )?,
                        asset_tag: Some(ferry_api::Secret::new(node_tag(i))),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            self.client().call::<Changed>(Method::POST, "/v1/nodes", Some(&AddNodes { nodes })).await?;
        }
        Ok(())
    }

    /// Each server's provisioning address and WireGuard key, in order.
    pub async fn targets(&self) -> anyhow::Result<Vec<super::client::Target>> {
        let mut out = Vec::new();
        for s in &self.servers {
            let v: serde_json::Value = s.client.get("/v1/server").await?;
            let key = v["public_key"].as_str().map(str::to_owned).context("no server key")?;
            out.push(super::client::Target { provisioning: s.provisioning, server_key: key });
        }
        Ok(out)
    }

    /// Runs `f` on a runtime whose threads live in the lab's network namespace.
    pub async fn in_netns<F, Fut, T>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = Path::new("/var/run/netns").join(&self.netns);
        let handle = std::thread::spawn(move || -> anyhow::Result<T> {
            let ns = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
            // Threads the runtime starts inherit this thread's namespace.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            Ok(rt.block_on(f()))
        });
        tokio::task::spawn_blocking(move || handle.join().map_err(|_| anyhow::anyhow!("the storm thread panicked"))?)
            .await?
    }

    fn proc_field(pid: u32, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default()
    }

    /// For --no-wire: the namespace delivers the tunnel network to loopback, so a
    /// simulated node can bind its tunnel address. Off for real tunnels, whose replies
    /// must leave through the server's device.
    pub fn route_tunnel_network_to_lo(&self, on: bool) -> anyhow::Result<()> {
        let verb = if on { "add" } else { "del" };
        let r = sh(&["ip", "-n", &self.netns, "route", verb, "local", "100.64.0.0/16", "dev", "lo", "table", "local"]);
        match r {
            Err(e) if !on && e.to_string().contains("No such process") => Ok(()), // was not there
            r => r.map(|_| ()),
        }
    }

    /// The servers' user + system CPU seconds so far, summed, by kind of thread.
    pub fn server_cpu(&self) -> Cpu {
        let mut cpu = Cpu::default();
        for s in &self.servers {
            cpu.total += cpu_secs(&Self::proc_field(s.pid, "stat"));
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", s.pid)) else { continue };
            for task in tasks.flatten() {
                let path = task.path();
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                let secs = cpu_secs(&std::fs::read_to_string(path.join("stat")).unwrap_or_default());
                *cpu.by_thread.entry(thread_kind(comm.trim())).or_default() += secs;
            }
            // wireguard-go is the server's device in its own process: its CPU is the
            // server's too (`ip netns exec` execs it, so the child's pid is its own).
            if let Some(wg) = &s.wg_go {
                let secs = cpu_secs(&Self::proc_field(wg.id(), "stat"));
                cpu.total += secs;
                *cpu.by_thread.entry("wireguard-go").or_default() += secs;
            }
        }
        cpu
    }

    /// UDP datagrams the namespace dropped for a full socket receive buffer so far
    /// (`RcvbufErrors`): in wire mode, packets the server's device socket could not take.
    pub fn udp_receive_drops(&self) -> u64 {
        let Ok(out) = sh(&["ip", "netns", "exec", &self.netns, "cat", "/proc/net/snmp"]) else { return 0 };
        let mut udp = out.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RcvbufErrors")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    /// Forgets the servers' peak RSS so far (`clear_refs` 5), so each run reports its own.
    pub fn reset_peak_rss(&self) {
        for s in &self.servers {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", s.pid), "5");
        }
    }

    /// Seconds the servers were throttled by their CPU budgets so far (`--server-cpu`).
    pub fn throttled_secs(&self) -> Option<f64> {
        let budgets: Vec<_> = self.servers.iter().filter_map(|s| s.budget.as_ref()).collect();
        (!budgets.is_empty()).then(|| budgets.iter().map(|b| b.throttled_secs()).sum())
    }

    /// CPU seconds so far of the PostgreSQL backends connected to the run's database
    /// (read from /proc: only when PostgreSQL runs on this machine).
    pub async fn postgres_cpu(&self) -> Option<f64> {
        let scratch = self.scratch.as_ref()?;
        let pids = scratch.backend_pids().await.ok()?;
        let secs: Vec<f64> = pids
            .iter()
            .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
            .map(|stat| cpu_secs(&stat))
            .collect();
        (!secs.is_empty()).then(|| secs.iter().sum())
    }

    /// The largest peak RSS among the servers.
    pub fn server_peak_rss_kib(&self) -> u64 {
        self.servers.iter().map(|s| peak_rss_kib(&s.pid.to_string())).max().unwrap_or(0)
    }

    /// Waits (bounded) for every device and the store to hold no tunnel.
    pub async fn verify_no_leaks(&self, limit: Duration) -> anyhow::Result<Leaks> {
        let deadline = Instant::now() + limit;
        loop {
            let tunnels: Vec<serde_json::Value> = self.client().get("/v1/tunnels").await?;
            let mut device_peers = 0;
            for s in &self.servers {
                let peers = sh(&["ip", "netns", "exec", &self.netns, "wg", "show", &s.interface, "peers"])?;
                device_peers += peers.lines().filter(|l| !l.is_empty()).count();
            }
            let leaks = Leaks { active_tunnels: tunnels.len(), device_peers };
            if (leaks.active_tunnels == 0 && leaks.device_peers == 0) || Instant::now() > deadline {
                return Ok(leaks);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown();
        if let Some(db) = self.scratch.take() {
            if let Err(e) = db.remove().await {
                eprintln!("storm: could not drop the scratch database: {e:#}");
            }
        }
    }

    fn shutdown(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                let pid = nix::unistd::Pid::from_raw(c.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            s.budget = None;
            if let Some(mut c) = s.wg_go.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", s.interface));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(db) = &self.scratch {
            eprintln!("storm: the scratch database {} is left behind; drop it with DROP DATABASE", db.name);
        }
        if let Some(pair) = self.pg_pair.take() {
            pair.stop();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A process's peak RSS (`VmHWM`) in KiB; `pid` may be "self".
pub fn peak_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds from a `/proc/.../stat` line.
pub fn cpu_secs(stat: &str) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    // Fields after the command name (which may contain spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / hz
}

/// What a server thread does, from its name: the userspace device's threads are
/// `wg-<role>-IFACE` (`wg-hs`: handshakes, i.e. the Diffie-Hellman work; `wg-udp` and
/// `wg-tun`: the packet path, with the handshakes' MAC checks and cookies; `wg-timers`
/// and `wg-uapi`: timers and the UAPI socket); tokio's workers run the HTTP listeners,
/// enrollment and the tunnel manager; the store has its SQLite writer thread and sqlx's
/// connection threads.
fn thread_kind(comm: &str) -> &'static str {
    if comm.starts_with("wg-hs") {
        "wg-handshakes"
    } else if comm.starts_with("wg-udp") || comm.starts_with("wg-tun") {
        "wg-packets"
    } else if comm.starts_with("wg-") {
        "wg-other"
    } else if comm.starts_with("tokio-r") {
        "runtime"
    } else if comm.starts_with("ferry-sqlite") {
        "store-writer"
    } else if comm.starts_with("sqlx") {
        "store-sqlx"
    } else {
        "other"
    }
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
