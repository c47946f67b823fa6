#!/usr/bin/env bash
# Builds, once, a clean Debian 12 root file system to install ferry's .deb into (the
# package test unpacks one copy per run), and caches it as a tarball outside the
# checkout, keyed by what decides its content. It is a plain debootstrap minbase root
# plus systemd (so the package test can boot it with systemd-nspawn and start ferry
# under its real unit) and the tools the test looks through: iproute2, wireguard-tools,
# curl. Nothing of ferry's is in it.
#
# Usage: sudo scripts/package-root.sh            build if missing; print the path
#        scripts/package-root.sh --print-path    print where the tarball is (or would be)
#
# Environment: FERRY_TEST_CACHE (default /var/cache/ferry-test), FERRY_DEBIAN_MIRROR.
set -euo pipefail

RECIPE=2
SUITE=bookworm
# systemd to boot it; the tools the test looks through; and the shared libraries the .deb
# depends on (its Depends: line, from cargo-deb's $auto), so the test installs it offline
# with `dpkg -i`, which still checks every dependency.
PACKAGES=(systemd systemd-sysv iproute2 wireguard-tools curl procps
  libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-tctildr0)
CACHE_DIR="${FERRY_TEST_CACHE:-/var/cache/ferry-test}"

say() { echo "package-root: $*" >&2; }
die() { echo "package-root: error: $*" >&2; exit 1; }

print_only=false
case "${1:-}" in
  --print-path) print_only=true ;;
  "") ;;
  -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument $1 (usage: $0 [--print-path])" ;;
esac

# apt_candidate, begin_build, debootstrap_root, pack_root.
# shellcheck source=scripts/lib/debian.sh
. "$(dirname "$0")/lib/debian.sh"

command -v zstd >/dev/null || die "zstd is not installed: apt-get install -y zstd"

arch=$(dpkg --print-architecture)
debootstrap_version=$(installed_version debootstrap)
[ -n "$debootstrap_version" ] || die "debootstrap is not installed: apt-get install -y debootstrap"
systemd_version=$(apt_candidate systemd)
if [ -z "$systemd_version" ]; then
  $print_only && die "apt knows no systemd package (run apt-get update, or sudo $0)"
  [ "$(id -u)" -eq 0 ] || die "must run as root: sudo $0"
  apt-get update -qq
  systemd_version=$(apt_candidate systemd)
  [ -n "$systemd_version" ] || die "apt has no systemd package for $SUITE"
fi

key="${SUITE}-${arch}-systemd_${systemd_version}-debootstrap_${debootstrap_version}-r${RECIPE}"
key=${key//[^A-Za-z0-9._+-]/_}
tarball="$CACHE_DIR/package-root-$key.tar.zst"

if [ -f "$tarball" ] || $print_only; then
  echo "$tarball"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot): sudo $0"

started=$(date +%s)
say "building $tarball"
begin_build build
debootstrap_root "${PACKAGES[@]}"
echo ferry-package-test >"$root/etc/hostname"
# Booted by systemd-nspawn: no getty, nothing waiting for hardware.
chroot "$root" systemctl mask console-getty.service getty@.service systemd-networkd-wait-online.service >/dev/null 2>&1 || true
pack_root "$tarball" 'package-root-*.tar.zst' --xattrs --acls
