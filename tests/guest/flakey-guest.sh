#!/bin/sh
# Runs INSIDE the test guest for tests/guest/flakey-e2e.sh (busybox sh). vda = the "host
# NVMe" under a device-mapper target that is linear, then for FAULT_SECS dm-flakey with
# error_writes (every write fails with EIO), then linear again; vdb = the client's journal,
# vdc = the volume exported after recovery. logdisk's data dir is on ext4 there (ext4
# aborts its journal and goes read-only on the first failed write). The client writes
# with flushes all along (--allow-errors: failures are journaled). Then: logdisk stopped,
# ext4 unmounted, checked and mounted again, logdisk started again, the volume exported
# for the host to check every write acknowledged before the last completed flush.
set -u
fail() { echo "FLAKEY-GUEST FAILED: $*"; [ -f /tmp/daemon.log ] && tail -n 30 /tmp/daemon.log; exit 1; }
say() { echo "[flakey-guest $(cut -d' ' -f1 /proc/uptime)] $*"; }
FAULT_SECS=${FAULT_SECS:-6}
for d in vda vdb vdc; do
    n=0
    while [ ! -b /dev/$d ]; do n=$((n + 1)); [ $n -le 300 ] || fail "/dev/$d missing"; sleep 0.1; done
done
SECT=$(cat /sys/block/vda/size)
table() { # linear | flakey
    if [ "$1" = linear ]; then echo "0 $SECT linear /dev/vda 0"; else echo "0 $SECT flakey /dev/vda 0 0 1 1 error_writes"; fi
}
switch() {
    dmsetup suspend --nolockfs fl && dmsetup load fl --table "$(table "$1")" && dmsetup resume fl || fail "switch to $1"
    say "device is now $1"
}
dmsetup create fl --table "$(table linear)" || fail "dmsetup create"
[ -b /dev/mapper/fl ] || dmsetup mknodes fl
DEV=/dev/mapper/fl
mkfs.ext4 -q -F -E nodiscard $DEV || fail "mkfs.ext4"
mkdir -p /mnt/nvme
mount -t ext4 -o noatime $DEV /mnt/nvme || fail "mount"
DD=/mnt/nvme/ld
L="logdisk --data-dir $DD --config /root/pl.toml"
$L volume create vm --size 32M >/dev/null || fail "volume create"
start_daemon() {
    $L serve vm --socket /tmp/vm.sock --num-queues 2 >>/tmp/daemon.log 2>&1 &
    DAEMON=$!
    n=0
    while [ ! -S /tmp/vm.sock ]; do n=$((n + 1)); [ $n -le 300 ] || fail "daemon socket"; sleep 0.1; done
}
rm -f /tmp/vm.sock
start_daemon
logdisk-loadgen --socket /tmp/vm.sock --queues 2 --iodepth 16 --bs 4k --bs-max 16k \
    --fsync-every 4 --flushes 1000000 --time $((FAULT_SECS + 16)) --allow-errors \
    --journal /tmp/journal --timeout 60 >/tmp/loadgen.out 2>&1 &
LG=$!
sleep 8
switch flakey
sleep "$FAULT_SECS"
switch linear
wait $LG
LGRC=$?
cat /tmp/loadgen.out
[ $LGRC = 0 ] || fail "loadgen exited $LGRC"
grep -q ' 0 failed requests' /tmp/loadgen.out && fail "no request failed while writes failed with EIO"
echo "FLAKEY-DAEMON-LOG-BEGIN"
grep -iE 'error|fail|read-only|EIO' /tmp/daemon.log | sed -E 's/^[0-9T:.-]+Z +//; s/ queue=[0-9]+//' | sort | uniq -c | sort -rn | head -n 8
echo "FLAKEY-DAEMON-LOG-END"
dmesg | grep -iE 'EXT4-fs|flakey' | tail -n 3
# A stopped volume must not retry in a loop: once the daemon spun on its failed flush and
# wrote ~20 MB/s of identical warnings, filling the guest's RAM-backed root file system.
LOGSZ=$(wc -c </tmp/daemon.log)
say "daemon log after the fault: $LOGSZ bytes"
[ "$LOGSZ" -lt 1000000 ] || fail "daemon log grew to $LOGSZ bytes while the device failed (a retry loop?)"
# Nothing can flush or upload on a stopped volume: SIGTERM must not wait for it (once a
# scrub pass waited the whole 120 s drain timeout for uploads that could never happen).
T0=$(date +%s)
kill -TERM $DAEMON
wait $DAEMON
RC=$?
STOP_SECS=$(( $(date +%s) - T0 ))
say "daemon exit status after the fault: $RC, after ${STOP_SECS}s"
[ "$STOP_SECS" -le 30 ] || fail "the stopped daemon took ${STOP_SECS}s to exit on SIGTERM"
umount /mnt/nvme || fail "umount"
e2fsck -fy $DEV >/tmp/fsck.out 2>&1
say "e2fsck after the fault: status $?"
mount -t ext4 -o noatime $DEV /mnt/nvme || fail "mount after the fault"
rm -f /tmp/vm.sock
start_daemon
say "restarted after the fault"
kill -TERM $DAEMON
wait $DAEMON || fail "daemon exit after recovery"
$L volume export vm /tmp/vol.raw || fail "export after recovery"
dd if=/tmp/vol.raw of=/dev/vdc bs=1M conv=fsync 2>/dev/null || fail "volume to vdc"
dd if=/tmp/journal of=/dev/vdb bs=1M conv=fsync 2>/dev/null || fail "journal to vdb"
start_daemon
logdisk-loadgen --socket /tmp/vm.sock --queues 1 --iodepth 4 --rw randwrite --bs 4k --time 2 \
    --fsync-every 4 -q >/dev/null 2>&1 || fail "writes after recovery"
kill -TERM $DAEMON
wait $DAEMON || fail "daemon exit after the writes after recovery"
say "writes and flushes work again after recovery"
echo "FLAKEY-GUEST-DONE"
