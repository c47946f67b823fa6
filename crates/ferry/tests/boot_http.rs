//! Network boot over HTTP against a real server: per-node scripts, unknown MACs,
//! artifacts with Range/ETag (the sealed root too), asset-tag gating (and its
//! defences against guessing), and the audit rows a flood of script fetches leaves.

mod common;

use common::raw::{get_keep_alive, in_netns};
use common::{eventually, Netns, TestServer};
use std::time::{Duration, Instant};

struct Fixture {
    s: TestServer,
    kernel: Vec<u8>,
}

/// curl inside the server's namespace: (status, headers, body).
fn curl(s: &TestServer, args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("h");
    let out =
        s.netns.cmd("curl").args(["-s", "-m", "10", "-D"]).arg(&headers).args(["-o", "-"]).args(args).output().unwrap();
    let h = std::fs::read_to_string(&headers).unwrap_or_default();
    let code = h.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, h.to_lowercase(), out.stdout)
}

const BASE: &str = "http://127.0.0.1:8470";

fn fixture() -> Fixture {
    fixture_with("")
}

/// A server with these `[provisioning]` keys, two images (rocky9 with a root file
/// system, plain without), profile compute (rocky9) and node n1 in it.
fn fixture_with(provisioning: &str) -> Fixture {
    let s = TestServer::start_in_with(
        Netns::new("fys"),
        "",
        "127.0.0.1:8470",
        provisioning,
        "backend = \"userspace\"\n",
        None,
    );
    let dir = s.dir.path();
    let kernel: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd bytes").unwrap();
    std::fs::create_dir_all(dir.join("root/etc")).unwrap();
    std::fs::write(dir.join("root/etc/hostname"), b"image\n").unwrap();
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let out = s.ok(&[
        "image",
        "import",
        "rocky9",
        "--kernel",
        &p("vmlinuz"),
        "--initrd",
        &p("initrd.img"),
        "--rootfs",
        &p("root"),
    ]);
    assert!(out.contains("imported image rocky9"), "{out}");
    s.ok(&["image", "import", "plain", "--kernel", &p("vmlinuz"), "--initrd", &p("initrd.img")]);
    s.ok(&["profile", "add", "compute", "--image", "rocky9", "--kernel-args", "console=ttyS0", "--root", "tmpfs"]);
    s.ok(&["node", "add", "n1", "-P", "compute", "--mac", "52:54:00:00:00:01"]);
    Fixture { s, kernel }
}

#[test]
fn scripts_per_node_and_unknown_macs() {
    let f = fixture();
    let key = f.s.public_key();
    let (code, _, body) = curl(&f.s, &[&format!("{BASE}/boot/ipxe")]);
    assert_eq!(
        (code, String::from_utf8_lossy(&body).as_ref()),
        (200, "#!ipxe\nchain http://127.0.0.1:8470/boot/ipxe?mac=${net0/mac}\n")
    );
    let (code, _, body) = curl(&f.s, &[&format!("{BASE}/boot/ipxe?mac=52-54-00-00-00-01")]);
    let script = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200);
    assert_eq!(
        script,
        format!(
            "#!ipxe\necho ferry: booting n1 (image rocky9)\n\
             kernel {BASE}/boot/images/rocky9/kernel?mac=${{net0/mac}} initrd=initrd console=ttyS0 root=tmpfs \
             ferry.server={BASE} ferry.pubkey={key} ferry.node=n1 ds=nocloud\n\
             initrd --name initrd {BASE}/boot/images/rocky9/initrd\nboot\n"
        )
    );
    let (_, _, by_path) = curl(&f.s, &[&format!("{BASE}/boot/ipxe/52:54:00:00:00:01")]);
    assert_eq!(String::from_utf8_lossy(&by_path), script, "path form");
    let (code, _, grub) = curl(&f.s, &[&format!("{BASE}/boot/grub?mac=52:54:00:00:00:01")]);
    let grub = String::from_utf8_lossy(&grub);
    assert!(
        code == 200
            && grub.contains("linux /boot/images/rocky9/kernel 'console=ttyS0'")
            && grub.contains("'ds=nocloud'\n"),
        "{grub}"
    );
    for unknown in ["52:54:00:99:99:99", "nonsense"] {
        let (code, _, body) = curl(&f.s, &[&format!("{BASE}/boot/ipxe?mac={unknown}")]);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(code, 200);
        assert!(body.contains("sleep 30") && body.contains("chain "), "{body}");
        assert!(
            !body.contains("n1") && !body.contains("rocky9") && !body.contains("ferry.pubkey"),
            "no inventory leak: {body}"
        );
    }
    // A node without an image is told so, and retries.
    f.s.ok(&["node", "add", "n2", "--mac", "52:54:00:00:00:02"]);
    let (_, _, body) = curl(&f.s, &[&format!("{BASE}/boot/ipxe?mac=52:54:00:00:00:02")]);
    assert!(String::from_utf8_lossy(&body).contains("has no image"));
    assert!(f.s.fails(&["image", "delete", "rocky9"]).contains("used by profile compute"));
}

#[test]
fn artifacts_stream_with_range_and_etag() {
    let f = fixture();
    let url = format!("{BASE}/boot/images/rocky9/kernel");
    let (code, h, body) = curl(&f.s, &[&url]);
    assert_eq!(code, 200);
    assert_eq!(body, f.kernel);
    assert!(h.contains(&format!("content-length: {}", f.kernel.len())), "{h}");
    let etag = h.lines().find_map(|l| l.strip_prefix("etag: ")).unwrap().trim().to_owned();
    assert_eq!(etag.len(), 66, "etag is the quoted sha256: {etag}");
    let (code, _, body) = curl(&f.s, &["-H", &format!("If-None-Match: {etag}"), &url]);
    assert_eq!((code, body.len()), (304, 0));
    let (code, h, body) = curl(&f.s, &["-H", "Range: bytes=1000-1009", &url]);
    assert_eq!(code, 206);
    assert_eq!(body, &f.kernel[1000..1010]);
    assert!(h.contains(&format!("content-range: bytes 1000-1009/{}", f.kernel.len())), "{h}");
    let (code, _, body) = curl(&f.s, &["-H", "Range: bytes=-5", &url]);
    assert_eq!((code, body.as_slice()), (206, &f.kernel[f.kernel.len() - 5..]));
    let (code, h, _) = curl(&f.s, &["-H", "Range: bytes=999999-", &url]);
    assert!(code == 416 && h.contains(&format!("content-range: bytes */{}", f.kernel.len())), "{h}");
    let (code, _, body) =
        curl(&f.s, &["-H", &format!("If-Range: \"{}\"", "0".repeat(64)), "-H", "Range: bytes=0-9", &url]);
    assert_eq!((code, body.len()), (200, f.kernel.len()), "a stale If-Range gets the whole file");
    // The root: not in the boot script (the agent fetches it), sealed by default, and
    // resumable like every artifact.
    let root = format!("{BASE}/boot/images/rocky9/root");
    let (code, h, sealed) = curl(&f.s, &[&root]);
    assert_eq!((code, &sealed[..8]), (200, &b"FERRYIMG"[..]), "a sealed root");
    assert!(h.contains(&format!("content-length: {}", sealed.len())), "{h}");
    let (code, _, tail) = curl(&f.s, &["-H", "Range: bytes=100-", &root]);
    assert_eq!((code, tail.as_slice()), (206, &sealed[100..]));
    // Images imported before sealed images had a cpio `rootfs`; new ones have none.
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/rocky9/rootfs")]).0, 404);
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/plain/root")]).0, 404);
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/nosuch/kernel")]).0, 404);
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/plain/rootfs")]).0, 404);
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/rocky9/etc-passwd")]).0, 404);
}

#[test]
fn asset_tag_gating_on_and_off() {
    let f = fixture();
    let tag = f.s.dir.path().join("tag");
    std::fs::write(&tag, "GATE-TAG 7").unwrap();
    f.s.ok(&["node", "set", "n1", "--asset-tag-file", tag.to_str().unwrap()]);
    let url = format!("{BASE}/boot/images/rocky9/kernel");
    assert_eq!(curl(&f.s, &[&url]).0, 200, "gating off: served");
    f.s.ok(&["profile", "set", "compute", "--boot-asset-gate", "true"]);
    let (_, _, script) = curl(&f.s, &[&format!("{BASE}/boot/ipxe?mac=52:54:00:00:00:01")]);
    assert!(String::from_utf8_lossy(&script)
        .contains("/boot/images/rocky9/kernel?mac=${net0/mac}&asset=${asset:uristring}"));
    std::thread::sleep(std::time::Duration::from_secs(6)); // the gated-image cache lives 5 s
    assert_eq!(curl(&f.s, &[&url]).0, 403, "gating on: no tag, no kernel");
    assert_eq!(curl(&f.s, &[&format!("{url}?mac=52:54:00:00:00:01&asset=WRONG")]).0, 403);
    assert_eq!(curl(&f.s, &[&format!("{url}?mac=52:54:00:00:00:01&asset=GATE-TAG%207")]).0, 200);
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/plain/kernel")]).0, 200, "other images are not gated");
    assert!(!f.s.log_text().contains("GATE-TAG"), "the tag is never logged");
}

const FORBIDDEN: &str = "this image needs the node's asset tag\n";
const KERNEL: &str = "http://127.0.0.1:8470/boot/images/rocky9/kernel";

/// Gives `node` the asset tag `tag` (from a file, as an admin would).
fn set_tag(s: &TestServer, node: &str, tag: &str) {
    let file = s.dir.path().join(format!("{node}.tag"));
    std::fs::write(&file, tag).unwrap();
    s.ok(&["node", "set", node, "--asset-tag-file", file.to_str().unwrap()]);
}

/// n1 gated with tag `GATE-TAG 7`, and the gated-image cache refreshed.
fn gate_n1(s: &TestServer) {
    set_tag(s, "n1", "GATE-TAG 7");
    s.ok(&["profile", "set", "compute", "--boot-asset-gate", "true"]);
    std::thread::sleep(Duration::from_secs(6)); // the gated-image cache lives 5 s
}

/// A kernel request naming `mac` with `asset` (URL-encoded): (status, body).
fn fetch_kernel(s: &TestServer, mac: &str, asset: &str) -> (u16, String) {
    let (code, _, body) = curl(s, &[&format!("{KERNEL}?mac={mac}&asset={asset}")]);
    (code, if code == 200 { String::new() } else { String::from_utf8_lossy(&body).into_owned() })
}

fn audit_actions(s: &TestServer, node: &str, action: &str) -> Vec<String> {
    let rows = s.json(&["audit", "--node", node, "--limit", "100000", "--json"]);
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == action)
        .map(|r| r["detail"].as_str().unwrap().to_owned())
        .collect()
}

fn metric(s: &TestServer, line_start: &str) -> f64 {
    let (_, text) = s.admin_get("/metrics");
    text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[test]
fn a_node_without_the_gate_never_has_its_tag_compared() {
    let f = fixture();
    gate_n1(&f.s);
    // n2 boots the gated image with its gate off; n3 has its gate on but boots another
    // image. Both have tags: neither may be compared at rocky9's gate.
    f.s.ok(&["node", "add", "n2", "-P", "compute", "--mac", "52:54:00:00:00:02", "--boot-asset-gate", "false"]);
    set_tag(&f.s, "n2", "N2-TAG");
    f.s.ok(&["node", "add", "n3", "-P", "compute", "--mac", "52:54:00:00:00:03", "--image", "plain"]);
    set_tag(&f.s, "n3", "N3-TAG");
    let refusal = fetch_kernel(&f.s, "52:54:00:00:00:01", "WRONG");
    assert_eq!(refusal, (403, FORBIDDEN.to_owned()));
    for (mac, right) in [("52:54:00:00:00:02", "N2-TAG"), ("52:54:00:00:00:03", "N3-TAG")] {
        assert_eq!(fetch_kernel(&f.s, mac, right), refusal, "{mac} with its right tag: the answer to a wrong one");
        assert_eq!(fetch_kernel(&f.s, mac, "WRONG"), refusal, "{mac} with a wrong tag");
    }
    for node in ["n2", "n3"] {
        assert!(audit_actions(&f.s, node, "boot.gate-refused").is_empty(), "{node}: nothing compared, nothing counted");
    }
    assert_eq!(audit_actions(&f.s, "n1", "boot.gate-refused").len(), 1, "n1's wrong tag was compared and counted");
    assert_eq!(fetch_kernel(&f.s, "52:54:00:00:00:01", "GATE-TAG%207").0, 200);
}

#[test]
fn wrong_tags_are_audited_and_lock_the_gate_even_against_the_right_tag() {
    let f = fixture_with("boot_gate_max_failures = 3\nboot_gate_lockout_secs = 5\n");
    gate_n1(&f.s);
    let n1 = "52:54:00:00:00:01";
    for _ in 0..2 {
        assert_eq!(fetch_kernel(&f.s, n1, "GUESS").0, 403);
    }
    assert_eq!(fetch_kernel(&f.s, n1, "GATE-TAG%207").0, 200, "two wrong tags do not lock");
    assert_eq!(fetch_kernel(&f.s, n1, "GUESS").0, 403);
    let locked_at = Instant::now();
    let refused = audit_actions(&f.s, "n1", "boot.gate-refused");
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[2].contains("failures=3/3") && refused[2].contains("from=127.0.0.1"), "{refused:?}");
    assert_eq!(audit_actions(&f.s, "n1", "boot.gate-locked").len(), 1);
    assert!(f.s.log_text().contains("boot gate of node n1 locked"), "an alert in the log");
    assert_eq!(metric(&f.s, "ferry_boot_gate_lockouts_total "), 1.0);
    // Locked: the right tag is refused like any other, and nothing more is compared.
    assert_eq!(fetch_kernel(&f.s, n1, "GATE-TAG%207"), (403, FORBIDDEN.to_owned()));
    assert_eq!(metric(&f.s, "ferry_boot_gate_refusals_total{reason=\"locked\"} "), 1.0);
    assert_eq!(audit_actions(&f.s, "n1", "boot.gate-refused").len(), 3);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(locked_at.elapsed()) + Duration::from_millis(500));
    assert_eq!(fetch_kernel(&f.s, n1, "GATE-TAG%207").0, 200, "the lock passed");
    let everything = format!("{}{}", f.s.log_text(), f.s.ok(&["audit", "--limit", "100000"]));
    assert!(!everything.contains("GATE-TAG") && !everything.contains("GUESS"), "tags are never logged or audited");
}

#[test]
fn guessing_from_one_source_is_throttled_after_its_burst() {
    let f = fixture_with("enroll_rate_per_source = 0.1\nenroll_burst_per_source = 5\nboot_gate_max_failures = 1000\n");
    gate_n1(&f.s);
    let statuses: Vec<u16> = (0..15).map(|i| fetch_kernel(&f.s, "52:54:00:00:00:01", &format!("GUESS{i}")).0).collect();
    assert_eq!(statuses[..5], [403; 5], "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "then 429: {statuses:?}");
    let (_, headers, _) = curl(&f.s, &[&format!("{KERNEL}?mac=52:54:00:00:00:01&asset=GATE-TAG%207")]);
    assert!(
        headers.starts_with("http/1.1 429") && headers.contains("retry-after: "),
        "even the right tag waits: {headers}"
    );
    assert_eq!(audit_actions(&f.s, "n1", "boot.gate-refused").len(), 5, "only compared guesses are audited");
    assert_eq!(metric(&f.s, "ferry_boot_gate_refusals_total{reason=\"throttled\"} "), 11.0);
    assert_eq!(curl(&f.s, &[&format!("{BASE}/boot/images/plain/kernel")]).0, 200, "ungated images are not limited");
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap()
}

#[test]
fn a_flood_of_boot_script_fetches_leaves_few_audit_rows_and_bounded_memory() {
    let mut f = fixture();
    let path = "/boot/ipxe?mac=52:54:00:00:00:01";
    let fetch = |n: usize| in_netns(&f.s.netns.name, || get_keep_alive("127.0.0.1:8470", path, n));
    assert!(fetch(200).iter().all(|s| *s == 200));
    let pid = f.s.pid().unwrap();
    let rss_before = rss_kib(pid);
    let (threads, each) = (4, 2_500);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(|| fetch(each))).collect();
        for w in workers {
            assert!(w.join().unwrap().iter().all(|s| *s == 200));
        }
    });
    let elapsed = start.elapsed();
    let total = 200 + threads * each;
    let rss_after = rss_kib(pid);
    let rows = audit_actions(&f.s, "n1", "boot.script");
    println!(
        "{total} boot-script fetches in {elapsed:?}: {} audit rows, RSS {rss_before} -> {rss_after} KiB",
        rows.len()
    );
    // One row per node and minute, however many fetches.
    let minutes = elapsed.as_secs() as usize / 60 + 1;
    assert!(rows.len() <= 2 * minutes, "{} rows for {total} fetches", rows.len());
    assert!(metric(&f.s, "ferry_audit_folded_total ") >= (total - 2 * minutes) as f64);
    assert!(rss_after < rss_before + 32 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
    // Nothing was dropped: at shutdown the open count is written, and every fetch is
    // accounted for, one row or one count at a time.
    f.s.stop();
    f.s.launch();
    let rows = audit_actions(&f.s, "n1", "boot.script");
    let accounted: usize =
        rows.iter().map(|d| d.split_once(" repeated=").map_or(1, |(_, n)| n.parse::<usize>().unwrap())).sum();
    assert_eq!(accounted, total, "{rows:?}");
    eventually(5, "metrics answer", || f.s.admin_get("/metrics").0 == 200);
}
