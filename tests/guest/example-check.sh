#!/bin/sh
# Runs INSIDE the logdisk test guest (busybox sh) as /test.sh, via
#   tests/guest/run-guest.sh --socket SOCK --script tests/guest/example-check.sh [--env ...]
# and checks a vhost-user-blk disk end to end:
#   1. device facts (size, queues, discard/write-zeroes limits, write cache)
#   2. mkfs.ext4, mount, write files, sync, sha256sum; remount with a cold page cache and
#      verify the checksums; e2fsck -fn
#   3. fio random 4k writes and sequential 1M writes with --verify=crc32c (O_DIRECT); 1 MiB
#      reads at QD32 of the randomly written (scattered) region equal 4 KiB reads of it
#   4. blkdiscard a range (and blkdiscard -z = WRITE_ZEROES) and read it back as zeroes
# Guest environment (--env NAME=VALUE):
#   DEV=/dev/vda             device under test
#   EXPECT_QUEUES=N          fail unless the device has N queues
#   FIO_SIZE=64M             size of each fio job (in MiB, with the M)
#   FIO_ENGINE=libaio        libaio (default) or psync / io_uring
#   CHECK_DISCARD=1          0 to skip the discard/write-zeroes checks (backend without them)
#   CHECK_WCE=1              try switching the write cache mode via sysfs (informational)
# Every failure prints "CHECK FAILED: ..." and the script exits non-zero.
set -eu

DEV=${DEV:-/dev/vda}
NAME=${DEV#/dev/}
FIO_SIZE=${FIO_SIZE:-64M}
FIO_ENGINE=${FIO_ENGINE:-libaio}
CHECK_DISCARD=${CHECK_DISCARD:-1}
CHECK_WCE=${CHECK_WCE:-1}
MNT=/mnt/check

now() { cut -d' ' -f1 /proc/uptime; }
T=$(now)
step() {
    t=$(now)
    echo "== [$(awk -v a="$T" -v b="$t" 'BEGIN {printf "%6.1f", b - a}')s] $*"
}
fail() { echo "CHECK FAILED: $*"; exit 1; }
sysblk() { cat "/sys/block/$NAME/$1" 2>/dev/null || echo "?"; }

[ -b "$DEV" ] || fail "$DEV is not a block device"

# ---------------------------------------------------------------- 1. device facts
step "device $DEV"
SECTORS=$(sysblk size)
QUEUES=$(ls "/sys/block/$NAME/mq" | wc -l)
echo "size:                 $((SECTORS / 2048)) MiB ($SECTORS sectors)"
echo "queues:               $QUEUES"
echo "logical/physical bs:  $(sysblk queue/logical_block_size) / $(sysblk queue/physical_block_size)"
echo "max_segments:         $(sysblk queue/max_segments)   max_sectors_kb: $(sysblk queue/max_sectors_kb)"
echo "discard max/gran:     $(sysblk queue/discard_max_bytes) / $(sysblk queue/discard_granularity)"
echo "write_zeroes_max:     $(sysblk queue/write_zeroes_max_bytes)"
echo "write_cache:          $(sysblk queue/write_cache)   cache_type: $(sysblk cache_type)"
echo "read-only:            $(sysblk ro)   serial: $(sysblk serial)"
if [ -n "${EXPECT_QUEUES:-}" ] && [ "$QUEUES" -ne "$EXPECT_QUEUES" ]; then
    fail "expected $EXPECT_QUEUES queues, device has $QUEUES"
fi
[ "$(sysblk ro)" = 0 ] || fail "$DEV is read-only"

if [ "$CHECK_WCE" = 1 ]; then
    # virtio-blk exposes the VIRTIO_BLK_F_CONFIG_WCE toggle as /sys/block/vdX/cache_type;
    # the block layer's queue/write_cache only changes what the guest kernel sends.
    orig=$(sysblk cache_type)
    case "$orig" in "write back") other="write through" ;; *) other="write back" ;; esac
    if echo "$other" >"/sys/block/$NAME/cache_type" 2>/dev/null; then
        echo "cache_type switch:    '$orig' -> '$(sysblk cache_type)' (queue/write_cache now '$(sysblk queue/write_cache)')"
        echo "$orig" >"/sys/block/$NAME/cache_type" 2>/dev/null || true
        echo "cache_type restored:  '$(sysblk cache_type)' (queue/write_cache '$(sysblk queue/write_cache)')"
    else
        echo "cache_type switch:    '$orig' -> '$other' refused (device without CONFIG_WCE)"
    fi
fi

# ---------------------------------------------------------------- 2. filesystem
step "mkfs.ext4 $DEV"
mkfs.ext4 -q -F -L logdisk-check "$DEV" || fail "mkfs.ext4"
mkdir -p "$MNT"
mount -t ext4 "$DEV" "$MNT" || fail "mount"

step "write files"
mkdir -p "$MNT/dir/sub"
i=1
while [ "$i" -le 8 ]; do
    dd if=/dev/urandom of="$MNT/f$i" bs=64k count=$((i * 8)) 2>/dev/null || fail "write f$i"
    i=$((i + 1))
done
dd if=/dev/urandom of="$MNT/dir/sub/big" bs=1M count=48 2>/dev/null || fail "write big"
echo "hello logdisk" >"$MNT/dir/hello.txt"
sync
(cd "$MNT" && find . -type f | sort | xargs sha256sum) >/tmp/sums
sed 's/^/SUM /' /tmp/sums

step "remount with a cold cache and verify checksums"
umount "$MNT"
echo 3 >/proc/sys/vm/drop_caches
mount -t ext4 "$DEV" "$MNT" || fail "remount"
(cd "$MNT" && sha256sum -c -s /tmp/sums) || fail "checksums differ after remount"
md5sum "$MNT/dir/hello.txt"
if [ "$CHECK_DISCARD" = 1 ]; then
    step "fstrim"
    fstrim -v "$MNT" || fail "fstrim"
fi
umount "$MNT"
step "e2fsck -fn"
e2fsck -fn "$DEV" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck found problems"; }
tail -n 1 /tmp/fsck.log

# ---------------------------------------------------------------- 3. fio with verification
fio_run() {
    name=$1; shift
    step "fio $name"
    fio --name="$name" --filename="$DEV" --direct=1 --ioengine="$FIO_ENGINE" --verify=crc32c \
        --verify_fatal=1 --do_verify=1 --size="$FIO_SIZE" --output-format=terse --terse-version=3 \
        "$@" >/tmp/fio.out 2>&1 || { cat /tmp/fio.out; fail "fio $name"; }
    # terse v3: 3 jobname, 5 error, 6 read KiB (the verify pass), 47 write KiB, 48 write KiB/s, 49 write iops
    awk -F';' 'NF > 50 {printf "fio %s: err=%s written=%s KiB at %s KiB/s (%s iops), verified %s KiB\n", $3, $5, $47, $48, $49, $6}' /tmp/fio.out
    [ "$(awk -F';' 'NF > 50 {print $5}' /tmp/fio.out)" = 0 ] || { cat /tmp/fio.out; fail "fio $name reported an error"; }
}
fio_run randwrite-4k --rw=randwrite --bs=4k --iodepth=8
# The region just written in random 4k order is scattered over the log: a 1 MiB read of it
# touches ~256 runs, and 32 such reads in flight put thousands of IOs on one queue's ring
# (more completions than its completion queue holds). They must all complete, and 1 MiB
# reads must return what 4 KiB reads do.
step "scattered 1M reads at QD32"
MIB=$(( $(echo "$FIO_SIZE" | tr -d M) ))
SUM4K=$(dd if="$DEV" bs=4k count=$((MIB * 256)) iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
fio --name=scattered-read-1m --filename="$DEV" --direct=1 --ioengine="$FIO_ENGINE" --rw=read --bs=1M \
    --iodepth=32 --size="$FIO_SIZE" --loops=4 --output-format=terse --terse-version=3 >/tmp/fio.out 2>&1 \
    || { cat /tmp/fio.out; fail "fio scattered-read-1m"; }
[ "$(awk -F';' 'NF > 50 {print $5}' /tmp/fio.out)" = 0 ] || { cat /tmp/fio.out; fail "fio scattered-read-1m reported an error"; }
SUM1M=$(dd if="$DEV" bs=1M count="$MIB" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
[ "$SUM4K" = "$SUM1M" ] || fail "1 MiB reads of the scattered region differ from 4 KiB reads"
echo "scattered 1M reads: $(awk -F';' 'NF > 50 {print $6}' /tmp/fio.out) KiB read at QD32, contents equal to 4k reads"
fio_run seqwrite-1m --rw=write --bs=1M --iodepth=4 --offset="$FIO_SIZE"

# ---------------------------------------------------------------- 4. discard / write zeroes
zero_sum() { dd if=/dev/zero bs=1M count="$1" 2>/dev/null | md5sum | cut -d' ' -f1; }
dev_sum() { dd if="$DEV" bs=1M skip="$1" count="$2" iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1; }
check_zeroes() {  # MiB offset, MiB count, what
    [ "$(dev_sum "$1" "$2")" = "$(zero_sum "$2")" ] || fail "$3: $2 MiB at $1 MiB do not read back as zeroes"
    echo "$3: $2 MiB at $1 MiB read back as zeroes"
}
if [ "$CHECK_DISCARD" = 1 ]; then
    OFF=$((SECTORS / 2048 / 2))   # middle of the disk, MiB
    step "blkdiscard 16 MiB at $OFF MiB"
    dd if=/dev/urandom of="$DEV" bs=1M seek="$OFF" count=16 oflag=direct conv=fsync 2>/dev/null || fail "fill before discard"
    [ "$(dev_sum "$OFF" 16)" != "$(zero_sum 16)" ] || fail "fill before discard reads as zeroes"
    blkdiscard -o $((OFF * 1048576)) -l $((16 * 1048576)) "$DEV" || fail "blkdiscard"
    check_zeroes "$OFF" 16 "discard"

    OFF2=$((OFF + 32))
    step "blkdiscard -z (write zeroes) 8 MiB at $OFF2 MiB"
    dd if=/dev/urandom of="$DEV" bs=1M seek="$OFF2" count=8 oflag=direct conv=fsync 2>/dev/null || fail "fill before write-zeroes"
    blkdiscard -z -o $((OFF2 * 1048576)) -l $((8 * 1048576)) "$DEV" || fail "blkdiscard -z"
    check_zeroes "$OFF2" 8 "write-zeroes"
fi

step "all checks passed"
