#!/usr/bin/env bash
# Builds, once, the root file system of a test node that runs the real cloud-init of
# Debian 12, and caches it as a tarball outside the checkout (the cloud-init tests
# unpack one copy per node and boot it inside namespaces of their own).
#
# Usage: sudo scripts/cloud-init-chroot.sh            build if missing; print the path
#        scripts/cloud-init-chroot.sh --print-path    print where the tarball is (or would be)
#
# The tarball is keyed by what decides its content: the suite, the architecture, the
# cloud-init version apt would install, the debootstrap version, and RECIPE below (bump
# it whenever this script changes what goes into the tree). Environment:
#   FERRY_TEST_CACHE     cache directory (default /var/cache/ferry-test)
#   FERRY_DEBIAN_MIRROR  Debian mirror (default: the one configured in /etc/apt/sources.list*)
set -euo pipefail

RECIPE=3
SUITE=bookworm
# ifupdown: cloud-init's network renderer on Debian (the tests check what it renders from network-config).
PACKAGES=(python3 iproute2 ifupdown curl procps locales openssh-client openssh-server sudo)
CACHE_DIR="${FERRY_TEST_CACHE:-/var/cache/ferry-test}"

say() { echo "cloud-init-chroot: $*" >&2; }
die() { echo "cloud-init-chroot: error: $*" >&2; exit 1; }

print_only=false
case "${1:-}" in
  --print-path) print_only=true ;;
  "") ;;
  -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument $1 (usage: $0 [--print-path])" ;;
esac

# mirror_for, apt_candidate, begin_build, debootstrap_root, pack_root.
# shellcheck source=scripts/lib/debian.sh
. "$(dirname "$0")/lib/debian.sh"

command -v zstd >/dev/null || die "zstd is not installed: apt-get install -y zstd"

arch=$(dpkg --print-architecture)
debootstrap_version=$(installed_version debootstrap)
[ -n "$debootstrap_version" ] || die "debootstrap is not installed: apt-get install -y debootstrap"
cloud_init_version=$(apt_candidate cloud-init)
if [ -z "$cloud_init_version" ]; then
  $print_only && die "apt knows no cloud-init package (run apt-get update, or sudo $0)"
  [ "$(id -u)" -eq 0 ] || die "must run as root: sudo $0"
  say "apt knows no cloud-init yet: apt-get update"
  apt-get update -qq
  cloud_init_version=$(apt_candidate cloud-init)
  [ -n "$cloud_init_version" ] ||
    die "apt has no cloud-init package for $SUITE: check the Debian entries of /etc/apt/sources.list*"
fi

key="${SUITE}-${arch}-cloud-init_${cloud_init_version}-debootstrap_${debootstrap_version}-r${RECIPE}"
key=${key//[^A-Za-z0-9._+-]/_}
tarball="$CACHE_DIR/cloud-init-root-$key.tar.zst"

if [ -f "$tarball" ] || $print_only; then
  echo "$tarball"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot): sudo $0"

started=$(date +%s)
say "building $tarball"
begin_build build
debootstrap_root "cloud-init=$cloud_init_version" "${PACKAGES[@]}"

say "configuring the node image"
# A node image ships no SSH host keys: each node makes its own (cloud-init's ssh module).
rm -f "$root"/etc/ssh/ssh_host_*
echo localhost >"$root/etc/hostname"
cat >"$root/etc/cloud/cloud.cfg.d/10_ferry_test_node.cfg" <<'EOF'
#cloud-config
# ferry test node: a diskless node booted by ferry. Its network is up before cloud-init
# runs (the initramfs and `ferry agent` bring it up), its root is not a block device,
# and it finds its seed only through the NoCloud `ds=` kernel parameter.
datasource_list: [NoCloud, None]
network: {config: disabled}
locale: C.UTF-8
growpart: {mode: "off"}
resize_rootfs: false
grub_dpkg: {enabled: false}
EOF
chroot "$root" cloud-init schema --config-file /etc/cloud/cloud.cfg.d/10_ferry_test_node.cfg >/dev/null ||
  die "the node image's cloud-init configuration does not pass cloud-init schema"
installed=$(awk '$1 == "cloud-init" { print $2 }' "$work/manifest")
[ "$installed" = "$cloud_init_version" ] || die "the chroot has cloud-init $installed, expected $cloud_init_version"
remove_docs
pack_root "$tarball" 'cloud-init-root-*.tar.zst' --xattrs --acls
