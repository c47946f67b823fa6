# Sourced by the scripts that build Debian roots (cloud-init-chroot.sh, package-root.sh,
# node-image.sh, node-os-image.sh): where this machine's apt gets Debian from.

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
