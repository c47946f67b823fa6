#!/usr/bin/env bash
# Builds, once, the root file system of a full Debian 12 node OS for the end-to-end
# boot test (issue 17) and caches it as a tar archive (keyed by what decides its
# content), for `ferry image import --rootfs` (after unpacking it into a directory):
# systemd as init, Debian's cloud-init 22.4 (its own systemd units, NoCloud), openssh-server,
# ifupdown + isc-dhcp-client (cloud-init's ENI renderer), iproute2, kmod, sudo and, from this
# machine's Debian kernel (the kernel the node boots), the modules the booted OS loads
# itself (8021q for a VLAN sub-interface from network-config, and their dependencies).
# No SSH host key, no password, no authorized key is baked in: the node gets them
# from ferry through the tunnel at every boot.
#
# Usage: sudo scripts/node-os-image.sh                build if missing; print the path
#        scripts/node-os-image.sh --print-path        print where it is (or would be)
#
# Environment: FERRY_TEST_CACHE (default /var/cache/ferry-test), FERRY_DEBIAN_MIRROR.
set -euo pipefail

# Bump when the build below changes what goes into the tree.
RECIPE=2
SUITE=bookworm
CACHE_DIR="${FERRY_TEST_CACHE:-/var/cache/ferry-test}"
PACKAGES=(systemd systemd-sysv udev dbus cloud-init openssh-server ifupdown isc-dhcp-client iproute2 kmod
  procps python3 sudo)
# The kernel modules the booted OS loads (with their dependencies).
MODULES=(8021q)

say() { echo "node-os-image: $*" >&2; }
die() { echo "node-os-image: error: $*" >&2; exit 1; }

# apt_sources, mirror_for: the machine's configured Debian mirrors.
# shellcheck source=scripts/lib/debian.sh
. "$(dirname "$0")/lib/debian.sh"

print_only=false
case "${1:-}" in
  --print-path) print_only=true ;;
  "") ;;
  -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument $1 (usage: $0 [--print-path])" ;;
esac

installed() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }

# The kernel the node boots: the one linux-image-amd64 depends on (as the QEMU tests).
kver=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ,]*' | head -n 1 | sed 's/^linux-image-//')
[ -n "$kver" ] || die "linux-image-amd64 is not installed: apt-get install -y linux-image-amd64"
[ -d "/lib/modules/$kver" ] || die "/lib/modules/$kver is missing: apt-get install --reinstall linux-image-$kver"
arch=$(dpkg --print-architecture)
deb=$(installed debootstrap)
[ -n "$deb" ] || die "debootstrap is not installed: apt-get install -y debootstrap"
ci=$(candidate cloud-init)
ssh=$(candidate openssh-server)
sd=$(candidate systemd)
if [ -z "$ci" ] || [ "$ci" = "(none)" ]; then die "apt knows no cloud-init (run apt-get update)"; fi
key="os-$SUITE-$arch-cloud-init_$ci-openssh-server_$ssh-systemd_$sd-kernel_$(installed "linux-image-$kver")-debootstrap_$deb-r$RECIPE"
key=${key//[^A-Za-z0-9._+-]/_}
tarball="$CACHE_DIR/node-image-$key.tar.zst"
if [ -f "$tarball" ] || $print_only; then
  echo "$tarball"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (owners, device nodes): sudo $0"
command -v zstd >/dev/null || die "zstd is not installed: apt-get install -y zstd"

mkdir -p "$CACHE_DIR"
work=$(mktemp -d "$CACHE_DIR/.node-os-image.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT
root="$work/root"
mkdir -p "$root"
in_private_ns() { unshare --mount --propagation private "$@"; }

started=$(date +%s)
say "building $tarball"
mirror="${FERRY_DEBIAN_MIRROR:-$(mirror_for "$SUITE")}"
[ -n "$mirror" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list*: set FERRY_DEBIAN_MIRROR=URL"
updates=$(mirror_for "$SUITE-updates")
security=$(mirror_for "$SUITE-security")
say "[1/4] debootstrap --variant=minbase $SUITE from $mirror (about a minute)"
in_private_ns debootstrap --variant=minbase --arch="$arch" "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
{
  echo "deb $mirror $SUITE main"
  [ -z "$updates" ] || echo "deb $updates $SUITE-updates main"
  [ -z "$security" ] || echo "deb $security $SUITE-security main"
} >"$root/etc/apt/sources.list"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
say "[2/4] apt-get install ${PACKAGES[*]}"
in_private_ns sh -euc '
  root=$1; shift
  mount -t proc proc "$root/proc"
  mount -t sysfs sys "$root/sys"
  mount --bind /dev "$root/dev"
  chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 apt-get update -qq
  chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
    apt-get install -y -qq --no-install-recommends "$@"
  chroot "$root" dpkg-query -W -f="\${Package} \${Version}\n" >"$root/.manifest"
  chroot "$root" apt-get clean
' sh "$root" "${PACKAGES[@]}" >"$work/apt.log" 2>&1 ||
  { tail -n 30 "$work/apt.log" >&2; die "installing packages in the chroot failed (log above)"; }
mv "$root/.manifest" "$work/manifest"
grep -q '^cloud-init 22\.4' "$work/manifest" || die "the image's cloud-init is not 22.4: $(grep '^cloud-init ' "$work/manifest")"

say "[3/4] configuring: no keys, no passwords; modules for kernel $kver"
rm -f "$root/usr/sbin/policy-rc.d"
: >"$root/etc/resolv.conf"
echo localhost >"$root/etc/hostname"
: >"$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_* "$root/var/lib/dbus/machine-id"
# root is locked (no password), no key anywhere.
sed -i 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"
if grep -q '^root:[^*!]' "$root/etc/shadow"; then die "root has a password in the image"; fi
rm -rf "$root/root/.ssh"
# The NoCloud seed ferry's initramfs leaves in /var/lib/cloud/seed/nocloud is the only
# datasource: no probing of cloud metadata services on a provisioning network.
cat >"$root/etc/cloud/cloud.cfg.d/90-ferry.cfg" <<'CFG'
# ferry: the node's cloud-init documents arrive through ferry's tunnel; the initramfs
# writes them to /var/lib/cloud/seed/nocloud before cloud-init's local stage.
datasource_list: [NoCloud, None]
# The image has no locales but C.UTF-8 (cloud-init's default en_US.UTF-8 fails).
locale: C.UTF-8
CFG
# A serial console for the boot log and the login prompt; no wait for a network that
# cloud-init configures itself.
systemctl --root="$root" enable serial-getty@ttyS0.service >/dev/null 2>&1 || true
systemctl --root="$root" mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer \
  e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
echo os-1 >"$root/etc/image-id"
# Modules of the kernel the node boots, for what the booted OS loads itself.
for m in "${MODULES[@]}"; do
  for f in $(modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'); do
    mkdir -p "$root$(dirname "$f")"
    cp "$f" "$root$f"
  done
done
cp "/lib/modules/$kver"/modules.order "/lib/modules/$kver"/modules.builtin* "$root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$root" "$kver"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/usr/share/doc/* "$root"/usr/share/man/* \
  "$root"/usr/share/info/* "$root"/usr/share/locale/* "$root"/var/log/*.log "$root"/var/log/apt/* \
  "$root"/var/cache/debconf/*-old "$root"/var/lib/cloud/*

say "[4/4] packing ($(du -sh "$root" | cut -f1))"
tar --create --zstd --numeric-owner --one-file-system -C "$root" --file "$work/root.tar.zst" .
mv "$work/manifest" "${tarball%.tar.zst}.manifest"
mv "$work/root.tar.zst" "$tarball"
for old in "$CACHE_DIR"/node-image-os-*.tar.zst; do
  [ "$old" = "$tarball" ] || [ ! -e "$old" ] || { say "removing the outdated $old"; rm -f "$old" "${old%.tar.zst}.manifest"; }
done
say "done in $(($(date +%s) - started)) s: $tarball ($(du -h "$tarball" | cut -f1))"
echo "$tarball"
