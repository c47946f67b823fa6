#!/bin/sh
# Run by the packages after every install and upgrade (deb postinst configure, rpm %post):
# the ferry system user and the state directory. Idempotent, and it never removes
# anything: the state (database, sealing key, WireGuard key) survives removal and
# upgrades; delete /var/lib/ferry by hand to forget it.
set -e

if ! getent passwd ferry >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/ferry --no-create-home \
    --shell /usr/sbin/nologin --comment "ferry server" ferry
fi
install -d -m 0700 -o ferry -g ferry /var/lib/ferry
# State written by a `ferry serve` run as root before the service: the service user needs it.
chown -R ferry:ferry /var/lib/ferry
# The configuration may hold a PostgreSQL password: root and the service only.
if [ -f /etc/ferry/ferry.toml ]; then
  chgrp ferry /etc/ferry/ferry.toml
  chmod 0640 /etc/ferry/ferry.toml
fi
# The kernel WireGuard backend: load the module now (modules-load.d does at boot). Without
# it, `backend = "auto"` uses the in-process userspace WireGuard.
modprobe -q wireguard 2>/dev/null || true
exit 0
