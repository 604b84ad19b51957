#!/bin/sh
# Runs INSIDE the test guest for tests/guest/powerloss-e2e.sh (busybox sh).
# Disks: vda = the "host NVMe", vdb = the dm-log-writes log, vdc = where the client's
# journal is left for the host. A log-writes target over vda, ext4 on it, logdisk's data
# dir and its embedded object store there, `logdisk serve` on a socket, and
# logdisk-loadgen --journal writing verifiable patterns on 2 queues with flushes, a mark
# in the log after each completed flush; meanwhile snapshots, scrubs, SCO/TLog roll-over
# (256K SCOs) and checkpoints (every 2 TLogs). Then a clean shutdown (also logged).
# A DTL server (`logdisk dtl serve`, loopback) keeps its log on the same file system and
# the volume uses it in sync mode, so the host can also restart the volume from the object
# store + DTL alone at each replay point.
# Environment: FLUSHES (default 2000), SEED (default 1), DTL (default 1; 0: no DTL server),
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
DTL=${DTL:-1}
if [ "$DTL" = 1 ]; then
    # The DTL flags, in one place: loopback, no token (the replay restarts it the same way).
    DTL_ADDR=127.0.0.1:7400
    # The guest boots with loopback down.
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up || fail "loopback up"
    logdisk -v dtl serve --listen $DTL_ADDR --dir /mnt/nvme/dtl --insecure >/tmp/dtl.log 2>&1 &
    DTLPID=$!
    n=0  # listening: port 7400 = 0x1CE8, state 0A in /proc/net/tcp
    until grep -q ':1CE8 00000000:0000 0A' /proc/net/tcp; do
        n=$((n + 1)); [ $n -le 300 ] || { cat /tmp/dtl.log; fail "DTL server did not listen"; }; sleep 0.1
    done
    $L volume create vm --size 32M --dtl $DTL_ADDR --dtl-mode sync >/dev/null || fail "volume create (DTL sync)"
else
    $L volume create vm --size 32M >/dev/null || fail "volume create"
fi
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
if [ "$DTL" = 1 ]; then
    say "daemon's DTL lines: $(grep -ci dtl /tmp/daemon.log) ($(grep -i dtl /tmp/daemon.log | grep -ci -e degraded -e 'not covered'), degraded or not covered)"
    grep -i dtl /tmp/daemon.log | tail -n 5
    # The takeover checks at marks rely on a DTL in sync all along.
    grep -q 'DTL degraded' /tmp/daemon.log && fail "the DTL was degraded during the run"
    kill -TERM $DTLPID
    # Bounded: a first run hung here (the DTL server did not exit on SIGTERM in 1100 s).
    n=0
    while kill -0 $DTLPID 2>/dev/null; do
        n=$((n + 1)); [ $n -le 200 ] || { tail -n 20 /tmp/dtl.log; kill -KILL $DTLPID; fail "DTL server did not exit within 20 s of SIGTERM"; }
        sleep 0.1
    done
    say "DTL dir: $(find /mnt/nvme/dtl -name '*.seg' | wc -l) segments, $(du -sk /mnt/nvme/dtl | cut -f1) KiB"
fi
FL=$(grep -o 'flushes=[0-9]* single_flushes=[0-9]*' /tmp/daemon.log | tail -n 1)
say "flushes (at close): $FL"
if [ "${EXPECT_SINGLE:-0}" = 1 ] && ! echo "$FL" | grep -q 'single_flushes=[1-9]'; then
    fail "no flush took one device flush (the zero-filled SCO path was not exercised)"
fi
say "store: $(find $DD/objects -path '*/sco/*' -type f | wc -l) SCOs, $(find $DD/objects -path '*/tlog/*' -type f | wc -l) TLogs, $(find $DD/objects -type f | wc -l) objects in all; data dir $(du -sk $DD | cut -f1) KiB; daemon log: $(grep -ci checkpoint /tmp/daemon.log) lines on checkpoints, $(grep -ci scrub /tmp/daemon.log) on scrub"
umount /mnt/nvme || fail "umount"
dmsetup remove logw || fail "dmsetup remove"
dd if=/tmp/journal of=/dev/vdc bs=1M conv=fsync 2>/dev/null || fail "journal to vdc"
echo "POWERLOSS-JOURNAL $(wc -c </tmp/journal) bytes, $(grep -c '^A' /tmp/journal) acked writes, $(grep -c '^M' /tmp/journal) marks"
echo "POWERLOSS-GUEST-DONE"
