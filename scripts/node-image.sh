#!/usr/bin/env bash
# Builds, once, the root file system of a test node image and caches it as a tar
# archive that keeps every extended attribute (SELinux labels, file capabilities,
# ACLs), for `ferry image import --rootfs`. Each variant is keyed by what decides its
# content (package versions, the debootstrap version, RECIPE below), like
# cloud-init-chroot.sh.
#
# Usage: sudo scripts/node-image.sh VARIANT               build if missing; print the path
#        scripts/node-image.sh VARIANT --print-path       print where it is (or would be)
#
# Variants:
#   tiny     busybox and a few tools of this machine (getcap, getfattr, getfacl,
#            setpriv, iputils ping with cap_net_raw+ep), files with SELinux labels, an
#            ACL and a user.* attribute; /sbin/init prints what the booted root holds
#            (IMAGE-* lines) and powers off. Seconds to build.
#   selinux  Debian 12 (debootstrap minbase) with selinux-basics and
#            selinux-policy-default, SELINUX=enforcing, labelled here with setfiles
#            (no /.autorelabel); /usr/local/sbin/ferry-selinux-check (boot it with
#            init=) prints getenforce, ls -Z /etc/shadow, ... (SELINUX-CHECK lines)
#            and powers off. A few minutes to build.
#   os       a full Debian 12 node OS for the power-on-to-login test (tests/first_node.rs):
#            systemd as init, Debian's cloud-init 22.4 (its own units, NoCloud), openssh-server,
#            ifupdown + isc-dhcp-client (cloud-init's ENI renderer), iproute2, kmod, sudo and,
#            from this machine's Debian kernel (the kernel the node boots), the modules the
#            booted OS loads itself (8021q for a VLAN from network-config). No SSH host key,
#            no password, no authorized key: the node gets them through ferry at every boot.
#            About 4 minutes to build.
# A variant is a build_VARIANT function and a line in variant_key; packing, caching and
# keys are shared.
#
# Environment: FERRY_TEST_CACHE (default /var/cache/ferry-test), FERRY_DEBIAN_MIRROR.
set -euo pipefail

# Each variant's recipe version: bump it when its build below changes.
declare -A RECIPE=([tiny]=2 [selinux]=1 [os]=3)
SUITE=bookworm
CACHE_DIR="${FERRY_TEST_CACHE:-/var/cache/ferry-test}"

say() { echo "node-image: $*" >&2; }
die() { echo "node-image: error: $*" >&2; exit 1; }

# installed_version, apt_candidate, begin_build, debootstrap_root, remove_docs, pack_root.
# shellcheck source=scripts/lib/debian.sh
. "$(dirname "$0")/lib/debian.sh"

variant="${1:-}"
print_only=false
case "${2:-}" in
  --print-path) print_only=true ;;
  "") ;;
  *) die "unknown argument $2 (usage: $0 tiny|selinux|os [--print-path])" ;;
esac
case "$variant" in
  tiny | selinux | os) ;;
  -h | --help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown variant '${variant}' (usage: $0 tiny|selinux|os [--print-path])" ;;
esac

# The kernel the node boots: the one linux-image-amd64 depends on (as the QEMU tests).
node_kernel() {
  local kver
  kver=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null | grep -o 'linux-image-[0-9][^ ,]*' | head -n 1 |
    sed 's/^linux-image-//')
  [ -n "$kver" ] || die "linux-image-amd64 is not installed: apt-get install -y linux-image-amd64"
  [ -d "/lib/modules/$kver" ] || die "/lib/modules/$kver is missing: apt-get install --reinstall linux-image-$kver"
  echo "$kver"
}

# What decides a variant's content, as one word.
variant_key() {
  local arch; arch=$(dpkg --print-architecture)
  case "$1" in
    tiny)
      local p v key="tiny-$arch"
      for p in busybox-static libcap2-bin attr acl iputils-ping util-linux libc6; do
        v=$(installed_version "$p")
        [ -n "$v" ] || die "$p is not installed: apt-get install -y $p (scripts/test.sh does)"
        key="$key-${p}_$v"
      done
      echo "$key"
      ;;
    selinux)
      local policy basics deb
      policy=$(apt_candidate selinux-policy-default)
      basics=$(apt_candidate selinux-basics)
      deb=$(installed_version debootstrap)
      [ -n "$deb" ] || die "debootstrap is not installed: apt-get install -y debootstrap"
      [ -n "$policy" ] || die "apt knows no selinux-policy-default (run apt-get update)"
      echo "selinux-$SUITE-$arch-selinux-policy-default_$policy-selinux-basics_$basics-debootstrap_$deb"
      ;;
    os)
      local ci ssh sd deb
      ci=$(apt_candidate cloud-init)
      ssh=$(apt_candidate openssh-server)
      sd=$(apt_candidate systemd)
      deb=$(installed_version debootstrap)
      [ -n "$deb" ] || die "debootstrap is not installed: apt-get install -y debootstrap"
      [ -n "$ci" ] || die "apt knows no cloud-init (run apt-get update)"
      echo "os-$SUITE-$arch-cloud-init_$ci-openssh-server_$ssh-systemd_$sd-kernel_$(installed_version "linux-image-$(node_kernel)")-debootstrap_$deb"
      ;;
  esac
}

key="$(variant_key "$variant")-r${RECIPE[$variant]}"
key=${key//[^A-Za-z0-9._+-]/_}
tarball="$CACHE_DIR/node-image-$key.tar.zst"
if [ -f "$tarball" ] || $print_only; then
  echo "$tarball"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "must run as root (owners, device nodes, security.* attributes): sudo $0 $variant"
command -v zstd >/dev/null || die "zstd is not installed: apt-get install -y zstd"
command -v setfattr >/dev/null || die "setfattr is not installed: apt-get install -y attr"
command -v setfacl >/dev/null || die "setfacl is not installed: apt-get install -y acl"
command -v setcap >/dev/null || die "setcap is not installed: apt-get install -y libcap2-bin"

# A binary of this machine and the libraries ldd names, at the same paths.
copy_with_libs() {
  local bin=$1 lib
  mkdir -p "$root$(dirname "$bin")"
  cp -L "$bin" "$root$bin"
  for lib in $(ldd "$bin" | awk '/=>/ { print $3 } /^[ \t]*\// { print $1 }'); do
    [ -e "$root$lib" ] && continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

build_tiny() {
  local d
  for d in bin sbin usr/bin usr/sbin etc srv proc sys dev run tmp; do mkdir -p "$root/$d"; done
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  for d in sh cat echo ls stat sed grep tr head mount poweroff sleep; do ln -s busybox "$root/bin/$d"; done
  copy_with_libs /usr/sbin/getcap
  copy_with_libs /usr/bin/getfattr
  copy_with_libs /usr/bin/getfacl
  copy_with_libs /usr/bin/setpriv
  copy_with_libs /usr/bin/ping
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\nalice:x:1000:1000::/srv:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\nalice:x:1000:\n' >"$root/etc/group"
  printf 'root:*:19000:0:99999:7:::\n' >"$root/etc/shadow"
  chmod 0640 "$root/etc/shadow"
  echo tiny-xattr-1 >"$root/etc/image-id"
  # What the tests look for: a file capability, labels, an ACL, a user.* attribute.
  setcap cap_net_raw+ep "$root/usr/bin/ping"
  setfattr -n security.selinux -v system_u:object_r:shadow_t:s0 "$root/etc/shadow"
  setfattr -n security.selinux -v system_u:object_r:ping_exec_t:s0 "$root/usr/bin/ping"
  setfattr -h -n security.selinux -v system_u:object_r:bin_t:s0 "$root/bin/sh"
  setfattr -n security.selinux -v system_u:object_r:etc_t:s0 "$root/etc"
  echo "shared notes" >"$root/srv/acl-test"
  chmod 0640 "$root/srv/acl-test"
  setfacl -m u:1000:r "$root/srv/acl-test"
  setfattr -n user.ferry-test -v kept-from-6.6 "$root/srv/acl-test"
  cat >"$root/sbin/init" <<'EOF'
#!/bin/sh
# The tiny test image's init: what the booted root holds, one IMAGE-* line each, then
# power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
echo "IMAGE-INIT: pid $$ root $(stat -f -c %T /) image $(cat /etc/image-id)"
/usr/sbin/getcap /usr/bin/ping | sed 's/^/IMAGE-GETCAP: /'
getfattr -h -d -m - /etc/shadow /usr/bin/ping /bin/sh /etc /srv/acl-test 2>&1 | grep -v '^$' | sed 's/^/IMAGE-XATTR: /'
getfacl -n /srv/acl-test 2>&1 | grep -v '^$' | sed 's/^/IMAGE-ACL: /'
# Full paths: busybox's shell runs its own setpriv and ping applets before any in PATH.
if /usr/bin/setpriv --reuid 65534 --regid 65534 --clear-groups /usr/bin/ping -c 1 -W 2 127.0.0.1 >/tmp/ping.log 2>&1; then
  echo "IMAGE-PING: an unprivileged ping works"
else
  echo "IMAGE-PING: failed: $(tr '\n' ' ' </tmp/ping.log)"
fi
[ -f /run/ferry/seed/meta-data ] && echo "IMAGE-SEED: $(tr '\n' ' ' </run/ferry/seed/meta-data)"
[ -e /init ] || echo "IMAGE-INIT: the initramfs is gone"
echo "IMAGE-DONE"
poweroff -f
EOF
  chmod 0755 "$root/sbin/init"
}

build_selinux() {
  command -v setfiles >/dev/null || die "setfiles is not installed: apt-get install -y policycoreutils"
  debootstrap_root selinux-basics selinux-policy-default selinux-utils policycoreutils libcap2-bin attr acl \
    iputils-ping busybox-static
  say "configuring and labelling (setfiles)"
  rm -f "$root/.autorelabel"
  echo localhost >"$root/etc/hostname"
  sed -i 's/^SELINUX=.*/SELINUX=enforcing/; s/^SELINUXTYPE=.*/SELINUXTYPE=default/' "$root/etc/selinux/config"
  grep -q '^SELINUX=enforcing' "$root/etc/selinux/config" || die "no SELINUX= line in the image's /etc/selinux/config"
  ls "$root"/etc/selinux/default/policy/policy.* >/dev/null 2>&1 ||
    die "selinux-policy-default built no policy in /etc/selinux/default/policy (see $work/apt.log)"
  echo selinux-1 >"$root/etc/image-id"
  mkdir -p "$root/usr/local/sbin"
  cat >"$root/usr/local/sbin/ferry-selinux-check" <<'EOF'
#!/bin/sh
# The SELinux test image's check (boot with init=/usr/local/sbin/ferry-selinux-check):
# one SELINUX-CHECK line each, then power off. Nothing here relabels anything.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
echo "SELINUX-CHECK: getenforce $(getenforce 2>&1)"
echo "SELINUX-CHECK: shadow $(ls -Z /etc/shadow 2>&1)"
echo "SELINUX-CHECK: ping $(ls -Z /usr/bin/ping 2>&1)"
echo "SELINUX-CHECK: getcap $(getcap /usr/bin/ping 2>&1)"
echo "SELINUX-CHECK: context $(id -Z 2>&1)"
echo "SELINUX-CHECK: root $(stat -f -c %T / 2>&1) image $(cat /etc/image-id)"
if [ -e /.autorelabel ]; then echo "SELINUX-CHECK: autorelabel present"; else echo "SELINUX-CHECK: autorelabel absent"; fi
echo "SELINUX-CHECK: done"
busybox poweroff -f
EOF
  chmod 0755 "$root/usr/local/sbin/ferry-selinux-check"
  remove_docs
  # Label the tree as the image's own policy says, here and once: the node boots with
  # these labels and relabels nothing.
  setfiles -r "$root" -c "$(ls "$root"/etc/selinux/default/policy/policy.* | sort -V | tail -n 1)" \
    "$root/etc/selinux/default/contexts/files/file_contexts" "$root" >"$work/setfiles.log" 2>&1 ||
    { tail -n 30 "$work/setfiles.log" >&2; die "setfiles failed (log above)"; }
  local label
  label=$(getfattr --only-values -n security.selinux "$root/etc/shadow" 2>/dev/null | tr -d '\0')
  case "$label" in
    *:shadow_t:*) ;;
    *) die "setfiles did not label /etc/shadow shadow_t (it has '${label}')" ;;
  esac
}

build_os() {
  local kver m f
  kver=$(node_kernel)
  debootstrap_root systemd systemd-sysv udev dbus cloud-init openssh-server ifupdown isc-dhcp-client iproute2 kmod \
    procps python3 sudo
  grep -q '^cloud-init 22\.4' "$work/manifest" || die "the image's cloud-init is not 22.4: $(grep '^cloud-init ' "$work/manifest")"
  say "configuring: no keys, no passwords; modules for kernel $kver"
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
  for m in 8021q; do
    for f in $(modprobe -S "$kver" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'); do
      mkdir -p "$root$(dirname "$f")"
      cp "$f" "$root$f"
    done
  done
  cp "/lib/modules/$kver"/modules.order "/lib/modules/$kver"/modules.builtin* "$root/lib/modules/$kver/" 2>/dev/null || true
  depmod -b "$root" "$kver"
  remove_docs
  rm -rf "$root"/usr/share/locale/* "$root"/var/cache/debconf/*-old "$root"/var/lib/cloud/*
}

started=$(date +%s)
say "building $tarball"
begin_build node-image
"build_$variant"
# --xattrs-include='*': GNU tar keeps only user.* without it.
pack_root "$tarball" "node-image-$variant-*.tar.zst" --xattrs --xattrs-include='*' --acls
