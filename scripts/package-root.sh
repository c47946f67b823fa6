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

# shellcheck source=scripts/lib/debian.sh
. "$(dirname "$0")/lib/debian.sh"

command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"
command -v zstd >/dev/null || die "zstd is not installed: apt-get install -y zstd"

arch=$(dpkg --print-architecture)
debootstrap_version=$(dpkg-query -W -f='${Version}' debootstrap)
candidate() { apt-cache policy systemd 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
systemd_version=$(candidate)
if [ -z "$systemd_version" ] || [ "$systemd_version" = "(none)" ]; then
  $print_only && die "apt knows no systemd package (run apt-get update, or sudo $0)"
  [ "$(id -u)" -eq 0 ] || die "must run as root: sudo $0"
  apt-get update -qq
  systemd_version=$(candidate)
  [ -n "$systemd_version" ] && [ "$systemd_version" != "(none)" ] || die "apt has no systemd package for $SUITE"
fi

key="${SUITE}-${arch}-systemd_${systemd_version}-debootstrap_${debootstrap_version}-r${RECIPE}"
key=${key//[^A-Za-z0-9._+-]/_}
tarball="$CACHE_DIR/package-root-$key.tar.zst"

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
in_private_ns() { unshare --mount --propagation private "$@"; }

started=$(date +%s)
say "building $tarball"
say "[1/3] debootstrap --variant=minbase $SUITE from $mirror"
in_private_ns debootstrap --variant=minbase --arch="$arch" "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

say "[2/3] apt-get install ${PACKAGES[*]}"
{
  echo "deb $mirror $SUITE main"
  [ -z "$updates" ] || echo "deb $updates $SUITE-updates main"
  [ -z "$security" ] || echo "deb $security $SUITE-security main"
} >"$root/etc/apt/sources.list"
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
' sh "$root" "${PACKAGES[@]}" >"$work/apt.log" 2>&1 ||
  { tail -n 30 "$work/apt.log" >&2; die "installing packages in the root failed (log above)"; }

rm -f "$root/usr/sbin/policy-rc.d"
: >"$root/etc/resolv.conf"
echo ferry-package-test >"$root/etc/hostname"
# Booted by systemd-nspawn: no getty, nothing waiting for hardware.
chroot "$root" systemctl mask console-getty.service getty@.service systemd-networkd-wait-online.service >/dev/null 2>&1 || true
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$work/manifest"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/*

say "[3/3] packing ($(du -sh "$root" | cut -f1))"
tar --create --zstd --numeric-owner --xattrs --acls --one-file-system -C "$root" --file "$work/root.tar.zst" .
mv "$work/manifest" "${tarball%.tar.zst}.manifest"
mv "$work/root.tar.zst" "$tarball"
for old in "$CACHE_DIR"/package-root-*.tar.zst; do
  [ "$old" = "$tarball" ] || [ ! -e "$old" ] || { say "removing the outdated $old"; rm -f "$old" "${old%.tar.zst}.manifest"; }
done
say "done in $(($(date +%s) - started)) s: $tarball ($(du -h "$tarball" | cut -f1))"
echo "$tarball"
