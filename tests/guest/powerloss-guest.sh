#!/bin/sh
# Runs INSIDE the test guest for tests/guest/powerloss-e2e.sh (busybox sh).
# Disks: vda = the "host NVMe", vdb = the dm-log-writes log, vdc = where the client's
# journal is left for the host. A log-writes target over vda, ext4 on it, logdisk's data
# dir and its embedded object store there, `logdisk serve` on a socket, and
# logdisk-loadgen --journal writing verifiable patterns on 2 queues with flushes, a mark
# in the log after each completed flush; meanwhile snapshots, scrubs, SCO/TLog roll-over
# (256K SCOs) and checkpoints (every 2 TLogs). Then a clean shutdown (also logged).
# Environment: FLUSHES (default 2000), SEED (default 1), FLAKEY=1 for the dm-flakey run.
set -u
fail() { echo "POWERLOSS-GUEST FAILED: $*"; [ -f /tmp/daemon.log ] && tail -n 40 /tmp/daemon.log; exit 1; }
say() { echo "[powerloss-guest $(cut -d' ' -f1 /proc/uptime)] $*"; }
FLUSHES=${FLUSHES:-2000}
SEED=${SEED:-1}
for d in vda vdb vdc; do
    n=0
    while [ ! -b /dev/$d ]; do n=$((n + 1)); [ $n -le 300 ] || fail "/dev/$d missing"; sleep 0.1; done
done
SECT=$(cat /sys/block/vda/size)
dmsetup create logw --table "0 $SECT log-writes /dev/vda /dev/vdb" || fail "dmsetup create log-writes"
DEV=/dev/mapper/logw
[ -b $DEV ] || dmsetup mknodes logw   # no udev in the guest
[ -b $DEV ] || fail "$DEV missing"
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 $DEV || fail "mkfs.ext4"
mkdir -p /mnt/nvme
mount -t ext4 -o noatime $DEV /mnt/nvme || fail "mount"
DD=/mnt/nvme/ld
L="logdisk --data-dir $DD --config /root/pl.toml"
$L volume create vm --size 32M >/dev/null || fail "volume create"
$L -v serve vm --socket /tmp/vm.sock --num-queues 2 >/tmp/daemon.log 2>&1 &
DAEMON=$!
n=0
while [ ! -S /tmp/vm.sock ]; do n=$((n + 1)); [ $n -le 300 ] || fail "daemon socket"; sleep 0.1; done
dmsetup message logw 0 mark ready || fail "first mark"
say "serving; workload: $FLUSHES flushes"
logdisk-loadgen --socket /tmp/vm.sock --queues 2 --iodepth 16 --bs 4k --bs-max 16k \
    --fsync-every 6 --flushes "$FLUSHES" --seed "$SEED" --journal /tmp/journal \
    --dm-mark logw --timeout 120 >/tmp/loadgen.out 2>&1 &
LG=$!
i=0
while kill -0 $LG 2>/dev/null; do
    sleep 2
    i=$((i + 1))
    kill -0 $LG 2>/dev/null || break
    $L snapshot create "vm@s$i" >/dev/null 2>&1 && echo "snapshot s$i" >>/tmp/ops
    if [ $((i % 3)) = 0 ]; then $L scrub vm --threshold 0.9 >>/tmp/ops 2>&1 && echo "scrub $i" >>/tmp/ops; fi
    if [ $i -gt 2 ]; then $L snapshot delete "vm@s$((i - 2))" >/dev/null 2>&1 && echo "delete s$((i - 2))" >>/tmp/ops; fi
done
wait $LG
LGRC=$?
cat /tmp/loadgen.out
say "ops: $(grep -c '^snapshot' /tmp/ops 2>/dev/null) snapshots, $(grep -c '^scrub' /tmp/ops 2>/dev/null) scrubs, $(grep -c '^delete' /tmp/ops 2>/dev/null) snapshot deletes"
[ $LGRC = 0 ] || fail "loadgen exited $LGRC"
kill -TERM $DAEMON
wait $DAEMON || fail "daemon exit on SIGTERM"
say "daemon log: $(grep -ci 'seal' /tmp/daemon.log) seal lines, $(grep -ci 'checkpoint' /tmp/daemon.log) checkpoint lines, $(grep -ci 'upload' /tmp/daemon.log) upload lines"
say "objects: $(find $DD/objects -type f | wc -l) files, data dir $(du -sk $DD | cut -f1) KiB"
umount /mnt/nvme || fail "umount"
dmsetup remove logw || fail "dmsetup remove"
dd if=/tmp/journal of=/dev/vdc bs=1M conv=fsync 2>/dev/null || fail "journal to vdc"
echo "POWERLOSS-JOURNAL $(wc -c </tmp/journal) bytes, $(grep -c '^A' /tmp/journal) acked writes, $(grep -c '^M' /tmp/journal) marks"
echo "POWERLOSS-GUEST-DONE"
