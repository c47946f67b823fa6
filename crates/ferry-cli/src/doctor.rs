//! `ferry doctor`: checks a running installation the way a support engineer would, from
//! the server's host. It asks the server how it runs (`GET /v1/server`), looks at the
//! host (interfaces, routes, listeners, files) and prints one line per check with a fix.

use crate::client::AdminClient;
use crate::doctor_checks::{self as checks, CertFile, Check, Status};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print the checks as JSON (an array of {check, status, detail, fix}) for monitoring;
    /// the exit status is 1 when a check fails either way.
    #[arg(long)]
    pub json: bool,
    /// The dnsmasq configuration `ferry configure dnsmasq` wrote, compared with the inventory.
    #[arg(long, value_name = "PATH", default_value = "/etc/dnsmasq.d/ferry.conf")]
    pub dnsmasq_conf: PathBuf,
}

/// The checks that need the server, skipped when it does not answer.
const NEED_SERVER: [&str; 9] =
    ["wireguard", "listeners", "clock", "tunnel-network", "dnsmasq", "images", "identity", "tls", "servers"];

pub async fn doctor(client: &AdminClient, socket: &Path, args: DoctorArgs) -> anyhow::Result<()> {
    let found = run_checks(client, socket, &args).await;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&found)?)?;
    } else {
        for c in &found {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skipped => "skip",
            };
            let fix = c.fix.as_deref().map(|f| format!(" → {f}")).unwrap_or_default();
            outln!("{status:<4} {:<14} {}{fix}", c.check, c.detail)?;
        }
    }
    let failed = found.iter().filter(|c| c.status == Status::Fail).count();
    anyhow::ensure!(failed == 0, "{failed} of {} checks failed (fixes above)", found.len());
    Ok(())
}

async fn run_checks(client: &AdminClient, socket: &Path, args: &DoctorArgs) -> Vec<Check> {
    let info = match client.server_info().await {
        Ok(info) => info,
        Err(e) => {
            let mut found = vec![Check::fail(
                "server",
                format!("the server does not answer at {}: {e}", socket.display()),
                "systemctl status ferry (start it: systemctl enable --now ferry); or point \
                 --admin-socket at its admin_socket",
            )];
            found.extend(NEED_SERVER.iter().map(|&check| Check {
                check,
                status: Status::Skipped,
                detail: "the server did not answer".into(),
                fix: None,
            }));
            return found;
        }
    };
    let Some(setup) = info.setup.clone() else {
        return vec![Check::fail(
            "server",
            format!("the server at {} is older than this ferry and does not describe its setup", socket.display()),
            "upgrade the server to the CLI's version (or use its own ferry binary)",
        )];
    };
    let mut found = vec![Check::ok(
        "server",
        format!("ferry {} answers at {} (server {})", setup.version, socket.display(), info.server_id),
    )];

    let interface = Path::new("/sys/class/net").join(&setup.wireguard_interface).exists();
    let module = Path::new("/sys/module/wireguard").exists();
    found.push(checks::wireguard(&setup, interface, module));

    let mut answers = Vec::new();
    let listeners = [
        ("provisioning", Some(&setup.provisioning_listen)),
        ("provisioning-tls", setup.provisioning_tls_listen.as_ref()),
        ("datasource", Some(&setup.datasource_listen)),
        ("remote-admin", setup.remote_admin_listen.as_ref()),
    ];
    for (what, addr) in listeners {
        if let Some(addr) = addr {
            answers.push((what, addr.clone(), connect(addr).await.err()));
        }
    }
    found.push(checks::listeners(&setup, &answers));

    // Each remaining check needs one more listing; a listing the server refuses fails
    // that check alone.
    let servers = client.list_servers().await;
    let local_now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    found.push(checks::clock(setup.now, local_now, servers.as_deref().unwrap_or_default()));

    let routes = std::fs::read_to_string("/proc/net/route").map(|t| checks::parse_proc_routes(&t)).unwrap_or_default();
    found.push(checks::tunnel_network(&info.tunnel_network, &setup.wireguard_interface, &routes));

    let nodes = client.list_nodes().await;
    let path = args.dnsmasq_conf.display().to_string();
    found.push(match &nodes {
        Ok(nodes) => {
            // `ferry configure dnsmasq` with the same inventory: the leases are what counts,
            // in the file itself or in the hosts dir it names (`--hosts-dir`).
            let expected = crate::dnsmasq::lease_lines(nodes);
            let found = std::fs::read_to_string(&args.dnsmasq_conf)
                .map(|conf| crate::dnsmasq::with_hosts_dir_leases(&conf))
                .map_err(|e| e.to_string());
            let leases = checks::dnsmasq(&path, found.clone(), &expected);
            match found.as_deref().ok().map(|conf| (conf, crate::dnsmasq::secure_boot_tftp_root(conf))) {
                Some((conf, Some(root))) => {
                    let stale = secure_boot_staleness(client, info.public_url.as_deref(), conf, &root).await;
                    checks::secure_boot_export(leases, &root, stale)
                }
                _ => leases,
            }
        }
        Err(e) => listing_failed("dnsmasq", "nodes", e),
    });

    let listings =
        async { Ok::<_, crate::client::ClientError>((client.list_profiles().await?, client.list_images().await?)) };
    found.push(match (listings.await, &nodes) {
        (Ok((profiles, images)), Ok(nodes)) => checks::images(&profiles, nodes, &images),
        (Err(e), _) => listing_failed("images", "profiles and images", &e),
        (_, Err(e)) => listing_failed("images", "nodes", e),
    });
    found.push(match &nodes {
        Ok(nodes) => checks::identity(nodes),
        Err(e) => listing_failed("identity", "nodes", e),
    });

    let cert_file = setup.provisioning_tls_cert.as_ref().map(|cert| match std::fs::File::open(cert) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => CertFile::NotAllowed,
        _ => match ferry_server::certificate_file_pin(Path::new(cert)) {
            Ok(pin) => CertFile::Pin(pin),
            Err(e) => CertFile::Broken(format!("{e:#}")),
        },
    });
    found.push(checks::tls(&setup, info.provisioning_tls_pin.as_deref(), cert_file));

    found.push(match &servers {
        Ok(servers) => checks::servers(&setup, servers),
        Err(e) => Check::fail(
            "servers",
            format!("the server cannot list the servers from its {} store: {e}", setup.store),
            "check the store: PostgreSQL running and reachable from the server (journalctl -u ferry)",
        ),
    });
    found
}

/// What in a `--secure-boot` TFTP tree differs from what a re-run would export now.
async fn secure_boot_staleness(
    client: &AdminClient,
    public_url: Option<&str>,
    conf: &str,
    root: &str,
) -> Result<Vec<String>, String> {
    let url = public_url.ok_or("the server has no provisioning.public_url to read the nodes' grub.cfg from")?;
    let source = crate::tftp_export::HttpSource::new(url.trim_end_matches('/')).map_err(|e| format!("{e:#}"))?;
    let images = client.list_images().await.map_err(|e| format!("the server did not list the images: {e}"))?;
    let macs = checks::configured_macs(conf);
    crate::tftp_export::stale_files(&source, Path::new(root), &macs, &images).await.map_err(|e| format!("{e:#}"))
}

fn listing_failed(check: &'static str, what: &str, e: &impl std::fmt::Display) -> Check {
    Check::fail(check, format!("the server did not list the {what}: {e}"), "journalctl -u ferry")
}

/// A TCP connect to a listener; a wildcard address is tried on loopback.
async fn connect(addr: &str) -> Result<(), String> {
    let mut addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 3 s".into()),
    }
}
