#!/usr/bin/env bash
# Installs what the tests need (Debian packages, as root), builds, and runs every test.
# Usage: sudo scripts/test.sh        (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "scripts/test.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and builds network namespaces): sudo scripts/test.sh"
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) so that cargo is on PATH"

# System packages the test suite uses. Only missing ones are installed.
PACKAGES=(pkg-config iproute2 util-linux curl wireguard-tools wireguard-go debootstrap zstd
  qemu-system-x86 ipxe-qemu busybox-static linux-image-amd64 binutils cpio xz-utils
  ovmf shim-signed grub-efi-amd64-signed
  swtpm swtpm-tools tpm2-tools libtss2-dev gnutls-bin openssl postgresql nftables man-db
  systemd-container rpm attr acl libcap2-bin iputils-ping selinux-utils policycoreutils
  dnsmasq-base ipxe openssh-client python3)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ -c /dev/net/tun ] || die "/dev/net/tun is missing: the WireGuard tests need TUN (modprobe tun)"

# Build products live outside the checkout so CI runs reuse them; a clean machine
# simply builds from nothing.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ferry-target}"
export CARGO_TERM_COLOR=never

# The root file system of the cloud-init tests' nodes (Debian 12 with its real
# cloud-init), built once and cached outside the checkout, keyed by its versions.
echo "==> cloud-init node root file system"
FERRY_CLOUD_INIT_ROOTFS=$(scripts/cloud-init-chroot.sh) || die "building the cloud-init node root failed (see above)"
export FERRY_CLOUD_INIT_ROOTFS
echo "    $FERRY_CLOUD_INIT_ROOTFS"

# The clean Debian 12 root the package test installs the .deb into and boots (cached).
echo "==> package test root file system"
scripts/package-root.sh >/dev/null || die "building the package test root failed (see above)"
echo "==> packaging tools (cargo-deb, cargo-generate-rpm)"
scripts/package.sh --install-tools || die "installing the packaging tools failed (see above)"
# The QEMU image tests' node roots (tests/netboot_images.rs): a tiny one with a file
# capability, labels and an ACL; Debian 12 with SELinux labelled at build time. Cached
# like the cloud-init root.
echo "==> node image roots"
FERRY_NODE_IMAGE_TINY=$(scripts/node-image.sh tiny) || die "building the tiny node image failed (see above)"
FERRY_NODE_IMAGE_SELINUX=$(scripts/node-image.sh selinux) || die "building the SELinux node image failed (see above)"
export FERRY_NODE_IMAGE_TINY FERRY_NODE_IMAGE_SELINUX
echo "    $FERRY_NODE_IMAGE_TINY"
echo "    $FERRY_NODE_IMAGE_SELINUX"
# The full node OS of the power-on-to-login test (tests/first_node.rs): Debian 12 with
# systemd, cloud-init and openssh-server, built once (about 4 minutes) and cached the same way.
echo "==> node OS image"
FERRY_NODE_IMAGE_OS=$(scripts/node-image.sh os) || die "building the node OS image failed (see above)"
export FERRY_NODE_IMAGE_OS

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> no module cycles (ferry-store, ferry-server)"
for crate in ferry-store ferry-server; do
  python3 scripts/module-cycles.py "crates/$crate/src" > /tmp/ferry-cycles.$$.txt \
    || { cat /tmp/ferry-cycles.$$.txt; die "module cycle in $crate (see the last line above)"; }
done
rm -f /tmp/ferry-cycles.$$.txt
# The store tests run against SQLite and PostgreSQL: a throwaway server, unless
# FERRY_TEST_POSTGRES already names one. It is stopped at the end only if this run
# started it (another run on the machine may be using one it started).
if [ -z "${FERRY_TEST_POSTGRES:-}" ]; then
  echo "==> throwaway PostgreSQL for the store tests"
  pg_env=$(scripts/postgres.sh start) || die "cannot start a throwaway PostgreSQL (see above)"
  eval "$pg_env"
  if [ "${FERRY_PG_STARTED:-0}" = 1 ]; then
    trap 'scripts/postgres.sh stop' EXIT
  fi
fi
echo "==> cargo test"
cargo test --workspace --all-targets --locked 2>&1 | tee /tmp/ferry-test.$$.log
passed=$(grep -Eo 'test result: ok\. [0-9]+ passed' /tmp/ferry-test.$$.log | awk '{s+=$4} END {print s+0}')
rm -f /tmp/ferry-test.$$.log
# The QEMU network boot test's time split (tests/netboot.rs writes it).
[ -f "$CARGO_TARGET_DIR/tmp/netboot-times.txt" ] && cat "$CARGO_TARGET_DIR/tmp/netboot-times.txt"
[ -f "$CARGO_TARGET_DIR/tmp/first-node-times.txt" ] && cat "$CARGO_TARGET_DIR/tmp/first-node-times.txt"
echo "==> all tests passed ($passed tests)"
