#!/usr/bin/python3
# ferry: certify this node's SSH host keys through its tunnel (part of ferry's default
# vendor-data; cloud-init runs it as root before phone_home closes the tunnel). Only the
# public keys are sent; ferry answers with host certificates for the names its
# inventory gives this node. Then sshd presents them (a drop-in with HostCertificate)
# and trusts the cluster's user CA if it has one (TrustedUserCAKeys), and this node's
# own ssh trusts ferry's host CA and refuses the keys ferry revoked.
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

C = json.loads(@CONFIG@)


def call(path, data=None):
    last = None
    for attempt in range(6):
        req = urllib.request.Request(C["datasource"] + path, data=data, headers={"Content-Type": "text/plain"})
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.read().decode()
        except urllib.error.HTTPError as e:
            last = "HTTP %d: %s" % (e.code, e.read().decode(errors="replace").strip())
            if e.code != 429 and e.code < 500:
                break
        except OSError as e:
            last = str(e)
        time.sleep(min(2 ** attempt, 10))
    sys.exit("ferry: %s%s: %s" % (C["datasource"], path, last))


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".ferry-tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


pubs = [p for p in ("/etc/ssh/ssh_host_%s_key.pub" % t for t in C["types"]) if os.path.exists(p)]
if not pubs:
    sys.exit("ferry: no SSH host keys in /etc/ssh to certify")
keys = "".join(open(p).read().strip() + "\n" for p in pubs)
certificates = call(C["certify"], keys.encode()).splitlines()
if len(certificates) != len(pubs):
    sys.exit("ferry: asked for %d certificates, got %d" % (len(pubs), len(certificates)))
paths = []
for pub, certificate in zip(pubs, certificates):
    path = pub[: -len(".pub")] + "-cert.pub"
    write(path, certificate + "\n")
    paths.append(path)
drop_in = C["sshd_drop_in_header"] + "".join("HostCertificate %s\n" % p for p in paths)
# The cluster's user CAs, if it has any: admins log in with short-lived user certificates.
user_cas = call(C["user_ca_keys"])
if user_cas.strip():
    write(C["user_ca_keys_file"], user_cas)
    drop_in += C["sshd_user_ca"]
write("/etc/ssh/" + C["sshd_drop_in_name"], drop_in)
write(C["known_hosts_file"], call(C["known_hosts"]))
write(C["revoked_keys_file"], call(C["revoked_keys"]))
write("/etc/ssh/" + C["ssh_drop_in_name"], C["ssh_drop_in"])
print("ferry: SSH host certificates: " + ", ".join(paths))
if os.path.isdir("/run/systemd/system"):
    subprocess.call(["systemctl", "try-reload-or-restart", "ssh.service", "sshd.service"])
