//! Issue 16's boot proofs, with QEMU (TCG) network-booting a node from a real `ferry
//! serve` (SeaBIOS, the iPXE ROM, the Debian kernel, ferry's initramfs): the image
//! root comes sealed, its key and digest through the node's tunnel, and the agent
//! unpacks it into the tmpfs `/init` switches to.
//!
//! - The tiny image (scripts/node-image.sh tiny, a GNU tar with its attributes) on a
//!   tmpfs root: `getcap`, `getfattr -d -m -` and `getfacl` in the booted root show the
//!   capability, the SELinux labels and the ACL it was built with; `stat -f /` says
//!   tmpfs; an unprivileged `ping` works (it needs its file capability).
//! - The same image on a ramfs root: it boots, and says what it lost.
//! - Debian 12 with selinux-policy-default, labelled at build time (scripts/node-image.sh
//!   selinux), booted with `security=selinux selinux=1 enforcing=1`: `getenforce` says
//!   Enforcing and `ls -Z /etc/shadow` shows shadow_t, with no relabelling at boot.
//!
//! Serial logs are left in `$CARGO_TARGET_TMPDIR/netboot-image-*.log`.

mod common;

use common::netboot::{add_node, import_image, netboot, netboot_sized, node_image, steps, vm_test};
use common::qemu::{Qemu, SerialLine};
use std::path::Path;
use std::time::{Duration, Instant};

fn keep_log(name: &str, lines: &[SerialLine]) {
    let serial: String = lines.iter().map(|l| format!("{:7.2} {}\n", l.at.as_secs_f64(), l.text)).collect();
    let _ = std::fs::write(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("netboot-image-{name}.log")), serial);
}

/// Whether the Debian kernel's tmpfs takes `user.*` attributes (Linux 6.6 and later).
fn tmpfs_takes_user_xattrs(kver: &str) -> bool {
    let mut v = kver.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 6)
}

fn has(lines: &[SerialLine], needle: &str) -> bool {
    lines.iter().any(|l| l.text.contains(needle))
}

#[test]
fn qemu_tmpfs_root_keeps_the_images_labels_capabilities_and_acl() {
    let (_one, kver, s) = vm_test();
    let started = Instant::now();
    import_image(&s, &kver, "tiny", Some(&node_image("tiny")));
    let shown = s.json(&["image", "show", "tiny", "--json"]);
    assert_eq!(shown["root"]["sealed"], true, "{shown}");
    let tag = add_node(
        &s,
        "n1",
        &["--image", "tiny", "--root", "tmpfs", "--kernel-args", "console=ttyS0,115200 ferry.timeout=60"],
    );
    let vm = netboot(&s, &tag);
    let lines = vm.lines();
    keep_log("tmpfs", &lines);
    let user_line = if tmpfs_takes_user_xattrs(&kver) {
        ("the user.* attribute", "IMAGE-XATTR: user.ferry-test=\"kept-from-6.6\"")
    } else {
        (
            "the kernel's tmpfs refusing user.* said plainly",
            "user.* extended attribute(s) not kept: this kernel's tmpfs",
        )
    };
    steps(
        &vm,
        &lines,
        &[
            ("the agent told to unpack into the tmpfs", "--image-root /newroot"),
            (
                "the sealed root's key through the tunnel",
                "downloading the image root from the provisioning listener image=tiny sealed=true",
            ),
            ("the root checked before unpacking", "its size and sha256 are the ones the tunnel gave"),
            user_line,
            ("the root unpacked", "image root unpacked image=tiny"),
            ("phone-home after the image", "phoned home"),
            ("switch_root", "ferry-init: switching root to tmpfs"),
            ("a tmpfs root", "IMAGE-INIT: pid 1 root tmpfs image tiny-xattr-1"),
            ("the file capability (getcap)", "IMAGE-GETCAP: /usr/bin/ping cap_net_raw=ep"),
            ("the label of /etc/shadow (getfattr -d -m -)", "IMAGE-XATTR: # file: etc/shadow"),
            ("its value", "IMAGE-XATTR: security.selinux=\"system_u:object_r:shadow_t:s0\""),
            ("ping's label and capability", "IMAGE-XATTR: # file: usr/bin/ping"),
            ("ping's capability as an attribute", "IMAGE-XATTR: security.capability="),
            ("ping's label", "IMAGE-XATTR: security.selinux=\"system_u:object_r:ping_exec_t:s0\""),
            ("a symbolic link's own label", "IMAGE-XATTR: security.selinux=\"system_u:object_r:bin_t:s0\""),
            ("a directory's label", "IMAGE-XATTR: security.selinux=\"system_u:object_r:etc_t:s0\""),
            ("the ACL as an attribute", "IMAGE-XATTR: system.posix_acl_access="),
            ("the ACL (getfacl)", "IMAGE-ACL: user:1000:r--"),
            ("the ACL's mask", "IMAGE-ACL: mask::r--"),
            ("an unprivileged ping (needs cap_net_raw)", "IMAGE-PING: an unprivileged ping works"),
            ("the seed carried into the image", "IMAGE-SEED: {"),
            ("the end", "IMAGE-DONE"),
            ("power-off", "reboot: Power down"),
        ],
    );
    assert!(!has(&lines, "FERRY-RESULT: fail"));
    let shown = s.json(&["node", "show", "n1", "--json"]);
    assert_eq!(shown["boot"]["boot_count"], 1, "{shown}");
    println!("tmpfs image boot: whole test {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn qemu_ramfs_root_boots_and_says_it_keeps_no_attributes() {
    let (_one, kver, s) = vm_test();
    import_image(&s, &kver, "tiny", Some(&node_image("tiny")));
    let tag = add_node(
        &s,
        "n1",
        &["--image", "tiny", "--root", "ramfs", "--kernel-args", "console=ttyS0,115200 ferry.timeout=60"],
    );
    let vm = netboot(&s, &tag);
    let lines = vm.lines();
    keep_log("ramfs", &lines);
    steps(
        &vm,
        &lines,
        &[
            ("/init's warning", "is a ramfs, which keeps no extended attributes: SELinux labels and file capabilities are lost (use root=tmpfs)"),
            ("the agent's count of what was lost", "security.* extended attribute(s) not kept: a ramfs root keeps none"),
            ("the root unpacked", "image root unpacked image=tiny"),
            ("switch_root", "ferry-init: switching root to ramfs"),
            ("a ramfs root", "IMAGE-INIT: pid 1 root ramfs"),
            ("no capability, so no unprivileged ping", "IMAGE-PING: failed"),
            ("the end", "IMAGE-DONE"),
        ],
    );
    assert!(!has(&lines, "IMAGE-GETCAP: /usr/bin/ping cap_net_raw=ep"), "a ramfs kept a capability?");
}

/// Debian 12 with selinux-policy-default, enforcing, on a tmpfs root: the labels the
/// image was built with (setfiles at build time) are the labels the kernel uses.
#[test]
fn qemu_selinux_enforcing_boot_on_a_tmpfs_root_with_no_relabelling() {
    let (_one, kver, s) = vm_test();
    let started = Instant::now();
    import_image(&s, &kver, "deb-selinux", Some(&node_image("selinux")));
    let args = "console=ttyS0,115200 ferry.timeout=150 security=selinux selinux=1 enforcing=1 \
                init=/usr/local/sbin/ferry-selinux-check";
    let tag = add_node(&s, "n1", &["--image", "deb-selinux", "--root", "tmpfs", "--kernel-args", args]);
    let vm: Qemu = netboot_sized(&s, &tag, 1536, Duration::from_secs(170), &[]);
    let lines = vm.lines();
    keep_log("selinux", &lines);
    steps(
        &vm,
        &lines,
        &[
            ("the kernel's SELinux", "SELinux:  Initializing."),
            (
                "the sealed root",
                "downloading the image root from the provisioning listener image=deb-selinux sealed=true",
            ),
            ("the image's policy, loaded during the unpack", "SELinux policy of the image loaded"),
            (
                "the mode set once every file carries its label",
                "SELinux: every file carries the image's label; mode set",
            ),
            ("the root unpacked", "image root unpacked image=deb-selinux"),
            ("phone-home", "phoned home"),
            ("switch_root", "ferry-init: switching root to tmpfs, exec /usr/local/sbin/ferry-selinux-check"),
            ("enforcing", "SELINUX-CHECK: getenforce Enforcing"),
            ("/etc/shadow labelled as built", "SELINUX-CHECK: shadow system_u:object_r:shadow_t:s0 /etc/shadow"),
            ("ping labelled as built", "SELINUX-CHECK: ping system_u:object_r:ping_exec_t:s0 /usr/bin/ping"),
            ("ping's capability", "SELINUX-CHECK: getcap /usr/bin/ping cap_net_raw=ep"),
            ("a tmpfs root", "SELINUX-CHECK: root tmpfs image selinux-1"),
            ("no relabel pending", "SELINUX-CHECK: autorelabel absent"),
            ("the end", "SELINUX-CHECK: done"),
        ],
    );
    for step in ["restorecon", "fixfiles", "setfiles", "Relabel", "relabeling"] {
        assert!(!has(&lines, step), "a relabelling step at boot ({step}):\n{}", vm.tail(60));
    }
    println!("SELinux enforcing boot: whole test {:.1} s", started.elapsed().as_secs_f64());
}
