#!/usr/bin/env python3
"""Splits a `perf record` of the ferry server during `ferry bench storm` into the
storm's kinds of work, from each sample's thread and own symbol:

    perf record -F 499 -g -p SERVER_PID -o srv.data -- sleep 30
    perf report -i srv.data --no-children --sort comm,dso,sym -F overhead,comm,dso,sym \
        --stdio 2>/dev/null | scripts/storm-perf-split.py

handshake: X25519 and BLAKE2s in the WireGuard device's threads (the userspace
device's are named wg-<role>-IFACE; wireguard-go is its own process,
`ferry bench storm --backend wireguard-go`: profile that pid and its
`curve25519`/`blake2s` symbols count the same); packet path: the rest of those
threads (ChaCha20-Poly1305, TUN and UDP system calls, the device's loops); enrollment
X25519: the asset-tag proof check on the runtime; HTTP and logic: the rest of
tokio's workers; store: SQLite's writer thread and sqlx's connection threads."""
import re
import sys
from collections import defaultdict

CRYPTO_HANDSHAKE = re.compile(r"curve25519|x25519|montgomery|FieldElement|blake2|Blake2", re.I)
DEVICE_THREAD = re.compile(r"^(wg-|wireguard-go)")

totals = defaultdict(float)
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if not m:
        continue
    pct, comm, _dso, _kind, sym = float(m[1]), m[2], m[3], m[4], m[5]
    if DEVICE_THREAD.match(comm):
        kind = "wireguard: handshakes" if CRYPTO_HANDSHAKE.search(sym) else "wireguard: packet path"
    elif comm.startswith("tokio-r"):
        kind = "runtime: enrollment X25519" if CRYPTO_HANDSHAKE.search(sym) else "runtime: HTTP and logic"
    elif comm.startswith(("ferry-sqlite", "sqlx")):
        kind = "store"
    else:
        kind = "other"
    totals[kind] += pct
for kind, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
    print(f"{pct:6.1f}%  {kind}")
