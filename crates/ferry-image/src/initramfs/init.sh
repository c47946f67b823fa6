#!/bin/sh
# /init of a ferry node initramfs (written by `ferry image initramfs`; busybox sh).
#
# 1. mounts /proc, /sys, /dev (devtmpfs), /run; loads the kernel modules listed in
#    /lib/ferry/modules (network driver, WireGuard and their dependencies, in order);
# 2. configures the first network interface (or ferry.netdev=NAME) with DHCP (udhcpc);
# 3. with root=tmpfs (or ramfs, initramfs), mounts that file system on /newroot;
# 4. runs `ferry agent --mode fetch --wg-backend kernel [--image-root /newroot]`:
#    enroll, open the WireGuard tunnel, fetch the cloud-init seed into /run/ferry/seed
#    through it, make an SSH host key in /run/ferry/ssh and have it certified by ferry's
#    host CA (ferry.ssh=generate, the default; certify: only keys already there; off),
#    then the image: its root's key and digest through the tunnel, the
#    archive from the provisioning listener, checked (a root that is not the one the
#    tunnel vouched for is refused, exit 7, before anything is unpacked), unpacked into
#    /newroot with its extended attributes (SELinux labels, file capabilities, ACLs;
#    the image's SELinux policy loaded first); phone home, remove the tunnel
#    (ferry.server=, ferry.pubkey=, ferry.node= come from the kernel command line);
# 5. prints `FERRY-RESULT: ok 0` or `FERRY-RESULT: fail <code> (<step>)`, then
#    - ferry.test=poweroff: powers off (tests);
#    - with an image root in /newroot: switches root to its init (init=PATH, default
#      /sbin/init), with /run (and the seed) moved along; an image imported before
#      sealed images brings its root as a second initrd (/rootfs), copied instead;
#    - otherwise (or when a step fails): the seed is removed and the node reboots after
#      30 s to try again (ferry.rescue: a shell on the console instead).
# Every step prints a `ferry-init: ...` line with the time since the kernel started.
# Kernel command line: ferry.log=FILTER (agent log filter), ferry.timeout=DURATION
# (agent's enrollment deadline), ferry.netdev=NAME, ferry.rescue, ferry.debug (trace
# this script).

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mkdir -p /run/ferry /tmp

uptime_s() {
	read -r up _ </proc/uptime
	echo "$up"
}
say() {
	echo "ferry-init: $* [$(uptime_s) s]"
}

ROOT=
TEST=
NEWINIT=/sbin/init
NETDEV=
AGENT_TIMEOUT=
RESCUE=
SSH_KEYS=generate
export FERRY_LOG=info
set -f
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	root=*) ROOT=${arg#root=} ;;
	init=*) NEWINIT=${arg#init=} ;;
	ferry.test=*) TEST=${arg#ferry.test=} ;;
	ferry.netdev=*) NETDEV=${arg#ferry.netdev=} ;;
	ferry.timeout=*) AGENT_TIMEOUT=${arg#ferry.timeout=} ;;
	ferry.log=*) FERRY_LOG=${arg#ferry.log=} ;;
	ferry.ssh=*) SSH_KEYS=${arg#ferry.ssh=} ;;
	ferry.rescue) RESCUE=1 ;;
	ferry.debug) set -x ;;
	esac
done
set +f

KVER=$(uname -r)
say "start: kernel $KVER, $(cat /etc/ferry-initramfs 2>/dev/null)"

# Tests: power off once the result is printed.
halt_if_test() {
	if [ "$TEST" = poweroff ]; then
		say "powering off (ferry.test=poweroff)"
		sync
		poweroff -f
		while :; do sleep 60; done
	fi
}

# The boot cannot go on: never leave the seed (it may hold secrets) to a console;
# reboot to try again, or give a shell with ferry.rescue.
rescue() {
	rm -rf /run/ferry/seed
	echo "ferry-init: $*"
	if [ -n "$RESCUE" ]; then
		echo "ferry-init: rescue shell (ferry.rescue); leaving it reboots the node"
		setsid cttyhack sh
	else
		echo "ferry-init: rebooting in 30 s to try again (ferry.rescue on the kernel command line gives a shell instead)"
		sleep 30
	fi
	reboot -f
	while :; do sleep 60; done
}

fail() {
	step=$1
	code=$2
	shift 2
	say "$step failed: $*"
	echo "FERRY-RESULT: fail $code ($step)"
	halt_if_test
	rescue "boot stopped: $step failed"
}

# Kernel modules, in dependency order.
BUILT_FOR=$(cat /lib/ferry/kernel-version 2>/dev/null)
if [ "$BUILT_FOR" != "$KVER" ]; then
	fail modules 1 "this initramfs holds modules for kernel $BUILT_FOR but kernel $KVER is running: rebuild it with \`ferry image initramfs --kernel-version $KVER\`"
fi
loaded=0
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$KVER/$m" || fail modules 1 "insmod /lib/modules/$KVER/$m"
	loaded=$((loaded + 1))
done </lib/ferry/modules
say "modules loaded ($loaded)"

# Network: the first interface that appears (or ferry.netdev=), configured by DHCP.
IF=$NETDEV
tries=0
while [ -z "$IF" ] || [ ! -e "/sys/class/net/$IF" ]; do
	if [ -z "$NETDEV" ]; then
		for dev in /sys/class/net/*; do
			name=${dev##*/}
			[ "$name" = lo ] || [ ! -e "$dev/device" ] || {
				IF=$name
				break
			}
		done
		[ -n "$IF" ] && break
	fi
	tries=$((tries + 1))
	[ "$tries" -le 100 ] || fail dhcp 1 "no network interface${NETDEV:+ named $NETDEV} appeared within 10 s"
	sleep 0.1
done
ip link set lo up
ip link set "$IF" up
udhcpc -i "$IF" -f -q -n -t 30 -T 1 -s /usr/share/udhcpc/default.script >/run/ferry/udhcpc.log 2>&1 ||
	fail dhcp 1 "no DHCP lease on $IF: $(tail -n 3 /run/ferry/udhcpc.log)"
ADDR=$(ip -4 -o addr show dev "$IF" | while read -r _ _ fam a _; do [ "$fam" = inet ] && echo "$a"; done)
GW=$(ip -4 route show | while read -r to _ gw _; do [ "$to" = default ] && echo "$gw"; done)
say "dhcp ok: $IF $ADDR, router ${GW:-none}"

# The root file system the image goes into: a tmpfs keeps every extended attribute
# (SELinux labels, file capabilities); a ramfs none.
case "$ROOT" in
tmpfs) FSTYPE=tmpfs ;;
ramfs | initramfs) FSTYPE=ramfs ;;
*) FSTYPE= ;;
esac
IMAGE_ARGS=
if [ -n "$FSTYPE" ]; then
	mkdir -p /newroot
	mount -t "$FSTYPE" -o mode=0755 "$FSTYPE" /newroot || fail root 1 "cannot mount a $FSTYPE on /newroot"
	if [ "$FSTYPE" = ramfs ]; then
		say "warning: root=$ROOT is a ramfs, which keeps no extended attributes: SELinux labels and file capabilities are lost (use root=tmpfs)"
	fi
	# An image imported before sealed images carries its root as a second initrd.
	[ -d /rootfs ] || IMAGE_ARGS="--image-root /newroot"
fi

# Enroll, tunnel, fetch, [image,] phone home, tear down. Agent logs go to the console
# through a pipe (plain text); its standard output (the datasource line) to
# /run/ferry/datasource.
say "agent: enrolling (ferry agent --mode fetch --wg-backend kernel${IMAGE_ARGS:+ $IMAGE_ARGS})"
(
	/usr/bin/ferry agent --mode fetch --wg-backend kernel ${AGENT_TIMEOUT:+--timeout "$AGENT_TIMEOUT"} $IMAGE_ARGS \
		--ssh-host-keys "$SSH_KEYS" --ssh-dir /run/ferry/ssh >/run/ferry/datasource
	echo $? >/run/ferry/agent.rc
) 2>&1 | cat
rc=$(cat /run/ferry/agent.rc 2>/dev/null)
[ -n "$rc" ] || rc=1
[ "$rc" = 0 ] || fail agent "$rc" "ferry agent exited with $rc (3 refused, 4 server key mismatch, 5 server unreachable, 6 tunnel, fetch or image failure, 7 image refused: not the image the tunnel vouched for, nothing unpacked)"
say "agent ok: $(cat /run/ferry/datasource)"
if [ -f /run/ferry/seed/meta-data ]; then
	say "meta-data: $(tr '\n' ' ' </run/ferry/seed/meta-data | head -c 400)"
fi
echo "FERRY-RESULT: ok 0"
halt_if_test

# The image: unpacked by the agent into /newroot, or (an image imported before sealed
# images) copied from /rootfs.
[ -n "$FSTYPE" ] || rescue "no root=tmpfs|ramfs|initramfs on the kernel command line: nothing to switch to"
if [ -d /rootfs ]; then
	say "copying the image into a $FSTYPE (an image imported before sealed images: no extended attributes; re-import it)"
	cp -a /rootfs/. /newroot/ || fail root 1 "cannot copy the image into /newroot"
	rm -rf /rootfs
fi
[ -x "/newroot$NEWINIT" ] || [ -L "/newroot$NEWINIT" ] || fail root 1 "the image has no $NEWINIT"
# cloud-init's NoCloud also looks in /var/lib/cloud/seed/nocloud.
if [ -d /newroot/etc/cloud ] && [ -d /run/ferry/seed ]; then
	mkdir -p /newroot/var/lib/cloud/seed/nocloud
	cp -a /run/ferry/seed/. /newroot/var/lib/cloud/seed/nocloud/
fi
# The node's own host key, its certificate and the drop-ins replace the image's keys
# (a key in a shared image is every node's key); the private key leaves /run.
if [ -d /run/ferry/ssh ]; then
	mkdir -p /newroot/etc/ssh
	cp -a /run/ferry/ssh/. /newroot/etc/ssh/ || fail root 1 "cannot copy the SSH host key into /newroot/etc/ssh"
	rm -rf /run/ferry/ssh
	say "ssh: host key and certificate installed in /etc/ssh"
fi
for m in run dev proc sys; do
	mkdir -p "/newroot/$m"
	mount --move "/$m" "/newroot/$m"
done
echo "ferry-init: switching root to $FSTYPE, exec $NEWINIT [$(cut -d' ' -f1 /newroot/proc/uptime) s]"
exec switch_root /newroot "$NEWINIT"
