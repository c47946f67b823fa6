//! Peer churn, side by side on one device: ferry's batched update (one UAPI request to
//! add N peers, one to remove them) against one `wg set` process per peer change, the
//! technique OpenCHAMI uses.

use super::lab::Lab;
use super::report::Churn;
use anyhow::Context;
use ferry_wg::{BackendChoice, DeviceUpdate, InterfaceSetup, PeerConfig, PrivateKey};
use std::process::Command;
use std::time::Instant;

/// On a fresh device of the backend under test: in-process userspace, or wireguard-go
/// driven through its UAPI socket.
pub async fn compare(lab: &Lab, peers: usize, wireguard_go: bool) -> anyhow::Result<Churn> {
    let name = format!("fch{}", std::process::id() % 100_000);
    let netns = lab.netns.clone();
    let mut wg_go = None;
    if wireguard_go {
        let child = Command::new("ip")
            .args(["netns", "exec", &netns, "wireguard-go", "-f", &name])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start wireguard-go: apt-get install -y wireguard-go")?;
        wg_go = Some(KillOnDrop(child));
        let sock = std::path::PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !sock.exists() {
            anyhow::ensure!(Instant::now() < deadline, "wireguard-go did not create {}", sock.display());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let result = lab
        .in_netns(move || async move {
            let setup = InterfaceSetup { addresses: vec!["100.66.0.1/16".parse()?], ..Default::default() };
            let backend = if wireguard_go { BackendChoice::Uapi } else { BackendChoice::Userspace };
            let dev = ferry_wg::open_device(&name, backend, &setup).await?;
            let keys: Vec<_> = (0..peers).map(|_| PrivateKey::generate().public_key()).collect();
            let ip = |i: usize| format!("100.67.{}.{}/32", i / 250, i % 250 + 1);
            let t = Instant::now();
            let add = keys
                .iter()
                .enumerate()
                .map(|(i, k)| PeerConfig::new(*k).allowed_ip(ip(i).parse().expect("address literal")));
            dev.apply(DeviceUpdate::new().add_peers(add)).await?;
            dev.apply(DeviceUpdate::new().remove_peers(keys.iter().copied())).await?;
            let ferry = t.elapsed();
            let t = Instant::now();
            for (i, k) in keys.iter().enumerate() {
                let ok = Command::new("wg")
                    .args(["set", &name, "peer", &k.to_base64(), "allowed-ips", &ip(i)])
                    .status()
                    .context("wg (apt-get install -y wireguard-tools)")?;
                anyhow::ensure!(ok.success(), "wg set failed in {netns}");
            }
            for k in &keys {
                Command::new("wg").args(["set", &name, "peer", &k.to_base64(), "remove"]).status()?;
            }
            let wg = t.elapsed();
            anyhow::ensure!(dev.status().await?.peers.is_empty(), "peers left after churn");
            dev.close().await?;
            Ok(Churn {
                peers,
                ferry_batched_ms: ferry.as_secs_f64() * 1000.0,
                wg_set_per_peer_ms: wg.as_secs_f64() * 1000.0,
                ratio: wg.as_secs_f64() / ferry.as_secs_f64().max(1e-9),
            })
        })
        .await?;
    drop(wg_go);
    result
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
