//! Several `ferry serve` processes on one PostgreSQL database: a hub namespace holds
//! the provisioning bridge 198.18.0.0/24; server `i` (1-based) has its own namespace
//! at 198.18.0.(i), its own wireguard-go device (uapi backend, so a SIGKILLed server
//! leaves its device and peers behind) and data directory; nodes are at 198.18.0.(10+i).
//!
//! PostgreSQL is the throwaway one `scripts/postgres.sh` starts; servers reach it over
//! its unix socket (pathname sockets cross network namespaces, loopback does not).

use super::cluster::Node;
use super::{sh, unique, wireguard_go, KillOnDrop, Netns, TestServer};
use std::process::Command;

/// A fresh database on the test PostgreSQL, dropped on drop.
pub struct PgDatabase {
    pub name: String,
    admin_url: String,
    /// The URL servers use (unix socket).
    pub url: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        let fix = "run scripts/test.sh, or start one with: eval \"$(scripts/postgres.sh start)\"";
        let admin_url = std::env::var("FERRY_TEST_POSTGRES")
            .unwrap_or_else(|_| panic!("FERRY_TEST_POSTGRES is not set (a PostgreSQL for tests): {fix}"));
        let socket_dir = std::env::var("FERRY_TEST_POSTGRES_SOCKET")
            .unwrap_or_else(|_| panic!("FERRY_TEST_POSTGRES_SOCKET is not set (its unix socket directory): {fix}"));
        // postgres://USER@HOST:PORT/DB → the user and port, for the socket URL.
        let rest = admin_url.split_once("://").map(|(_, r)| r).unwrap_or(&admin_url);
        let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hostport) = authority.rsplit_once('@').unwrap_or(("postgres", authority));
        let port = hostport.rsplit_once(':').map(|(_, p)| p).unwrap_or("5432");
        let name = unique("ferry_ha_");
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = format!("postgres://{user}@localhost:{port}/{name}?host={socket_dir}");
        PgDatabase { name, admin_url, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&self.admin_url, "-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .output();
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql (apt-get install -y postgresql)");
    assert!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub struct HaCluster {
    // Fields drop in order: servers before their devices, everything before the hub.
    pub servers: Vec<TestServer>,
    pub devices: Vec<KillOnDrop>,
    pub nodes: Vec<Node>,
    pub hub: Netns,
    pub db: PgDatabase,
    /// The sealing key all servers share (asset tags and secrets are in the database).
    pub keys: tempfile::TempDir,
}

pub const BRIDGE: &str = "br0";

impl HaCluster {
    /// `servers` servers (ids s1, s2, …) and `nodes` nodes; `cluster` and `wireguard`
    /// are extra keys for those config tables.
    pub fn new(servers: usize, nodes: usize, cluster: &str, wireguard: &str) -> HaCluster {
        let db = PgDatabase::create();
        let hub = Netns::new("fch");
        hub.sh(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        hub.sh(&["ip", "link", "set", BRIDGE, "up"]);
        let keys = tempfile::tempdir().expect("tempdir");
        let mut c = HaCluster { servers: Vec::new(), devices: Vec::new(), nodes: Vec::new(), hub, db, keys };
        for i in 1..=servers {
            let mut server = c.configure_server(i, &c.shared_key_config(), cluster, wireguard);
            server.launch();
            c.servers.push(server);
        }
        c.nodes = (1..=nodes).map(|i| Node::on_bridge(&c.hub, BRIDGE, i)).collect();
        c
    }

    /// The top-level config line that gives a server the cluster's shared sealing key.
    pub fn shared_key_config(&self) -> String {
        format!("secrets_key = \"{}\"\n", self.keys.path().join("secrets.key").display())
    }

    /// Server `i` (id `si`) in its own namespace at 198.18.0.`i` with its own
    /// wireguard-go device (kept in `devices`), configured but not started. `top` is
    /// extra top-level TOML, e.g. [`HaCluster::shared_key_config`].
    pub fn configure_server(&mut self, i: usize, top: &str, cluster: &str, wireguard: &str) -> TestServer {
        let ns = Netns::new("fcs");
        let (a, b) = (unique("fha"), unique("fhb"));
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        sh(&["ip", "link", "set", &a, "netns", &self.hub.name]);
        sh(&["ip", "link", "set", &b, "netns", &ns.name]);
        self.hub.sh(&["ip", "link", "set", &a, "master", BRIDGE, "up"]);
        ns.sh(&["ip", "addr", "add", &format!("198.18.0.{i}/24"), "dev", &b]);
        ns.sh(&["ip", "link", "set", &b, "up"]);
        // Every server uses the same tunnel network and server address, each on
        // its own device: a node only ever talks to the server it enrolled with.
        let (interface, device) = wireguard_go(&ns, "100.64.0.1/16");
        self.devices.push(device);
        let top = format!("store = \"{}\"\n{top}[cluster]\nserver_id = \"s{i}\"\n{cluster}\n", self.db.url);
        let listen = format!("198.18.0.{i}:8470");
        let wg = format!("backend = \"uapi\"\n{wireguard}");
        TestServer::configure_in_with(ns, &top, &listen, "", &wg, Some(interface))
    }

    /// Every server's provisioning URL, starting with server `first` (0-based).
    pub fn server_urls(&self, first: usize) -> String {
        let n = self.servers.len();
        (0..n).map(|k| format!("http://198.18.0.{}:8470", (first + k) % n + 1)).collect::<Vec<_>>().join(",")
    }

    /// Every server's WireGuard key, comma-separated.
    pub fn server_keys(&self) -> String {
        self.servers.iter().map(TestServer::public_key).collect::<Vec<_>>().join(",")
    }
}
