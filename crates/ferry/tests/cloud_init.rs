//! Issue 4's proof: the real cloud-init of Debian 12 (22.4), in a debootstrap root per node
//! (`scripts/cloud-init-chroot.sh` builds and caches it), configures HPC nodes from ferry's
//! datasource — through the tunnel (`ferry agent --mode cloud-init`, and cloud-init's own
//! `phone_home` closes it), or from the seed `ferry agent --mode fetch` wrote before it
//! removed its tunnel — and gets nothing from the provisioning network. The profiles'
//! network-config (a VLAN) reaches cloud-init's local stage in both modes.
//!
//! Each node boots inside its network namespace and private mount, UTS and PID namespaces
//! (`common::chroot`), so the host is never changed.
//!
//! Run as root: `sudo scripts/test.sh`, or, once `sudo scripts/cloud-init-chroot.sh` has
//! built the root: `cargo test -p ferry --test cloud_init -- --nocapture`.

mod common;

use common::chroot::{rootfs_tarball, Boot, NodeRoot};
use common::cluster::{Cluster, DATASOURCE, SERVER_IP};
use common::eventually;
use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Instant;

const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM4lMPCWZXzG0eHRDgP8PTRKFJz2nK4R1pI+6VKufZvy admin-a@login";
const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILjoeFdrdZEEnyYchr9JdYE2kc5Arrz4KrCHidSeL4+g admin-b@login";

/// Profile "compute": batch nodes. Rendered by ferry (minijinja) from the node's tags and meta.
const COMPUTE_USER_DATA: &str = r#"#cloud-config
# ferry profile "compute" for {{ node.name }}
hostname: {{ node.hostname }}
fqdn: {{ node.hostname }}.{{ tags.domain }}
manage_etc_hosts: true
users:
  - name: {{ tags.admin }}
    gecos: Cluster administrator
    groups: [sudo]
    shell: /bin/bash
    sudo: "ALL=(ALL) NOPASSWD:ALL"
    lock_passwd: true
    ssh_authorized_keys:
      - {{ tags.admin_key }}
write_files:
  - path: /etc/slurm/slurm.conf
    owner: root:root
    permissions: "0644"
    content: |
      # written by cloud-init from ferry's profile "compute"
      ClusterName={{ meta.cluster }}
      SlurmctldHost={{ tags.controller }}
      NodeName={{ node.name }} CPUs={{ tags.cpus }} RealMemory={{ tags.memory }} Feature=rack-{{ meta.rack }} State=UNKNOWN
      PartitionName={{ tags.partition }} Nodes={{ node.name }} Default=YES MaxTime=INFINITE State=UP
runcmd:
  - [sh, -c, "echo '{{ node.name }} joined {{ tags.partition }}' > /var/lib/ferry-test-runcmd"]
"#;

/// Profile "gpu": GPU nodes, booted with the agent's fetch mode.
const GPU_USER_DATA: &str = r#"#cloud-config
# ferry profile "gpu" for {{ node.name }}
hostname: {{ node.hostname }}
fqdn: {{ node.hostname }}.{{ tags.domain }}
manage_etc_hosts: true
users:
  - name: {{ tags.admin }}
    gecos: GPU administrator
    shell: /bin/bash
    lock_passwd: true
    ssh_authorized_keys:
      - {{ tags.admin_key }}
write_files:
  - path: /etc/slurm/slurm.conf
    permissions: "0644"
    content: |
      # written by cloud-init from ferry's profile "gpu"
      ClusterName={{ meta.cluster }}
      SlurmctldHost={{ tags.controller }}
      GresTypes=gpu
      NodeName={{ node.name }} CPUs={{ tags.cpus }} RealMemory={{ tags.memory }} Gres={{ tags.gres }} Feature=rack-{{ meta.rack }} State=UNKNOWN
      PartitionName={{ tags.partition }} Nodes={{ node.name }} State=UP
  - path: /etc/slurm/gres.conf
    permissions: "0644"
    content: |
      NodeName={{ node.name }} Name=gpu Type=a100 File=/dev/nvidia[0-3]
runcmd:
  - [sh, -c, "echo '{{ node.name }} joined {{ tags.partition }}' > /var/lib/ferry-test-runcmd"]
"#;

/// The "gpu" profile's vendor-data. Its nodes use `ferry agent --mode fetch`: the agent
/// phones home (with the host keys in /etc/ssh) and removes the tunnel before cloud-init
/// runs, so cloud-init must not phone home to a tunnel that is gone, and must keep the
/// host keys the agent reported instead of making new ones.
const FETCH_MODE_VENDOR_DATA: &str = "#cloud-config
# nodes of this profile boot with `ferry agent --mode fetch`
ssh_deletekeys: false
ssh_genkeytypes: [rsa, ecdsa, ed25519]
";

/// Both profiles' network-config: the node's provisioning address on its interface and a
/// tagged VLAN on top of it (the runtime network of the booted OS), from the profile's
/// `vlan` tag and the node's meta-data.
const NETWORK_CONFIG: &str = r#"version: 2
ethernets:
  {{ meta.nic }}:
    addresses: [{{ interfaces.eth0.ipv4 }}/24]
vlans:
  vlan{{ tags.vlan }}:
    id: {{ tags.vlan }}
    link: {{ meta.nic }}
    addresses: [{{ meta.vlan_address }}]
"#;

/// The cloud-init configuration drop-in `ferry agent --mode cloud-init` writes
/// (`--network-config-file`, here inside the node's root).
const NETWORK_DROP_IN: &str = "/etc/cloud/cloud.cfg.d/99_ferry_network.cfg";

/// What one node's profile must have produced inside its root.
struct Expect {
    node: &'static str,
    profile: &'static str,
    mode: &'static str,
    hostname: &'static str,
    fqdn: &'static str,
    admin: &'static str,
    key: &'static str,
    files: &'static [(&'static str, &'static str)],
    marker: &'static str,
    datasource: &'static str,
    /// The profile's VLAN and the node's address on it.
    vlan: u16,
    vlan_address: &'static str,
    /// Where cloud-init's local stage took the network from.
    network_source: &'static str,
}

const EXPECT: [Expect; 2] = [
    Expect {
        node: "n1",
        profile: "compute",
        mode: "cloud-init",
        hostname: "n1",
        fqdn: "n1.batch.hpc.example",
        admin: "hpcadmin",
        key: KEY_A,
        files: &[(
            "/etc/slurm/slurm.conf",
            "# written by cloud-init from ferry's profile \"compute\"\nClusterName=ferry\nSlurmctldHost=head1\n\
             NodeName=n1 CPUs=64 RealMemory=257000 Feature=rack-r01 State=UNKNOWN\n\
             PartitionName=batch Nodes=n1 Default=YES MaxTime=INFINITE State=UP\n",
        )],
        marker: "n1 joined batch\n",
        datasource: "DataSourceNoCloudNet [seed=cmdline,http://100.64.0.1:8471/][dsmode=net]",
        vlan: 42,
        vlan_address: "10.42.0.11/24",
        // The agent's drop-in: cloud-init 22.4 fetches no network-config from an s= URL.
        network_source: "system_cfg",
    },
    Expect {
        node: "n2",
        profile: "gpu",
        mode: "fetch",
        hostname: "n2",
        fqdn: "n2.gpu.hpc.example",
        admin: "gpuadmin",
        key: KEY_B,
        files: &[
            (
                "/etc/slurm/slurm.conf",
                "# written by cloud-init from ferry's profile \"gpu\"\nClusterName=ferry\nSlurmctldHost=head1\nGresTypes=gpu\n\
                 NodeName=n2 CPUs=32 RealMemory=515000 Gres=gpu:a100:4 Feature=rack-r02 State=UNKNOWN\n\
                 PartitionName=gpu Nodes=n2 State=UP\n",
            ),
            ("/etc/slurm/gres.conf", "NodeName=n2 Name=gpu Type=a100 File=/dev/nvidia[0-3]\n"),
        ],
        marker: "n2 joined gpu\n",
        // ferry's initramfs copies the seed to cloud-init's seed directory (network-config
        // included) and boots with `ds=nocloud`, as `ferry configure dnsmasq` writes it.
        datasource: "DataSourceNoCloud [seed=cmdline,/var/lib/cloud/seed/nocloud][dsmode=local]",
        vlan: 43,
        vlan_address: "10.43.0.12/24",
        network_source: "ds",
    },
];

const STAGES: [&str; 4] = [
    "cloud-init init --local: exit 0",
    "cloud-init init: exit 0",
    "cloud-init modules --mode=config: exit 0",
    "cloud-init modules --mode=final: exit 0",
];

fn write(c: &Cluster, name: &str, body: &str) -> String {
    let path = c.nodes[0].path(name);
    std::fs::write(&path, body).expect("write template");
    path.to_str().expect("utf-8").to_owned()
}

/// The two profiles, and nodes n1 ("compute") and n2 ("gpu") with node-level meta-data.
fn configure(c: &Cluster) {
    let compute = write(c, "compute.user-data", COMPUTE_USER_DATA);
    let gpu = write(c, "gpu.user-data", GPU_USER_DATA);
    let gpu_vendor = write(c, "gpu.vendor-data", FETCH_MODE_VENDOR_DATA);
    let network = write(c, "network-config", NETWORK_CONFIG);
    let admin_a = format!("admin_key={KEY_A}");
    let admin_b = format!("admin_key={KEY_B}");
    #[rustfmt::skip]
    c.server.ok(&[
        "profile", "add", "compute", "--user-data", &compute, "--network-config", &network, "--meta", "cluster=ferry",
        "--tag", "vlan=42",
        "--tag", "admin=hpcadmin", "--tag", &admin_a, "--tag", "domain=batch.hpc.example", "--tag", "controller=head1",
        "--tag", "partition=batch", "--tag", "cpus=64", "--tag", "memory=257000",
    ]);
    #[rustfmt::skip]
    c.server.ok(&[
        "profile", "add", "gpu", "--user-data", &gpu, "--vendor-data", &gpu_vendor, "--network-config", &network,
        "--meta", "cluster=ferry", "--tag", "vlan=43",
        "--tag", "admin=gpuadmin", "--tag", &admin_b, "--tag", "domain=gpu.hpc.example", "--tag", "controller=head1",
        "--tag", "partition=gpu", "--tag", "cpus=32", "--tag", "memory=515000", "--tag", "gres=gpu:a100:4",
    ]);
    for (n, e) in c.nodes.iter().zip(&EXPECT) {
        let rack = format!("rack=r0{}", &n.name[1..]);
        let (nic, vlan) = (format!("nic={}", n.link), format!("vlan_address={}", e.vlan_address));
        #[rustfmt::skip]
        n.add_to(&c.server, &["-P", e.profile, "--meta", &rack, "--meta", &nic, "--meta", &vlan, "--identity", "network"]);
    }
}

/// The test root leaves the node's network alone (`network: {config: disabled}`: the test
/// sets it up); a node of this test takes it from cloud-init, as a real image does, with
/// the rendering checked and no interface brought up (activation would re-address the
/// namespace's veth).
fn take_the_network_from_cloud_init(root: &NodeRoot) {
    assert!(
        root.path("/sbin/ifup").exists(),
        "the cloud-init test root has no ifupdown (cloud-init's Debian network renderer): rebuild it with \
         `sudo scripts/cloud-init-chroot.sh` and point FERRY_CLOUD_INIT_ROOTFS at the path it prints"
    );
    let cfg = "/etc/cloud/cloud.cfg.d/10_ferry_test_node.cfg";
    let text = root.read(cfg);
    assert!(text.contains("network: {config: disabled}\n"), "{cfg}: {text}");
    std::fs::write(root.path(cfg), text.replace("network: {config: disabled}\n", "disable_network_activation: true\n"))
        .expect("write the test root's cloud-init configuration");
}

/// cloud-init's local stage applied the profile's network-config (from `e.network_source`)
/// and rendered it for ifupdown: the node's address on its interface, and the VLAN.
fn assert_network(e: &Expect, node: &common::cluster::Node, root: &NodeRoot) {
    let log = root.read("/var/log/cloud-init.log");
    let applied: Vec<&str> = log.lines().filter(|l| l.contains("Applying network configuration from")).collect();
    let local = format!("Applying network configuration from {} bringup=False", e.network_source);
    assert!(
        applied.first().is_some_and(|l| l.contains(&local) && l.contains(&format!("'vlan{}'", e.vlan))),
        "{}: the local stage rendered the profile's network-config from {}: {applied:#?}",
        e.node,
        e.network_source
    );
    let eni = root.read("/etc/network/interfaces.d/50-cloud-init");
    println!("$ cat /etc/network/interfaces.d/50-cloud-init   ({})\n{}", e.node, eni.trim_end());
    let stanza = |name: &str| -> Vec<String> {
        let head = format!("iface {name} inet static");
        eni.lines()
            .skip_while(|l| l.trim() != head)
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .collect()
    };
    let link = stanza(&node.link);
    assert!(link.contains(&format!("address {}/24", node.ip)), "{}: {eni}", e.node);
    let vlan = stanza(&format!("vlan{}", e.vlan));
    for line in
        [format!("address {}", e.vlan_address), format!("vlan-raw-device {}", node.link), format!("vlan_id {}", e.vlan)]
    {
        assert!(vlan.contains(&line), "{}: `{line}` for vlan{}: {eni}", e.node, e.vlan);
    }
}

/// Unpacks `count` node roots in parallel with `then` (the cluster coming up).
fn with_roots<T>(count: usize, then: impl FnOnce() -> T) -> (T, Vec<NodeRoot>) {
    let tarball = rootfs_tarball();
    let unpacking: Vec<_> = (0..count)
        .map(|_| {
            let t = tarball.clone();
            thread::spawn(move || NodeRoot::unpack(&t))
        })
        .collect();
    let value = then();
    (value, unpacking.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect())
}

/// A running agent, killed (by its PID) on drop.
struct Agent(Option<Child>);

impl Agent {
    fn wait(mut self) -> Option<i32> {
        self.0.take().and_then(|mut c| c.wait().ok()).and_then(|s| s.code())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The cloud-init mode flow: the agent brings the tunnel up and prints the `ds=` line for
/// the kernel command line; cloud-init fetches its seed through the tunnel and its
/// phone_home (ferry's default vendor-data) closes it; `ferry agent teardown` removes the
/// node's interface.
fn boot_through_the_tunnel(c: &Cluster, i: usize, root: &NodeRoot) -> Boot {
    let n = &c.nodes[i];
    let log = n.path("agent.log");
    // The agent writes its network-config drop-in into the node's cloud.cfg.d.
    std::os::unix::fs::symlink(root.path("/etc/cloud/cloud.cfg.d"), n.path("cloud.cfg.d")).expect("symlink");
    let mut child = c
        .agent(i, "cloud-init")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("agent log"))
        .spawn()
        .expect("ferry agent");
    let stdout = child.stdout.take().expect("stdout");
    let agent = Agent(Some(child));
    let mut ds = String::new();
    std::io::BufReader::new(stdout).read_line(&mut ds).expect("the agent's ds= line");
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let printed = ds.trim();
    let seed = format!(";s={DATASOURCE}/");
    assert_eq!(
        printed,
        format!("ds=nocloud-net{seed}"),
        "the agent's line (cloud-init 22.4 needs nocloud-net for HTTP): {}",
        agent_log()
    );
    assert!(c.server.tunnel_nodes().contains(&n.name));
    let drop_in = root.path(NETWORK_DROP_IN);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&drop_in).expect("drop-in").permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", drop_in.display());

    let boot = root.boot(&n.ns, printed, None);
    eventually(10, "cloud-init's phone_home to close the tunnel", || !c.server.tunnel_nodes().contains(&n.name));

    let out = n.ns.cmd(common::FERRY).args(["agent", "teardown", "--state-dir"]).arg(n.path("state")).output().unwrap();
    assert!(out.status.success(), "ferry agent teardown: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(agent.wait(), Some(0), "the agent exits 0 after teardown: {}", agent_log());
    assert!(!n.has_interface(), "{}: teardown removed the interface", n.name);
    boot
}

/// Runs a `Command` of the form `ip netns exec NS PROGRAM ARGS...` in a fresh UTS
/// namespace whose hostname is not set yet, as in the initramfs where the agent runs.
fn without_hostname(cmd: &Command) -> Command {
    let args: Vec<_> = cmd.get_args().collect();
    let mut c = Command::new("ip");
    c.args(&args[..3])
        .args(["unshare", "--uts", "sh", "-c", "hostname localhost && exec \"$@\"", "sh"])
        .args(&args[3..]);
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// The fetch mode flow: the node makes its SSH host keys early, the agent fetches the seed,
/// phones home (reporting those keys) and removes the tunnel; cloud-init then configures
/// the node from the seed at /run/ferry/seed with no tunnel left.
fn boot_from_a_fetched_seed(c: &Cluster, i: usize, root: &NodeRoot) -> Boot {
    let n = &c.nodes[i];
    root.run(&n.ns, r#"chroot "$ROOT" ssh-keygen -A"#);
    // The agent reads the node's /etc/ssh.
    std::fs::remove_dir_all(n.path("ssh")).expect("rm ssh");
    std::os::unix::fs::symlink(root.path("/etc/ssh"), n.path("ssh")).expect("symlink ssh");

    let out = without_hostname(&c.agent(i, "fetch")).output().expect("ferry agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "ferry agent --mode fetch: {stderr}");
    let seed = n.path("seed");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("ds=nocloud;s=file://{}/", seed.display()));
    assert!(!n.has_interface(), "{}: the agent removed its interface", n.name);
    assert!(!c.server.tunnel_nodes().contains(&n.name), "{}: the agent's phone-home closed the tunnel", n.name);

    // What ferry's initramfs does before switch_root (crates/ferry-image/src/initramfs/init.sh).
    let nocloud = root.path("/var/lib/cloud/seed/nocloud");
    std::fs::create_dir_all(&nocloud).expect("seed dir");
    common::sh(&["cp", "-a", &format!("{}/.", seed.display()), nocloud.to_str().expect("utf-8")]);
    assert!(nocloud.join("network-config").exists(), "the agent fetched the profile's network-config");
    let boot = root.boot(&n.ns, "ds=nocloud", Some(&seed));
    for doc in ["user-data", "vendor-data"] {
        assert_eq!(
            root.instance_file(&n.name, &format!("{doc}.txt")),
            std::fs::read_to_string(seed.join(doc)).unwrap(),
            "{}: cloud-init used the agent's {doc}",
            n.name
        );
    }
    boot
}

fn print_boot(e: &Expect, root: &NodeRoot, boot: &Boot) {
    println!(
        "--- {} (profile {}, agent --mode {}): cloud-init's four stages in {:.1?}",
        e.node, e.profile, e.mode, boot.elapsed
    );
    println!("$ cloud-init status --long   (exit {})\n{}", boot.status_code, boot.status.trim_end());
    println!("$ cat /var/lib/cloud/data/result.json\n{}", root.read("/var/lib/cloud/data/result.json").trim_end());
    for (doc, code, out) in &boot.schema {
        println!(
            "$ cloud-init schema --config-file /var/lib/cloud/instance/{doc}.txt   (exit {code})\n{}",
            out.trim_end()
        );
    }
}

/// cloud-init's status, result and schema verdicts say: done, through `datasource`, no errors.
fn assert_clean_boot(e: &Expect, root: &NodeRoot, boot: &Boot) {
    assert_eq!(boot.stages, STAGES, "{}: every stage succeeds\n{}", e.node, boot.console);
    assert_eq!(boot.status_code, 0, "{}: {}", e.node, boot.status);
    assert!(boot.status.lines().any(|l| l == "status: done"), "{}: {}", e.node, boot.status);
    assert!(boot.status.contains(e.datasource), "{}: {}", e.node, boot.status);
    let result = root.result_json();
    assert_eq!(result["v1"]["datasource"], e.datasource, "{result}");
    assert_eq!(result["v1"]["errors"], serde_json::json!([]), "{}: {result}", e.node);
    let status: serde_json::Value = serde_json::from_str(&root.read("/var/lib/cloud/data/status.json")).unwrap();
    for (stage, v) in status["v1"].as_object().unwrap() {
        if let Some(errors) = v.get("errors") {
            assert_eq!(errors, &serde_json::json!([]), "{}: stage {stage}: {status}", e.node);
        }
    }
    let checked: Vec<_> = boot.schema.iter().map(|(d, _, _)| d.as_str()).collect();
    assert_eq!(checked, ["user-data", "vendor-data"], "{}: both documents were given to cloud-init", e.node);
    for (doc, code, out) in &boot.schema {
        assert!(*code == 0 && out.contains("Valid cloud-config"), "{} {doc} fails `cloud-init schema`: {out}", e.node);
    }
}

/// Inside the root: exactly what the node's profile says, and nothing of the other's.
fn assert_configured(e: &Expect, other: &Expect, root: &NodeRoot) {
    let node = e.node;
    assert_eq!(root.read("/etc/hostname"), format!("{}\n", e.hostname), "{node}");
    let hosts = root.read("/etc/hosts");
    assert!(hosts.lines().any(|l| l == format!("127.0.1.1 {} {}", e.fqdn, e.hostname)), "{node}: {hosts}");
    assert!(!hosts.contains(other.fqdn), "{node}: {hosts}");
    let passwd = root.read("/etc/passwd");
    let user = passwd.lines().find(|l| l.starts_with(&format!("{}:", e.admin)));
    let home = format!("/home/{}", e.admin);
    assert_eq!(
        user.map(|l| l.split(':').skip(5).collect::<Vec<_>>()),
        Some(vec![home.as_str(), "/bin/bash"]),
        "{passwd}"
    );
    assert!(!passwd.contains(&format!("{}:", other.admin)), "{node} has {}'s admin: {passwd}", other.node);
    assert!(!root.path(&format!("/home/{}", other.admin)).exists());
    let keys = root.read(&format!("{home}/.ssh/authorized_keys"));
    assert!(keys.lines().any(|l| l == e.key), "{node}: {keys}");
    assert!(!keys.contains(other.key.split(' ').nth(1).unwrap()), "{node} trusts {}'s key: {keys}", other.node);
    for (path, content) in e.files {
        assert_eq!(root.read(path), *content, "{node}: {path}");
    }
    for (path, _) in other.files.iter().filter(|(p, _)| !e.files.iter().any(|(q, _)| q == p)) {
        assert!(!root.path(path).exists(), "{node} has {}'s {path}", other.node);
    }
    assert_eq!(root.read("/var/lib/ferry-test-runcmd"), e.marker, "{node}: the runcmd marker");
    let user_data = root.instance_file(node, "user-data.txt");
    assert!(
        user_data.contains(&format!("hostname: {node}\n")) && !user_data.contains(&format!("hostname: {}", other.node))
    );
}

/// The node's host public keys, as its /etc/ssh holds them after the boot.
fn host_keys(root: &NodeRoot) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for entry in std::fs::read_dir(root.path("/etc/ssh")).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("ssh_host_") && name.ends_with("_key.pub") {
            keys.insert(std::fs::read_to_string(&path).unwrap().trim().to_owned());
        }
    }
    keys
}

#[test]
fn two_nodes_boot_with_real_cloud_init_through_the_tunnel_and_from_a_fetched_seed() {
    let started = Instant::now();
    let (c, roots) = with_roots(2, || Cluster::new(2));
    configure(&c);
    roots.iter().for_each(take_the_network_from_cloud_init);
    let ready = started.elapsed();

    // Both nodes boot at once: n1 through its tunnel, n2 from the seed its agent fetched.
    let boots: Vec<Boot> = thread::scope(|s| {
        let a = s.spawn(|| boot_through_the_tunnel(&c, 0, &roots[0]));
        let b = s.spawn(|| boot_from_a_fetched_seed(&c, 1, &roots[1]));
        [a, b].into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });

    let mut known = Vec::new();
    for (i, e) in EXPECT.iter().enumerate() {
        let (root, boot) = (&roots[i], &boots[i]);
        print_boot(e, root, boot);
        assert_clean_boot(e, root, boot);
        assert_configured(e, &EXPECT[1 - i], root);
        assert_network(e, &c.nodes[i], root);

        // ferry recorded the boot and exactly the host keys the node has.
        let shown = c.server.json(&["node", "show", e.node, "--json"]);
        let b = &shown["boot"];
        assert_eq!((b["boot_count"].as_i64(), b["hostname"].as_str()), (Some(1), Some(e.node)), "{shown}");
        let recorded: BTreeSet<String> =
            b["host_keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect();
        let actual = host_keys(root);
        assert!(actual.len() >= 3, "{}: {actual:?}", e.node);
        assert_eq!(recorded, actual, "{}: ferry has the node's host keys", e.node);
        known.extend(actual.iter().map(|k| format!("{} {k}", e.node)));
        // Every line names the node by its name and its address (and by its FQDN when
        // it reported one of its own).
        let lines = c.server.ok(&["known-hosts"]);
        let fqdn = b["fqdn"].as_str().filter(|f| f.starts_with(&format!("{}.", e.node)));
        for line in lines.lines().filter(|l| l.starts_with(&format!("{},", e.node))) {
            let hosts: Vec<&str> = line.split_once(' ').unwrap().0.split(',').collect();
            assert!(hosts.contains(&c.nodes[i].ip.as_str()), "{line}");
            assert!(fqdn.is_none_or(|f| hosts.contains(&f)), "{fqdn:?}: {line}");
        }

        let audit = c.server.ok(&["audit", "--node", e.node, "--limit", "200"]);
        for doc in ["meta-data", "user-data", "vendor-data"] {
            assert!(
                audit.lines().any(|l| l.contains("document.served") && l.contains(doc)),
                "{}: {doc} delivery audited: {audit}",
                e.node
            );
        }
        assert!(audit.contains("reason=phone-home"), "{}: {audit}", e.node);
    }
    let listed: BTreeSet<String> = c
        .server
        .ok(&["known-hosts"])
        .lines()
        .map(|l| {
            let (hosts, key) = l.split_once(' ').unwrap();
            format!("{} {key}", hosts.split(',').next().unwrap())
        })
        .collect();
    assert_eq!(listed, known.into_iter().collect(), "`ferry known-hosts` lists both nodes' keys");

    // Every tunnel ended: none in the store, no peer on the device, no node interface.
    eventually(10, "no tunnel and no peer", || c.server.tunnel_nodes().is_empty() && c.server.wg_peers().is_empty());
    assert!(c.nodes.iter().all(|n| !n.has_interface()));
    println!("--- setup (cluster + unpacking 2 roots) {ready:.1?}; whole test {:.1?}", started.elapsed());
}

#[test]
fn cloud_init_gets_no_seed_from_the_provisioning_network() {
    let started = Instant::now();
    let (c, roots) = with_roots(1, || Cluster::new(1));
    configure(&c);
    let (n, root) = (&c.nodes[0], &roots[0]);

    // No agent, no tunnel: the node routes the tunnel network to the server over the
    // provisioning network and points cloud-init at the datasource.
    n.ns.sh(&["ip", "route", "add", "100.64.0.0/16", "via", SERVER_IP]);
    // The line that configures a node through its tunnel (`nocloud-net`: see the agent).
    let boot = root.boot(&n.ns, &format!("ds=nocloud-net;s={DATASOURCE}/"), None);
    println!("--- {} from the provisioning network: cloud-init's four stages in {:.1?}", n.name, boot.elapsed);
    println!("$ cloud-init status --long   (exit {})\n{}", boot.status_code, boot.status.trim_end());
    println!("$ cat /var/lib/cloud/data/result.json\n{}", root.read("/var/lib/cloud/data/result.json").trim_end());

    // ferry refused it (403), and cloud-init found no seed: it fell back to no datasource
    // and applied no user-data.
    let log = root.read("/var/log/cloud-init.log");
    assert!(
        log.lines().any(|l| l.contains("403") && l.contains("http://100.64.0.1:8471/meta-data")),
        "cloud-init was refused: {log}"
    );
    assert!(boot.status.contains("DataSourceNone"), "{}", boot.status);
    assert_eq!(root.result_json()["v1"]["datasource"], "DataSourceNone");
    let instances: Vec<_> =
        std::fs::read_dir(root.path("/var/lib/cloud/instances")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(instances, ["iid-datasource-none"], "the only instance is the fallback's");
    let user_data = root.instance_file("iid-datasource-none", "user-data.txt");
    assert!(user_data.trim().is_empty(), "no user-data reached the node: {user_data}");
    assert_ne!(root.read("/etc/hostname").trim(), n.name);
    assert!(!root.read("/etc/passwd").contains("hpcadmin"));
    assert!(!root.path("/etc/slurm/slurm.conf").exists());
    assert!(!root.path("/var/lib/ferry-test-runcmd").exists());

    // ferry served nothing, and says why.
    let server_log = c.server.log_text();
    assert!(
        server_log.lines().any(|l| l.contains("without an active tunnel") && l.contains(&format!("{}:", n.ip))),
        "{server_log}"
    );
    let audit = c.server.ok(&["audit", "--limit", "500"]);
    assert!(!audit.contains("document.served"), "{audit}");
    assert!(c.server.tunnel_nodes().is_empty() && c.server.wg_peers().is_empty());
    println!("--- whole test {:.1?}", started.elapsed());
}
