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

# apt_sources, mirror_for: the machine's Debian mirrors.
# shellcheck source=scripts/lib/debian.sh
. "$(dirname "$0")/lib/debian.sh"

command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"
command -v zstd >/dev/null || die "zstd is not installed: apt-get install -y zstd"

arch=$(dpkg --print-architecture)
debootstrap_version=$(dpkg-query -W -f='${Version}' debootstrap)
candidate() { apt-cache policy cloud-init 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
cloud_init_version=$(candidate)
if [ -z "$cloud_init_version" ] || [ "$cloud_init_version" = "(none)" ]; then
  $print_only && die "apt knows no cloud-init package (run apt-get update, or sudo $0)"
  [ "$(id -u)" -eq 0 ] || die "must run as root: sudo $0"
  say "apt knows no cloud-init yet: apt-get update"
  apt-get update -qq
  cloud_init_version=$(candidate)
  if [ -z "$cloud_init_version" ] || [ "$cloud_init_version" = "(none)" ]; then
    die "apt has no cloud-init package for $SUITE: check the Debian entries of /etc/apt/sources.list*"
  fi
fi

key="${SUITE}-${arch}-cloud-init_${cloud_init_version}-debootstrap_${debootstrap_version}-r${RECIPE}"
key=${key//[^A-Za-z0-9._+-]/_}
tarball="$CACHE_DIR/cloud-init-root-$key.tar.zst"

if [ -f "$tarball" ] || $print_only; then
  echo "$tarball"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot): sudo $0"

mirror="${FERRY_DEBIAN_MIRROR:-$(mirror_for "$SUITE")}"
[ -n "$mirror" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list*: set FERRY_DEBIAN_MIRROR=URL"
updates=$(mirror_for "$SUITE-updates")
security=$(mirror_for "$SUITE-security")

mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/.build.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
root="$work/root"

# Every mount of the build lives in a private mount namespace, so none survives a
# failure or an interrupt on the host.
in_private_ns() { unshare --mount --propagation private "$@"; }

started=$(date +%s)
say "building $tarball"
say "[1/4] debootstrap --variant=minbase $SUITE from $mirror (about a minute)"
in_private_ns debootstrap --variant=minbase --arch="$arch" "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

say "[2/4] apt-get install cloud-init=$cloud_init_version ${PACKAGES[*]}"
{
  echo "deb $mirror $SUITE main"
  [ -z "$updates" ] || echo "deb $updates $SUITE-updates main"
  [ -z "$security" ] || echo "deb $security $SUITE-security main"
} >"$root/etc/apt/sources.list"
# No service starts inside the chroot during the installation.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
in_private_ns sh -euc '
  root=$1; shift
  mount -t proc proc "$root/proc"
  mount -t sysfs sys "$root/sys"
  mount --bind /dev "$root/dev"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 apt-get update -qq
  chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
    apt-get install -y -qq --no-install-recommends "$@"
' sh "$root" "cloud-init=$cloud_init_version" "${PACKAGES[@]}" >"$work/apt.log" 2>&1 ||
  { tail -n 30 "$work/apt.log" >&2
    die "installing packages in the chroot failed (log above); if cloud-init $cloud_init_version is no longer on the mirror, run apt-get update on this machine first"; }

say "[3/4] configuring the node image"
rm -f "$root/usr/sbin/policy-rc.d"
# A node image ships no SSH host keys: each node makes its own (cloud-init's ssh module).
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/resolv.conf"
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
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$work/manifest"
installed=$(awk '$1 == "cloud-init" { print $2 }' "$work/manifest")
[ "$installed" = "$cloud_init_version" ] || die "the chroot has cloud-init $installed, expected $cloud_init_version"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/log/apt/*

say "[4/4] packing ($(du -sh "$root" | cut -f1))"
tar --create --zstd --numeric-owner --xattrs --acls --one-file-system -C "$root" --file "$work/root.tar.zst" .
mv "$work/manifest" "${tarball%.tar.zst}.manifest"
mv "$work/root.tar.zst" "$tarball"
# Roots of earlier keys are never used again: keep the cache to the current one.
for old in "$CACHE_DIR"/cloud-init-root-*.tar.zst; do
  [ "$old" = "$tarball" ] || [ ! -e "$old" ] || { say "removing the outdated $old"; rm -f "$old" "${old%.tar.zst}.manifest"; }
done
say "done in $(($(date +%s) - started)) s: $tarball ($(du -h "$tarball" | cut -f1)); package list in ${tarball%.tar.zst}.manifest"
echo "$tarball"
