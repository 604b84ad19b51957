#!/bin/sh
# Runs INSIDE the test guest for tests/guest/powerloss-e2e.sh (busybox sh).
# Disks: vda = the "host NVMe", vdb = the dm-log-writes log, vdc = where the client's
# journal is left for the host. A log-writes target over vda, ext4 on it, logdisk's data
# dir and its embedded object store there, `logdisk serve` on a socket, and
# logdisk-loadgen --journal writing verifiable patterns on 2 queues with flushes, a mark
# in the log after each completed flush; meanwhile snapshots, scrubs, SCO/TLog roll-over
# (256K SCOs) and checkpoints (every 2 TLogs). Then a clean shutdown (also logged).
# Environment: FLUSHES (default 2000), SEED (default 1), FLAKEY=1 for the dm-flakey run,
# FS=ext4|xfs (default ext4): the file system on the log-writes device.
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
FS=${FS:-ext4}
case $FS in
    ext4) mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 $DEV || fail "mkfs.ext4" ;;
    xfs) grep -qw xfs /proc/filesystems || while read -r m; do
            insmod "/lib/modules/$(uname -r)/$m" || fail "insmod $m"; done </etc/logdisk/modules.xfs
        mkfs.xfs -q -f -K $DEV || fail "mkfs.xfs" ;;
    *) fail "FS must be ext4 or xfs (got '$FS')" ;;
esac
mkdir -p /mnt/nvme
mount -t "$FS" -o noatime $DEV /mnt/nvme || fail "mount $FS"
say "file system: $FS"
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
    --fsync-every 4 --flushes "$FLUSHES" --seed "$SEED" --journal /tmp/journal \
    --dm-mark logw --timeout 120 >/tmp/loadgen.out 2>&1 &
LG=$!
# Management operations while the client writes, each bounded in time (a hang is reported).
op() { # NAME CMD...
    name=$1; shift
    if timeout 60 "$@" >>/tmp/ops.log 2>&1; then echo "$name ok" >>/tmp/ops; else echo "$name FAILED $?" >>/tmp/ops; fi
}
i=0
while kill -0 $LG 2>/dev/null; do
    sleep 3
    i=$((i + 1))
    kill -0 $LG 2>/dev/null || break
    op snapshot $L snapshot create "vm@s$i"
    [ $i -gt 2 ] && op delete $L snapshot delete "vm@s$((i - 2))"
    [ $((i % 5)) = 0 ] && op scrub $L scrub vm
    [ $((i % 5)) = 0 ] && say "progress: $(tail -n 1 /tmp/loadgen.out), fs $(df -k /mnt/nvme | awk 'NR==2 {print $3}') KiB used, ops: $(sort /tmp/ops | uniq -c | tr '\n' ' ')"
done
wait $LG
LGRC=$?
cat /tmp/loadgen.out
say "ops while writing: $(sort /tmp/ops | uniq -c | tr '\n' ' ')"
grep -q FAILED /tmp/ops && { tail -n 20 /tmp/ops.log; fail "a management operation failed or hung"; }
[ $LGRC = 0 ] || fail "loadgen exited $LGRC"
kill -TERM $DAEMON
wait $DAEMON || fail "daemon exit on SIGTERM"
say "store: $(find $DD/objects -path '*/sco/*' -type f | wc -l) SCOs, $(find $DD/objects -path '*/tlog/*' -type f | wc -l) TLogs, $(find $DD/objects -type f | wc -l) objects in all; data dir $(du -sk $DD | cut -f1) KiB; daemon log: $(grep -ci checkpoint /tmp/daemon.log) lines on checkpoints, $(grep -ci scrub /tmp/daemon.log) on scrub"
umount /mnt/nvme || fail "umount"
dmsetup remove logw || fail "dmsetup remove"
dd if=/tmp/journal of=/dev/vdc bs=1M conv=fsync 2>/dev/null || fail "journal to vdc"
echo "POWERLOSS-JOURNAL $(wc -c </tmp/journal) bytes, $(grep -c '^A' /tmp/journal) acked writes, $(grep -c '^M' /tmp/journal) marks"
echo "POWERLOSS-GUEST-DONE"
