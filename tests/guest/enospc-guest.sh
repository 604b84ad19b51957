#!/bin/sh
# Runs INSIDE the test guest for tests/guest/enospc-e2e.sh (busybox sh). vda = a small
# "host NVMe" (the host sizes it, 64 MiB): ext4 holding logdisk's data dir AND its embedded
# object store (the default file://<data-dir>/objects; uploads are hard links on the same
# file system), plus a ballast file that leaves ROOM_MB free. vdb / vdc = the client's two
# journals. The volume (256 MiB) is larger than the file system. Phase 1 writes a 24 MiB
# region: twice the room left by the ballast, under half the file system once the ballast
# is gone (a region larger than what the space that returns can hold, written at full
# speed, would rightly fill the file system again with live data before phase 2).
# Phase 1: logdisk-loadgen --journal --allow-errors writes verifiable patterns
# with flushes to 0..24M until ext4 is full and goes on writing into the full file system
# (requests must fail with "no space", the daemon must not crash or hang); 6 s before the
# end the ballast is deleted and the same client's writes and flushes must succeed again.
# Phase 2 (no --allow-errors: any failure fails the test), a new connection to the same
# daemon, writes with flushes to 240M..248M for PHASE2_SECS (4 s; longer runs show whether
# writes wait for scrub once the disk runs low again). Then logdisk stops (SIGTERM, status 0) and
# ext4 is unmounted: the host exports the volume from it and checks both journals. RESTART_WHILE_FULL=1:
# logdisk is stopped while full instead, started on the full file system, and started
# again after the ballast is deleted, before phase 2.
set -u
fail() {
    echo "ENOSPC-GUEST FAILED: $*"
    df -k /mnt/nvme
    ls -l /mnt/nvme/ld/volumes/vm/tlog /mnt/nvme/ld/volumes/vm/sco 2>/dev/null | tail -n 40
    [ -f /tmp/daemon.log ] && summary && grep -vE "request failed|io_uring IO failed|upload of .* failed|scrub failed; retried|throttl|O_DIRECT TLog write failed" /tmp/daemon.log | tail -n 150
    exit 1
}
# The daemon's distinct WARN/ERROR lines, numbers masked, with their counts.
summary() {
    grep -E ' (WARN|ERROR) ' /tmp/daemon.log | sed -E 's/^[0-9T:.-]+Z +//; s/ queue=[0-9]+//;
        s/(failures|epoch)=[0-9]+/\1=N/g; s/[0-9a-f]{16}/N/g; s/TLog [0-9]+/TLog N/g; s/wanted [0-9]+/wanted N/' \
        | sort | uniq -c | sort -rn | head -n 12
}
say() { echo "[enospc-guest $(cut -d' ' -f1 /proc/uptime)] $*"; }
ROOM_MB=${ROOM_MB:-12}
FILL_SECS=${FILL_SECS:-24}
RECOVER_SECS=${RECOVER_SECS:-6}
RESTART_WHILE_FULL=${RESTART_WHILE_FULL:-0}
PHASE2_SECS=${PHASE2_SECS:-4}
for d in vda vdb vdc; do
    n=0
    while [ ! -b /dev/$d ]; do n=$((n + 1)); [ $n -le 300 ] || fail "/dev/$d missing"; sleep 0.1; done
done
DEV=/dev/vda
mkfs.ext4 -q -F -m 0 -E nodiscard $DEV || fail "mkfs.ext4"
mkdir -p /mnt/nvme
mount -t ext4 -o noatime $DEV /mnt/nvme || fail "mount"
DD=/mnt/nvme/ld
L="logdisk --data-dir $DD --config /root/pl.toml"
$L volume create vm --size 256M >/dev/null || fail "volume create"
avail_kb() { df -k /mnt/nvme | awk 'NR == 2 { print $4 }'; }
dfline() { df -k /mnt/nvme | awk 'NR == 2 { printf "size %d KiB, used %d KiB, available %d KiB", $2, $3, $4 }'; }
start_daemon() {
    rm -f /tmp/vm.sock
    $L serve vm --socket /tmp/vm.sock --num-queues 2 >>/tmp/daemon.log 2>&1 &
    DAEMON=$!
    n=0
    while [ ! -S /tmp/vm.sock ]; do n=$((n + 1)); [ $n -le 300 ] || fail "daemon socket"; sleep 0.1; done
}
start_daemon
BALLAST_MB=$(($(avail_kb) / 1024 - ROOM_MB))
[ $BALLAST_MB -gt 8 ] || fail "file system too small for a ballast ($(dfline))"
dd if=/dev/zero of=/mnt/nvme/ballast bs=1M count=$BALLAST_MB conv=fsync 2>/dev/null || fail "ballast"
say "ballast ${BALLAST_MB} MiB; df before the run: $(dfline)"

# Phase 1: fill the file system, keep writing into it; RECOVER_SECS before its end the
# ballast is deleted (space returns under the same running client and connection), unless
# RESTART_WHILE_FULL=1.
logdisk-loadgen --socket /tmp/vm.sock --queues 2 --iodepth 16 --bs 4k --bs-max 64k \
    --size 24M --seed 1 --fsync-every 4 --flushes 1000000 --time "$FILL_SECS" --allow-errors \
    --journal /tmp/journal1 --timeout 20 >/tmp/loadgen1.out 2>&1 &
LG=$!
now() { cut -d' ' -f1 /proc/uptime; }
LG_T0=$(now)
FULL_AT=
FREED=0
MIN_KB=$(avail_kb)
while kill -0 $LG 2>/dev/null; do
    a=$(avail_kb)
    [ "$a" -lt "$MIN_KB" ] && MIN_KB=$a
    if [ -z "$FULL_AT" ] && grep -q 'no space' /tmp/daemon.log; then
        FULL_AT=$(now)
        say "first 'no space' in the daemon log; df: $(dfline)"
    fi
    kill -0 $DAEMON 2>/dev/null || fail "the daemon died while the file system was full"
    if [ "$RESTART_WHILE_FULL" != 1 ] && [ $FREED = 0 ] \
        && [ "$(echo "$(now) $LG_T0" | awk '{ print int($1 - $2) }')" -ge $((FILL_SECS - RECOVER_SECS)) ]; then
        [ -n "$FULL_AT" ] || fail "the file system was not full after $((FILL_SECS - RECOVER_SECS)) s of writes ($(dfline))"
        say "full for $(echo "$(now) $FULL_AT" | awk '{ printf "%.1f", $1 - $2 }') s; df: $(dfline)"
        rm -f /mnt/nvme/ballast
        FREED=1
        say "ballast deleted while the client writes; df: $(dfline)"
    fi
    sleep 0.5
done
wait $LG
LGRC=$?
cat /tmp/loadgen1.out
[ $LGRC = 0 ] || fail "phase 1 loadgen exited $LGRC"
say "df at the end of phase 1: $(dfline); lowest available seen: $MIN_KB KiB"
[ -n "$FULL_AT" ] || fail "the daemon never logged 'no space' (df: $(dfline))"
if [ $FREED = 1 ]; then
    # Writes and flushes acknowledged after the last failed request of the same client.
    set -- $(awk '/^X/ { a = 0; c = 0 } /^A/ { a++ } /^C/ { c++ } END { print a + 0, c + 0 }' /tmp/journal1)
    say "after the last failed request of phase 1: $1 writes and $2 flushes acknowledged"
    [ "$1" -ge 10 ] && [ "$2" -ge 2 ] || fail "the running client did not recover after the space returned"
fi
grep -q ' 0 failed requests' /tmp/loadgen1.out && fail "no request failed while the file system was full"
kill -0 $DAEMON 2>/dev/null || fail "the daemon died while the file system was full"
echo "ENOSPC-DAEMON-LOG-BEGIN"
summary
echo "ENOSPC-DAEMON-LOG-END"

if [ "$RESTART_WHILE_FULL" = 1 ]; then
    # Variant: logdisk stopped while the file system is still full, started again on it
    # (it must serve or refuse with a clear error, not crash), then once more after the
    # space returned; nothing acknowledged may be lost across these restarts.
    T0=$(cut -d' ' -f1 /proc/uptime)
    kill -TERM $DAEMON
    wait $DAEMON
    say "SIGTERM while full: daemon exit status $? after $(echo "$(cut -d' ' -f1 /proc/uptime) $T0" | awk '{ printf "%.1f", $1 - $2 }') s"
    tail -n 3 /tmp/daemon.log
    rm -f /tmp/vm.sock
    $L serve vm --socket /tmp/vm.sock --num-queues 2 >/tmp/daemon-full.log 2>&1 &
    DAEMON=$!
    n=0
    while [ ! -S /tmp/vm.sock ] && kill -0 $DAEMON 2>/dev/null && [ $n -le 300 ]; do n=$((n + 1)); sleep 0.1; done
    if [ -S /tmp/vm.sock ]; then
        say "started on the full file system: serving"
        kill -TERM $DAEMON
    fi
    wait $DAEMON
    say "start on the full file system: exit status $?"
    grep -E ' (WARN|ERROR) |Error|error' /tmp/daemon-full.log | head -n 5
    cat /tmp/daemon-full.log >>/tmp/daemon.log
fi

# Phase 2, a new connection: writes and flushes must all succeed (the same daemon, not
# restarted, unless RESTART_WHILE_FULL=1: then the space returns only now).
if [ "$RESTART_WHILE_FULL" = 1 ]; then
    rm -f /mnt/nvme/ballast
    say "ballast deleted; df: $(dfline)"
    start_daemon
    say "restarted after the space returned"
fi
logdisk-loadgen --socket /tmp/vm.sock --queues 2 --iodepth 16 --bs 4k --bs-max 64k \
    --offset 240M --size 8M --seed 2 --fsync-every 4 --flushes 1000000 --time "$PHASE2_SECS" \
    --journal /tmp/journal2 --timeout 30 >/tmp/loadgen2.out 2>&1
LGRC=$?
cat /tmp/loadgen2.out
[ $LGRC = 0 ] || fail "writes and flushes after space returned: loadgen exited $LGRC"
grep -q ' 0 failed requests' /tmp/loadgen2.out || fail "requests failed after space returned"
say "writes and flushes work again after space returned; df: $(dfline)"
kill -TERM $DAEMON
wait $DAEMON || fail "daemon exit status $? after the run"
say "daemon stopped (status 0); df: $(dfline)"
umount /mnt/nvme || fail "umount"
dd if=/tmp/journal1 of=/dev/vdb bs=1M conv=fsync 2>/dev/null || fail "journal 1 to vdb"
dd if=/tmp/journal2 of=/dev/vdc bs=1M conv=fsync 2>/dev/null || fail "journal 2 to vdc"
# The last scrub passes with their phases (a pass stalled seconds here once).
grep -E "pass phases" /tmp/daemon.log | tail -n 20 | sed "s/^/[daemon] /"
echo "ENOSPC-GUEST-DONE"
