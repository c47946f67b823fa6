//! The server under test: a `ferry serve` process in a network namespace of its own.

use super::client::{node_mac, node_name, node_tag};
use super::report::Leaks;
use super::StormArgs;
use crate::client::AdminClient;
use anyhow::{bail, Context};
use ferry_api::admin::{AddNodes, AddProfiles, Changed, NewNode, NewProfile};
use hyper::Method;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Lab {
    pub netns: String,
    pub interface: String,
    pub server_pid: u32,
    dir: PathBuf,
    server: Option<Child>,
    wg_go: Option<Child>,
    client: AdminClient,
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
        let interface = format!("fst{}", id % 100_000);
        let dir = std::env::temp_dir().join(format!("ferry-storm-{id}"));
        std::fs::create_dir_all(&dir)?;
        sh(&["ip", "netns", "add", &netns])?;
        let mut lab = Lab {
            netns: netns.clone(),
            interface: interface.clone(),
            server_pid: 0,
            dir: dir.clone(),
            server: None,
            wg_go: None,
            client: AdminClient::new(dir.join("admin.sock")),
            cleaned: false,
        };
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &netns, "route", "add", "local", "100.64.0.0/16", "dev", "lo"])?;
        let backend = if args.backend == "wireguard-go" {
            let child = Command::new("ip")
                .args(["netns", "exec", &netns, "wireguard-go", "-f", &interface])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start wireguard-go: apt-get install -y wireguard-go")?;
            lab.wg_go = Some(child);
            let sock = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
            wait_for(Duration::from_secs(10), || sock.exists()).context("wireguard-go did not create its socket")?;
            sh(&["ip", "-n", &netns, "addr", "add", "100.64.0.1/16", "dev", &interface])?;
            sh(&["ip", "-n", &netns, "link", "set", &interface, "up"])?;
            "uapi"
        } else {
            "userspace"
        };
        let config = dir.join("ferry.toml");
        // Every simulated node comes from one address, so the per-source limit (meant for
        // one node per address) is set far above what the storm sends; the global limit
        // and the enrollment cap too, so the benchmark measures the server, not its
        // limits — their code still runs on every request.
        std::fs::write(
            &config,
            format!(
                "[provisioning]\nlisten = \"{}\"\nmax_pending_nonces = 1000000\n\
                 enroll_rate_per_source = 1000000\nenroll_burst_per_source = 1000000\n\
                 enroll_rate_global = 1000000\nenroll_burst_global = 1000000\n\
                 max_concurrent_enrollments = 100000\n[wireguard]\ninterface = \"{interface}\"\nbackend = \"{backend}\"\ntunnel_ttl_secs = 3600\n",
                super::client::PROVISIONING
            ),
        )?;
        let exe = std::env::current_exe()?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(&exe)
            .args(["serve", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(dir.join("admin.sock"))
            .arg("--config")
            .arg(&config)
            .env("FERRY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start ferry serve")?;
        lab.server_pid = child.id();
        lab.server = Some(child);
        let sock = dir.join("admin.sock");
        wait_for(Duration::from_secs(30), || std::os::unix::net::UnixStream::connect(&sock).is_ok())
            .with_context(|| format!("ferry serve did not start; see {}", dir.join("server.log").display()))?;
        Ok(lab)
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
        self.client
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
            self.client.call::<Changed>(Method::POST, "/v1/nodes", Some(&AddNodes { nodes })).await?;
        }
        Ok(())
    }

    pub async fn server_public_key(&self) -> anyhow::Result<String> {
        let v: serde_json::Value = self.client.get("/v1/server").await?;
        v["public_key"].as_str().map(str::to_owned).context("no server key")
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

    fn proc_field(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.server_pid)).unwrap_or_default()
    }

    /// The server's user + system CPU seconds so far.
    pub fn server_cpu_secs(&self) -> f64 {
        let stat = self.proc_field("stat");
        // Fields after the command name (which may contain spaces) start after ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        (ticks(11) + ticks(12)) / hz
    }

    pub fn server_peak_rss_kib(&self) -> u64 {
        self.proc_field("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) for the device and the store to hold no tunnel.
    pub async fn verify_no_leaks(&self, limit: Duration) -> anyhow::Result<Leaks> {
        let deadline = Instant::now() + limit;
        loop {
            let tunnels: Vec<serde_json::Value> = self.client.get("/v1/tunnels").await?;
            let peers = sh(&["ip", "netns", "exec", &self.netns, "wg", "show", &self.interface, "peers"])?;
            let leaks =
                Leaks { active_tunnels: tunnels.len(), device_peers: peers.lines().filter(|l| !l.is_empty()).count() };
            if (leaks.active_tunnels == 0 && leaks.device_peers == 0) || Instant::now() > deadline {
                return Ok(leaks);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        if let Some(mut c) = self.server.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut c) = self.wg_go.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.interface));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown();
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
