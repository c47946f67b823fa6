#!/usr/bin/env python3
"""Writes the seed corpus: a few valid inputs per fuzz target, so that libFuzzer starts
from real structure (cloud-init's phone-home form, swtpm's TPM structures, wireguard-go's
UAPI replies, ...). Run from anywhere: python3 fuzz/seeds/generate.py

Needs ssh-keygen (host keys for the phone-home form) and openssl (DER forms of the
fixture CAs). The output is committed; rerun only to change the seeds (the phone_home
host keys are new on every run: `git checkout fuzz/seeds/phone_home` keeps the old ones).
"""
import base64
import json
import os
import subprocess
import tempfile
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "..", "crates", "ferry-attest", "testdata")


def fixture(name):
    with open(os.path.join(TESTDATA, name), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64(b):
    return base64.b64encode(b).decode()


def inner(tpm2b):
    """TPM2B_PUBLIC -> TPMT_PUBLIC (drop the 16-bit size)."""
    size = int.from_bytes(tpm2b[:2], "big")
    assert size == len(tpm2b) - 2
    return tpm2b[2:]


WG_KEY = b64(bytes(range(32)))          # any 32 bytes are a WireGuard public key
NONCE = b64(bytes(range(100, 132)))
EK_PUB, AK_PUB = fixture("ek.pub"), fixture("ak.pub")
QUOTE_MSG, QUOTE_SIG = fixture("quote.msg"), fixture("quote.sig")[6:]  # TPMT_SIGNATURE header off

# 1. hostlist
for i, s in enumerate([
    "n[001-128]", "n[1-4,7]", "gpu[01-02]-ib,login1", "r[1-2]n[1-2]", "n1, n2 ,n1",
    "n[8-11]", "rack[1-4]-node[001-016]", "n[00001-65536]",
]):
    write("hostlist", f"seed-{i}", s)

# 2. net_addr: MAC, IP, count, netmask, interface name (one per line)
for i, s in enumerate([
    "52:54:00:12:34:56\n10.0.1.1\n128\n255.255.0.0\neth0",
    "52-54-00-AB-cd-01\nfd00::ffff\n2\n255.255.252.0\nib0.8001",
    "00:00:00:00:00:00\n255.255.255.254\n3\n0.0.0.0\nenp1s0f0",
    "ff:ff:ff:ff:ff:ff\nffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe\n2\n255.255.255.255\nbond0",
]):
    write("net_addr", f"seed-{i}", s)

# 3. phone_home: what cloud-init's phone_home module posts (cc_phone_home.py: the key
# files as read, "N/A" for missing ones, urlencoded by requests), and the JSON form.
with tempfile.TemporaryDirectory() as tmp:
    keys = {}
    for kind, args in [("rsa", ["-t", "rsa", "-b", "3072"]), ("ecdsa", ["-t", "ecdsa"]), ("ed25519", ["-t", "ed25519"])]:
        path = os.path.join(tmp, f"ssh_host_{kind}_key")
        subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", "root@n001", "-f", path] + args, check=True)
        with open(path + ".pub") as f:
            keys[kind] = f.read()
form = {
    "instance_id": "n001",
    "hostname": "n001",
    "fqdn": "n001.cluster.example",
    "pub_key_dsa": "N/A",
    "pub_key_rsa": keys["rsa"],
    "pub_key_ecdsa": keys["ecdsa"],
    "pub_key_ed25519": keys["ed25519"],
}
write("phone_home", "cloud-init-22.4-form", urllib.parse.urlencode(form))
write("phone_home", "cloud-init-minimal-form", urllib.parse.urlencode(
    {"instance_id": "N/A", "hostname": "n002", "fqdn": "N/A", "pub_key_dsa": "N/A", "pub_key_rsa": "N/A",
     "pub_key_ecdsa": "N/A", "pub_key_ed25519": keys["ed25519"]}))
write("phone_home", "agent-json", json.dumps({k: v for k, v in form.items() if v != "N/A"}))

# 4. enroll_request: what ferry agent sends
write("enroll_request", "network-only", json.dumps(
    {"mac": "52:54:00:12:34:56", "public_key": WG_KEY, "nonce": NONCE, "mode": "fetch"}))
write("enroll_request", "asset-tag", json.dumps(
    {"mac": "52-54-00-12-34-56", "public_key": WG_KEY, "nonce": NONCE,
     "proofs": {"asset_tag_v2": b64(bytes(range(32)))}}))
write("enroll_request", "asset-tag-v1", json.dumps(
    {"mac": "52-54-00-12-34-56", "public_key": WG_KEY, "nonce": NONCE,
     "proofs": {"asset_tag": b64(bytes(range(32)))}}))
write("enroll_request", "tpm", json.dumps(
    {"mac": "52:54:00:12:34:56", "public_key": WG_KEY, "nonce": NONCE, "mode": "cloud-init",
     "proofs": {"tpm": {"secret": b64(bytes(32)), "attest": b64(QUOTE_MSG), "signature": b64(QUOTE_SIG),
                        "pcr_values": {"7": "ab" * 32}}}}))

# 5. tpm_credential_request
req = {"mac": "52:54:00:12:34:56", "public_key": WG_KEY, "nonce": NONCE,
       "ek_public": b64(inner(EK_PUB)), "ak_public": b64(inner(AK_PUB))}
write("tpm_credential_request", "without-cert", json.dumps(req))
write("tpm_credential_request", "with-cert", json.dumps(dict(req, ek_certificate=b64(fixture("ek.der")))))

# 6. uapi_reply: a wireguard-go get=1 reply, a boringtun one, set=1 replies
PRIV = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a"
PEER = "b85996fecc9c7f1fc6d2572a76eda11d59bcd20be8e543b15ce4bd85a8e75a33"
write("uapi_reply", "wireguard-go-get", (
    f"private_key={PRIV}\nlisten_port=51820\nfwmark=0\n"
    f"public_key={PEER}\npreshared_key={'00' * 32}\nprotocol_version=1\n"
    "endpoint=[fe80::1%2]:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n"
    "tx_bytes=38333\nrx_bytes=2224\npersistent_keepalive_interval=25\nallowed_ip=100.64.0.2/32\n"
    f"public_key={'58' * 32}\nendpoint=10.0.0.7:3233\npersistent_keepalive_interval=0\n"
    "allowed_ip=100.64.0.3/32\nallowed_ip=fd00::/64\nlast_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\nrx_bytes=0\ntx_bytes=0\nerrno=0\n\n"))
write("uapi_reply", "boringtun-get", (
    f"own_public_key={PEER}\nlisten_port=0\nfwmark=3\npublic_key={PEER}\n"
    "last_handshake_time_sec=10\nlast_handshake_time_nsec=0\nrx_bytes=1\ntx_bytes=2\nerrno=0\n\n"))
write("uapi_reply", "empty-get", "errno=0\n\n")
write("uapi_reply", "set-error", "errno=-22\n\n")

# 7. kernel_cmdline: what ferry's iPXE/GRUB scripts put there, and odd forms
KEY = b64(bytes(range(32)))
for i, s in enumerate([
    f"BOOT_IMAGE=/vmlinuz quiet console=ttyS0,115200 root=tmpfs ferry.server=http://10.0.0.1:8470 "
    f"ferry.pubkey={KEY} ferry.node=n001 ds=nocloud-net;s=http://100.64.0.1:8471/\n",
    f"initrd=node-initrd.img ferry.server=http://10.0.0.1:8470,http://[fd00::1]:8470/ ferry.pubkey={KEY} "
    "ferry.tpm=device:/dev/tpm0 -- single",
    f'a="b c" "ferry.node=n002" ferry.tpm ferry.tpm=swtpm:host=127.0.0.1,port=2321 ferry.pubkey="{KEY}"',
    "ferry.server= ferry.node ferry.tpm=mssim:port=2321 x=\"unbalanced",
    f"ferry.server=https://10.0.0.1:8443 ferry.tls=sha256:{'ab:' * 31}ab ferry.pubkey={KEY} ferry.node=n003",
]):
    write("kernel_cmdline", f"seed-{i}", s)

# 8. tpm_public: swtpm's EK and AK, as files (TPM2B) and as sent (TPMT)
write("tpm_public", "ek.pub", EK_PUB)
write("tpm_public", "ak.pub", AK_PUB)
write("tpm_public", "ek.tpmt", inner(EK_PUB))
write("tpm_public", "ak.tpmt", inner(AK_PUB))

# 9. tpm_quote
write("tpm_quote", "quote.msg", QUOTE_MSG)

# 10. ek_certificate: the EK certificate, and the CAs in DER
write("ek_certificate", "ek.der", fixture("ek.der"))
for name in ["ca-issuer", "ca-root"]:
    der = subprocess.run(["openssl", "x509", "-outform", "der", "-in", os.path.join(TESTDATA, name + ".pem")],
                         check=True, capture_output=True).stdout
    write("ek_certificate", name + ".der", der)

# 11. pem
write("pem", "ca-issuer.pem", fixture("ca-issuer.pem"))
write("pem", "ca-root.pem", fixture("ca-root.pem"))
write("pem", "ca-bundle.pem", fixture("ca-root.pem") + fixture("ca-issuer.pem"))
write("pem", "ek.pem", fixture("ek.pem"))

# 12. settings: a node layer with every field, a profile, patches
node = {
    "comment": "rack 1, slot 1",
    "image": "rocky9",
    "kernel": "6.1.0-28-amd64",
    "kernel_args": ["quiet", "console=ttyS0,115200", "~console=tty0"],
    "root": "tmpfs",
    "identity": ["tpm", "network", "~asset-tag"],
    "tags": {"site": "hq", "rack": "r1", "~old": ""},
    "interfaces": {
        "eth0": {"mac": "52:54:00:12:34:56", "ipv4": "10.0.1.1", "netmask": "255.255.0.0",
                 "gateway": "10.0.0.1", "ipv6": "fd00::1", "ipv6_prefix": 64, "vlan": 100, "mtu": 9000,
                 "primary": True},
        "ib0": {"ipv4": "10.1.1.1", "netmask": "255.255.252.0", "mtu": 65520},
        "~eth1": {},
    },
    "cloud_init": {"meta_data": {"region": "hq", "nested": {"a": [1, 2.5, None, True]}},
                   "user_data": "#cloud-config\nruncmd:\n  - echo {{ node }}\n",
                   "vendor_data": "#cloud-config\n{}\n", "network_config": "version: 2\n"},
    "tunnel_ttl_secs": 600,
    "boot_asset_gate": True,
    "tpm_pcrs": {"7": "ab" * 32, "~0": ""},
}
write("settings", "node-full.json", json.dumps(node, indent=1))
write("settings", "profile.json", json.dumps(
    {"kernel_args": ["quiet"], "root": "ramfs", "interfaces": {"eth0": {"netmask": "255.255.0.0", "mtu": 9000}},
     "tags": {"site": "hq"}}))
write("settings", "patch.json", json.dumps(
    {"set": {"tags": {"rack": "r2"}, "interfaces": {"eth0": {"mtu": 1500}}},
     "unset": [["comment"], ["interfaces", "ib0"], ["cloud_init", "meta_data", "region"]]}))
write("settings", "empty.json", "{}")

# 13. patch_field: what `ferry node unset` takes
for i, s in enumerate([
    "comment", "kernel-args", "tag.rack", "tags", "netdev.eth0.mtu", "netdev.eth0", "interface.ib-0.ipv6-prefix",
    "meta-data.region", "user-data", "tpm-pcr.7", "tunnel-ttl", "profiles", "asset-tag", "boot-asset-gate",
]):
    write("patch_field", f"seed-{i}", s)

# 14. range_header: 8 bytes of file length (low two bits 3: the length is the value >> 2),
# then a Range header as curl, iPXE and browsers send it
def file_len(n):
    return ((n << 2) | 3).to_bytes(8, "little")

for i, (n, value) in enumerate([
    (1_000_000, "bytes=0-1023"), (1_000_000, "bytes=1000-"), (1_000_000, "bytes=-500"),
    (1, "bytes=0-0"), (100, "bytes=0-1,5-6"), (100, "bytes=999999999999-"), (100, "items=0-1"),
    (0, "bytes=0-"), (2**40, "bytes=1099511627775-1099511627775"),
]):
    write("range_header", f"seed-{i}", file_len(n) + value.encode())

# 15. forwarded_for: peer index, trusted-proxy bit mask (into the target's address
# table: 198.18.0.1, 198.18.0.10, 10.0.0.1, 10.0.0.9, 127.0.0.1, ::1, fd00::1,
# 2001:db8::5), then header lines
for i, (peer, trusted, lines) in enumerate([
    (2, 0b100, "X-Forwarded-For: 10.0.0.9, 198.18.0.10\n"),
    (2, 0b101, "X-Forwarded-For: 198.18.0.10\nX-Forwarded-For: 198.18.0.1\nForwarded: for=127.0.0.1\n"),
    (3, 0b000, "X-Forwarded-For: 10.0.0.1\nX-Real-IP: ::1\n"),
    (6, 0b1000000, "x-forwarded-for: 2001:db8::5, fd00::1\nForwarded: for=\"[::1]\";proto=http\n"),
    (2, 0b100, "X-Forwarded-For: garbage, 10.0.0.9\n"),
]):
    write("forwarded_for", f"seed-{i}", bytes([peer, trusted]) + lines.encode())

# 16. server_url: ferry.server= and ferry.tls= values as the kernel command line carries them
for i, s in enumerate([
    "http://10.0.0.1:8470,http://10.0.0.2:8470",
    "https://[fd00::1]:8443/ferry/, boot.example:9000",
    "https://prov1.cluster.example",
    f"sha256:{'ab' * 32}",
    f"sha256:{'AB:' * 31}AB,{'cd' * 32}",
]):
    write("server_url", f"seed-{i}", s)

# 17. agent_answers: byte 0 picks the answer (0 challenge, 1 enrollment, 2 TPM
# credential challenge, 3 error body, 4 Retry-After), then the answer as ferry sends it
answers = [
    (0, json.dumps({"nonce": NONCE, "expires_in_secs": 60})),
    (1, json.dumps({
        "node": "n001", "server_public_key": WG_KEY, "endpoint": "198.18.0.1:51820",
        "node_address": "100.64.0.2", "prefix_len": 16, "server_address": "100.64.0.1",
        "expires_in_secs": 600, "expires_at": "2030-03-17T12:00:00Z",
        "datasource_url": "http://100.64.0.1:8471/", "phone_home_url": "http://100.64.0.1:8471/phone-home"})),
    (1, json.dumps({
        "node": "n002", "server_public_key": WG_KEY, "endpoint": "[::]:51820",
        "node_address": "fd00:64::2", "prefix_len": 64, "server_address": "fd00:64::1",
        "expires_in_secs": 600, "expires_at": "2030-03-17T12:00:00Z",
        "datasource_url": "http://[fd00:64::1]:8471/", "phone_home_url": "http://[fd00:64::1]:8471/phone-home"})),
    (2, json.dumps({"node": "n001", "credential_blob": b64(bytes(range(68))),
                    "encrypted_secret": b64(bytes(range(256))), "pcrs": [0, 7]})),
    (3, json.dumps({"error": "refused", "kind": "refused"})),
    (3, "<html>\r\n<h1>502 Bad Gateway</h1>\r\n</html>\r\n"),
    (4, "120"),
    (4, "Sun, 06 Nov 1994 08:49:37 GMT"),
]
for i, (which, body) in enumerate(answers):
    write("agent_answers", f"seed-{i}", bytes([which]) + body.encode())

# 18. ssh_host_keys: byte 0 picks the side (0 a node's host public keys as it posts them,
# 1 the server's answer for the target's fixed ed25519 host key), then the text
SSH_FIXED_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM4lMPCWZXzG0eHRDgP8PTRKFJz2nK4R1pI+6VKufZvy root@n1"
with tempfile.TemporaryDirectory() as d:
    keys = []
    for t in ("ed25519", "ecdsa", "rsa"):
        subprocess.run(["ssh-keygen", "-q", "-t", t, "-N", "", "-C", "root@n1", "-f", f"{d}/{t}"], check=True)
        with open(f"{d}/{t}.pub") as f:
            keys.append(f.read())
    write("ssh_host_keys", "seed-0", b"\x00" + "".join(keys).encode())
    write("ssh_host_keys", "seed-1", b"\x00" + keys[0].encode())
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/ca"], check=True)
    with open(f"{d}/host.pub", "w") as f:
        f.write(SSH_FIXED_HOST_KEY + "\n")
    subprocess.run(["ssh-keygen", "-q", "-s", f"{d}/ca", "-h", "-I", "ferry host n1", "-n", "n1,n1.hpc.example",
                    "-V", "+7d", "-z", "42", f"{d}/host.pub"], check=True)
    with open(f"{d}/host-cert.pub") as f:
        write("ssh_host_keys", "seed-2", b"\x01" + f.read().encode())

# 19. tar_stream and tar_unpack: node image archives as `ferry image import` takes them,
# made by GNU tar (PAX with SCHILY.xattr.* attributes and an ACL, a GNU sparse file, a
# GNU long name, hard and symbolic links, a device node when run as root) and by
# Python's tarfile (a PAX record whose binary value holds a newline, as file
# capabilities do); and, for tar_stream, PAX records on their own.
import tarfile  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    root = os.path.join(d, "root")
    os.makedirs(os.path.join(root, "etc", "selinux"))
    os.makedirs(os.path.join(root, "usr", "bin"))
    with open(os.path.join(root, "etc", "selinux", "config"), "w") as f:
        f.write("SELINUX=enforcing\n")
    with open(os.path.join(root, "usr", "bin", "ping"), "wb") as f:
        f.write(b"\x7fELF" + bytes(60))
    os.symlink("../usr/bin/ping", os.path.join(root, "etc", "ping-link"))
    os.link(os.path.join(root, "usr", "bin", "ping"), os.path.join(root, "usr", "bin", "ping6"))
    long_dir = os.path.join(root, "srv", "a" * 60, "b" * 60)
    os.makedirs(long_dir)
    with open(os.path.join(long_dir, "long-name-file"), "w") as f:
        f.write("x\n")
    with open(os.path.join(root, "srv", "sparse"), "wb") as f:
        f.seek(1 << 16)
        f.write(b"end")
    if os.geteuid() == 0:
        os.mknod(os.path.join(root, "null"), 0o20666, os.makedev(1, 3))
    subprocess.run(["setfattr", "-n", "trusted.ferry", "-v", "seed", os.path.join(root, "usr", "bin", "ping")],
                   check=False)
    for name, args in [("gnu-pax", ["--format=pax", "--xattrs", "--xattrs-include=*", "--acls", "--exclude=./srv/sparse"]),
                       ("gnu-sparse", ["--format=gnu", "--sparse"])]:
        out = os.path.join(d, name + ".tar")
        subprocess.run(["tar", "--create", "--numeric-owner", *args, "-C", root, "--file", out, "."], check=True)
        with open(out, "rb") as f:
            data = f.read()
        write("tar_stream", name, data)
        write("tar_unpack", name, data)
    out = os.path.join(d, "capability.tar")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("usr/bin/ping")
        info.size = 4
        info.mode = 0o755
        # cap_net_raw+ep as the kernel stores it: binary, with a 0x0a byte.
        cap = bytes([1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).replace(b"\x20", b"\x0a", 1)
        info.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("latin-1")}
        t.addfile(info, fileobj=__import__("io").BytesIO(b"ELF\n"))
    with open(out, "rb") as f:
        data = f.read()
    write("tar_stream", "capability", data)
    write("tar_unpack", "capability", data)
write("tar_stream", "pax-records", b"27 SCHILY.xattr.user.a=b\nc\n" + b"12 path=x/y\n")

# 20. pg_url: PostgreSQL URLs as admins write them for --store (libpq's multi-host forms)
for i, s in enumerate([
    "postgres://ferry:secret@db/ferry",
    "postgres://ferry@db1:5432,db2:5433/ferry?sslmode=require&target_session_attrs=read-write",
    "postgres://ferry@localhost/ferry?host=/run/postgresql,/run/pg2&port=5432,5433&target_session_attrs=primary",
    "postgresql://u:p%40ss@[fd00::1]:5432,[fd00::2]:5432/db?application_name=ferry",
]):
    write("pg_url", f"seed-{i}", s)
