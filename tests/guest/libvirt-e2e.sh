#!/usr/bin/env bash
# libvirt for real: a private libvirtd (own mount namespace: its /etc/libvirt, /run/libvirt,
# /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are directories of this test;
# no systemd needed) drives QEMU (TCG) on logdisk volumes:
#   1. `logdisk serve` with no volume; `attach vm1`; `virsh define` + `virsh start` of
#      qemu-configs/libvirt-tcg-test.xml; the guest writes, syncs and checksums vda.
#   2. the daemon is killed with -9 and started again with no argument: vm1 comes back on
#      its socket and QEMU reconnects (<reconnect> in the XML, inflight region);
#      `attach vm2` on the restarted daemon, `virsh attach-device --live` of
#      qemu-configs/libvirt-hotplug-disk.xml: the guest writes and checksums vdb.
#   3. `virsh destroy`, detach both; exports of both volumes equal what the guest wrote.
# Needs root, unshare(1), libvirt-daemon + libvirt-daemon-driver-qemu (9.0 on bookworm).
# Usage: tests/guest/libvirt-e2e.sh [--bin PATH] [--keep]
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"
for t in libvirtd virsh unshare cpio gzip; do
    command -v "$t" >/dev/null || { echo "$t not found (scripts/install-test-deps.sh)" >&2; exit 125; }
done
[[ $(id -u) = 0 ]] || { echo "needs root (private mount namespace for libvirtd)" >&2; exit 125; }

T=$(mktemp -d /tmp/logdisk-libvirt-e2e.XXXXXX)
DAEMON=''
LIBVIRTD=''
DOM=logdisk-e2e-$$
URI="qemu:///system?socket=$T/lv/run/libvirt-sock"
vsh() { virsh -q -c "$URI" "$@"; }
cleanup() {
    [[ -n $LIBVIRTD ]] && { vsh destroy "$DOM" >/dev/null 2>&1 || true; kill "$LIBVIRTD" 2>/dev/null || true; wait "$LIBVIRTD" 2>/dev/null || true; }
    [[ -n $DAEMON ]] && kill -9 "$DAEMON" 2>/dev/null || true
    if [[ $KEEP = 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
say() { echo "[libvirt-e2e $(date +%T)] $*"; }
fail() { echo "LIBVIRT E2E FAILED: $*" >&2; [[ -f $T/console.log ]] && tail -n 20 "$T/console.log" >&2; exit 1; }
ld() { "$BIN" --data-dir "$T/data" "$@"; }
wait_for() { # FILE PATTERN TENTHS
    for _ in $(seq "$3"); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    return 1
}

GUEST=$("$HERE/build-guest.sh" | tail -n 1)
say "guest image: $GUEST"

# The guest's initramfs plus /test.sh (as run-guest.sh does).
mkdir -p "$T/ov/etc/logdisk" "$T/ov/root"
cp "$HERE/libvirt-guest.sh" "$T/ov/test.sh"; chmod 755 "$T/ov/test.sh"
: >"$T/ov/etc/logdisk/test.env"
(cd "$T/ov" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -n -1 >"$T/ov.cpio.gz"
cat "$GUEST/initramfs.cpio.gz" "$T/ov.cpio.gz" >"$T/initrd.cpio.gz"

# A private libvirtd. Its QEMU driver resolves the default user and group (libvirt-qemu)
# before reading qemu.conf: they must exist (libvirt-daemon-system would create them).
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd --system --no-create-home --gid libvirt-qemu --shell /usr/sbin/nologin libvirt-qemu
mkdir -p "$T/lv"/{etc,run,lib,cache,log} /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /etc/libvirt
cat >"$T/lv/etc/qemu.conf" <<'CONF'
user = "root"
group = "root"
security_driver = "none"
namespaces = []
stdio_handler = "file"
remember_owner = 0
CONF
: >"$T/lv/etc/libvirtd.conf"
unshare -m --propagation private bash -c "
    mount --bind '$T/lv/etc' /etc/libvirt && mount --bind '$T/lv/run' /run/libvirt &&
    mount --bind '$T/lv/lib' /var/lib/libvirt && mount --bind '$T/lv/cache' /var/cache/libvirt &&
    mount --bind '$T/lv/log' /var/log/libvirt &&
    exec libvirtd --pid-file '$T/lv/run/libvirtd.pid' --config '$T/lv/etc/libvirtd.conf'
" >"$T/libvirtd.log" 2>&1 &
LIBVIRTD=$!
for _ in $(seq 300); do vsh version >/dev/null 2>&1 && break; kill -0 "$LIBVIRTD" 2>/dev/null || break; sleep 0.1; done
vsh version >/dev/null 2>&1 || { cat "$T/libvirtd.log"; fail "libvirtd did not start"; }
say "libvirtd $(vsh version 2>/dev/null | grep -o 'libvirt [0-9.]*' | head -1) up (private namespace)"

# logdisk with no volume; vm1 attached before the VM starts.
ld volume create vm1 --size 64M >/dev/null
ld volume create vm2 --size 64M >/dev/null
"$BIN" --data-dir "$T/data" serve --socket-dir "$T/socks" --num-queues 1 >"$T/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 300); do [[ -S $T/data/control.sock ]] && break; sleep 0.1; done
ld attach vm1 >/dev/null || fail "attach vm1"

CMDLINE="console=ttyS0 panic=-1 mitigations=off cryptomgr.notests no_timer_check tsc=reliable 8250.nr_uarts=1 random.trust_cpu=on logdisk.disks=1 loglevel=4"
KERNEL="$GUEST/vmlinuz"
sed -e "s|@NAME@|$DOM|" -e "s|@KERNEL@|$KERNEL|" -e "s|@INITRD@|$T/initrd.cpio.gz|" \
    -e "s|@CMDLINE@|$CMDLINE|" -e "s|@SOCKET@|$T/socks/vm1.sock|" -e "s|@CONSOLE@|$T/console.log|" \
    "$ROOT/qemu-configs/libvirt-tcg-test.xml" >"$T/domain.xml"
vsh define "$T/domain.xml" >/dev/null || fail "virsh define"
vsh start "$DOM" >/dev/null || { tail -n 20 "$T"/lv/log/qemu/*.log 2>/dev/null; fail "virsh start"; }
say "domain started; waiting for the guest to write vda"
wait_for "$T/console.log" WAIT-HOTPLUG 3000 || fail "guest did not finish vda"
grep -q "CHECK FAILED" "$T/console.log" && fail "guest check"

# The daemon dies under the running domain and comes back by itself (recorded attachment);
# libvirt's <reconnect> brings QEMU back to it (inflight region handed over).
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
rm -f "$T/socks/vm1.sock" "$T/data/control.sock"
"$BIN" --data-dir "$T/data" serve --socket-dir "$T/socks" --num-queues 1 >>"$T/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 300); do [[ -S $T/data/control.sock ]] && break; sleep 0.1; done
for _ in $(seq 300); do ld volume list 2>/dev/null | grep -qE '^vm1 .* yes +yes ' && break; sleep 0.1; done
ld volume list | grep -qE '^vm1 .* yes +yes ' || { tail -n 20 "$T/daemon.log"; fail "QEMU did not reconnect to the restarted daemon"; }
say "daemon killed with -9 and restarted; QEMU (libvirt <reconnect>) reconnected"
ld attach vm2 >/dev/null || fail "attach vm2 while the VM runs"
sed -e "s|@SOCKET@|$T/socks/vm2.sock|" "$ROOT/qemu-configs/libvirt-hotplug-disk.xml" >"$T/disk2.xml"
vsh attach-device "$DOM" "$T/disk2.xml" --live >/dev/null || fail "virsh attach-device --live"
say "vm2 hot-plugged; waiting for the guest to write vdb"
wait_for "$T/console.log" LIBVIRT-GUEST-DONE 3000 || fail "guest did not finish vdb"
grep -q "CHECK FAILED" "$T/console.log" && fail "guest check"
list=$(ld volume list)
echo "$list" | grep -E '^vm[12] ' | sed 's/^/  /'
[[ $(echo "$list" | grep -cE '^vm[12] .* yes +yes ') = 2 ]] || fail "volume list does not show both attached and connected"

vsh destroy "$DOM" >/dev/null || fail "virsh destroy"
for v in vm1 vm2; do
    ok=0
    for _ in $(seq 100); do ld detach "$v" >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
    [[ $ok = 1 ]] || fail "detach $v after destroy"
done
kill -TERM "$DAEMON"; wait "$DAEMON" || fail "daemon exit"; DAEMON=
for pair in vm1:A vm2:B; do
    set -- "${pair%:*}" "${pair#*:}"
    ld volume export "$1" "$T/$1.raw" >/dev/null
    got=$(head -c $((4 << 20)) "$T/$1.raw" | sha256sum | cut -d' ' -f1)
    want=$(grep -a "^SUM-$2 " "$T/console.log" | tr -d '\r' | cut -d' ' -f2)
    [[ -n $want && $got = "$want" ]] || fail "export of $1 ($got) differs from what the guest wrote ($want)"
done
vsh undefine "$DOM" >/dev/null || true
say "PASS: libvirt started a TCG VM on a logdisk volume, hot-plugged a second one attached at runtime; exports equal the guest's data"
