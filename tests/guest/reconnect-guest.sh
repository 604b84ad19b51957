#!/bin/sh
# Runs INSIDE the test guest for tests/guest/reconnect-e2e.sh while the host kills and
# restarts logdisk under it. For DURATION seconds, at once:
#   - fio with --verify=crc32c on vda, again and again: 4k random writes at QD32 and 1M
#     sequential writes (two jobs, so both queues carry IO), each run written then verified;
#   - an ext4 file workload on vdb: 48 files rewritten in turn with random data (sync now
#     and then), their sha256 recorded at the end;
#   - a probe: one 4 KiB O_DIRECT read of vda at a time, timed; a read that took longer than
#     0.2 s is printed as "PAUSE <uptime at its start> <seconds>" (the host matches them to
#     its restarts; under TCG the workload alone causes some).
# Then: every fio run had 0 errors and verified, no I/O error in dmesg, e2fsck clean, every
# checksum matches after a remount with a cold cache. Prints RECONNECT-VERIFIED.
set -u
DUR=${DURATION:-40}
FIO_DEV=/dev/vda
FS_DEV=/dev/vdb
MNT=/mnt/f
fail() { echo "CHECK FAILED: $*"; exit 1; }
now() { cut -d. -f1 /proc/uptime; }
mkdir -p "$MNT"
mkfs.ext4 -q -F "$FS_DEV" || fail "mkfs.ext4"
mount -t ext4 "$FS_DEV" "$MNT" || fail "mount"
dmesg -c >/dev/null
END=$(( $(now) + DUR ))
echo "RECONNECT-GO duration ${DUR}s uptime $(cut -d' ' -f1 /proc/uptime)"

# The probe: pauses as the guest sees them.
(
    while [ "$(now)" -lt "$END" ]; do
        t0=$(cut -d' ' -f1 /proc/uptime)
        dd if="$FIO_DEV" of=/dev/null bs=4k count=1 skip=$((30000 + $(now) % 1000)) iflag=direct 2>/dev/null \
            || echo "PROBE-READ-FAILED"
        t1=$(cut -d' ' -f1 /proc/uptime)
        awk -v a="$t0" -v b="$t1" 'BEGIN { if (b - a > 0.2) printf "PAUSE %s %.2f\n", a, b - a }'
        sleep 0.05
    done
) >/root/probe.out 2>&1 &
PROBE=$!

# The ext4 workload.
(
    i=0
    while [ "$(now)" -lt "$END" ]; do
        i=$((i + 1))
        # 48 files rewritten in turn (bounded space however long it runs).
        dd if=/dev/urandom of="$MNT/f$((i % 48))" bs=64k count=$(( i % 16 + 1 )) 2>/root/dd.err \
            || { echo "FS-WRITE-FAILED $i: $(cat /root/dd.err)"; df -k "$MNT"; exit 1; }
        [ $((i % 4)) = 0 ] && sync
    done
    sync
    (cd "$MNT" && sha256sum f*) >/root/sums || { echo "FS-SUM-FAILED"; exit 1; }
    echo "FS-FILES $i"
) >/root/fs.out 2>&1 &
FSW=$!

# fio with verification, run after run.
n=0
while [ "$(now)" -lt "$END" ]; do
    n=$((n + 1))
    fio --direct=1 --ioengine=libaio --verify=crc32c --verify_fatal=1 --do_verify=1 \
        --output-format=terse --terse-version=3 \
        --name=rand4k --filename="$FIO_DEV" --offset=0 --size=8M --rw=randwrite --bs=4k --iodepth=32 \
        --name=seq1m --filename="$FIO_DEV" --offset=32M --size=24M --rw=write --bs=1M --iodepth=4 \
        >/root/fio.out 2>&1 || { cat /root/fio.out; fail "fio run $n"; }
    # terse v3: 3 jobname, 5 error, 6 read KiB (the verify pass), 47 written KiB
    awk -F';' -v n="$n" 'NF > 50 {printf "fio run %d %s: err=%s written=%s KiB verified=%s KiB\n", n, $3, $5, $47, $6}' /root/fio.out
    [ "$(awk -F';' 'NF > 50 && $5 != 0' /root/fio.out | wc -l)" = 0 ] || { cat /root/fio.out; fail "fio run $n reported an error"; }
    [ "$(awk -F';' 'NF > 50' /root/fio.out | wc -l)" = 2 ] || { cat /root/fio.out; fail "fio run $n: missing job results"; }
done
echo "FIO-RUNS $n"
wait "$FSW" || { cat /root/fs.out; fail "ext4 workload"; }
cat /root/fs.out
wait "$PROBE"
cat /root/probe.out
grep -q PROBE-READ-FAILED /root/probe.out && fail "a probe read failed"

if dmesg | grep -iE "I/O error|blk_update_request|Buffer I/O|EXT4-fs error|critical medium"; then
    fail "I/O errors in dmesg"
fi
umount "$MNT" || fail "umount"
e2fsck -fn "$FS_DEV" >/root/fsck.log 2>&1 || { cat /root/fsck.log; fail "e2fsck found problems"; }
tail -n 1 /root/fsck.log
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 -o ro "$FS_DEV" "$MNT" || fail "remount"
(cd "$MNT" && sha256sum -c -s /root/sums) || fail "checksums differ after remount"
echo "FS-CHECKSUMS-OK $(wc -l </root/sums)"
umount "$MNT"
echo "RECONNECT-VERIFIED"
