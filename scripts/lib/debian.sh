# Sourced by the scripts that build Debian roots (cloud-init-chroot.sh, package-root.sh,
# node-image.sh): the machine's Debian mirrors and the shared steps of a cached build.

# "URI SUITE" for every deb entry of the apt sources, one-line and deb822 formats.
apt_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" {
      i = 2
      if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      print $i, $(i + 1)
    }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush(   i, j) {
        if (types ~ /(^| )deb( |$)/ && enabled != "no")
          for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) print u[i], s[j]
        types = ""; enabled = ""; nu = 0; ns = 0
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
        if (key == "types") types = $0
        else if (key == "uris") nu = split($0, u, /[ \t]+/)
        else if (key == "suites") ns = split($0, s, /[ \t]+/)
        else if (key == "enabled") enabled = tolower($0)
      }
      END { flush() }' "$f"
  done
}

# The first configured URI serving suite $1.
mirror_for() { apt_sources | awk -v s="$1" '$2 == s && $1 ~ /^(https?|file):/ { print $1; exit }' | sed 's:/*$::'; }

# What follows builds a cached Debian root. The sourcing script defines say, die, SUITE
# and CACHE_DIR first.

# Runs "$@" in a private mount namespace: no mount of a build survives a failure or an
# interrupt on the host.
in_private_ns() { unshare --mount --propagation private "$@"; }

# The version apt would install of package $1, or nothing.
apt_candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" { print $2 }'; }

# The version of package $1 installed on this machine, or nothing.
installed_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# Sets `work` (a new directory in CACHE_DIR, removed when the script exits) and `root`
# (an empty directory in it). $1 names the build.
begin_build() {
  mkdir -p "$CACHE_DIR"
  work=$(mktemp -d "$CACHE_DIR/.$1.XXXXXX")
  trap 'rm -rf --one-file-system "$work"' EXIT
  root="$work/root"
  mkdir -p "$root"
}

# debootstrap --variant=minbase SUITE into $root from this machine's mirror (with the
# suite's updates and security entries), then apt-get install "$@" there with no
# service started; leaves the package list in $work/manifest. Logs in $work.
debootstrap_root() {
  command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"
  local mirror updates security
  mirror="${FERRY_DEBIAN_MIRROR:-$(mirror_for "$SUITE")}"
  [ -n "$mirror" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list*: set FERRY_DEBIAN_MIRROR=URL"
  updates=$(mirror_for "$SUITE-updates")
  security=$(mirror_for "$SUITE-security")
  say "debootstrap --variant=minbase $SUITE from $mirror (about a minute)"
  in_private_ns debootstrap --variant=minbase --arch="$(dpkg --print-architecture)" "$SUITE" "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  {
    echo "deb $mirror $SUITE main"
    [ -z "$updates" ] || echo "deb $updates $SUITE-updates main"
    [ -z "$security" ] || echo "deb $security $SUITE-security main"
  } >"$root/etc/apt/sources.list"
  # No service starts inside the root during the installation.
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  say "apt-get install $*"
  in_private_ns sh -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mount --bind /dev "$root/dev"
    chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 apt-get update -qq
    chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 \
      apt-get install -y -qq --no-install-recommends "$@"
  ' sh "$root" "$@" >"$work/apt.log" 2>&1 ||
    { tail -n 30 "$work/apt.log" >&2
      die "installing packages in the root failed (log above); if a version is no longer on the mirror, run apt-get update on this machine first"; }
  rm -f "$root/usr/sbin/policy-rc.d"
  : >"$root/etc/resolv.conf"
  chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' >"$work/manifest"
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log "$root"/var/log/apt/*
}

# What a test root needs no copy of.
remove_docs() { rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*; }

# Packs $root into $1 (tar.zst; more tar options in "$@" after it), with $work/manifest
# beside it if there is one, removes the cached archives matching the glob
# CACHE_DIR/$2 that are not $1 (earlier keys are never used again), and prints $1.
# `started` is when the build began (seconds).
pack_root() {
  local tarball=$1 glob=$2 old
  shift 2
  say "packing ($(du -sh "$root" | cut -f1))"
  tar --create --zstd --numeric-owner --one-file-system "$@" -C "$root" --file "$work/root.tar.zst" .
  [ ! -f "$work/manifest" ] || mv "$work/manifest" "${tarball%.tar.zst}.manifest"
  mv "$work/root.tar.zst" "$tarball"
  for old in "$CACHE_DIR"/$glob; do
    [ "$old" = "$tarball" ] || [ ! -e "$old" ] || { say "removing the outdated $old"; rm -f "$old" "${old%.tar.zst}.manifest"; }
  done
  say "done in $(($(date +%s) - started)) s: $tarball ($(du -h "$tarball" | cut -f1))"
  echo "$tarball"
}
