#!/bin/sh
# Runs INSIDE the test guest (sourced as /test.sh) for tests/guest/snapshot-e2e.sh:
# writes dataset 1 and syncs it (checksums as "PSUM1 ..."), prints SNAPSHOT-NOW (the host
# snapshots the volume then), keeps writing dataset 2 for a few seconds while the
# snapshot is taken, prints its checksums as "PSUM2 ...", unmounts and syncs.
set -eu
DEV=${DEV:-/dev/vda}
MNT=/mnt/snap
fail() { echo "CHECK FAILED: $*"; exit 1; }
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4"
mkdir -p "$MNT"
mount -t ext4 "$DEV" "$MNT" || fail "mount"
mkdir -p "$MNT/one" "$MNT/two"
i=1
while [ "$i" -le 8 ]; do
    dd if=/dev/urandom of="$MNT/one/f$i" bs=256k count=$((i * 2)) 2>/dev/null || fail "write one/f$i"
    i=$((i + 1))
done
sync
(cd "$MNT" && find one -type f | sort | xargs sha256sum) | sed 's/^/PSUM1 /'
echo "SNAPSHOT-NOW"
# Dataset 2: written while the host takes the snapshot. Time-bound, so files are
# rewritten in a ring of 64 (64 MiB): a fast host once wrote 200 new files in the 8 s and
# filled the 256 MiB file system (ENOSPC in the guest, not a logdisk error).
end=$(($(cut -d. -f1 /proc/uptime) + 8))
i=1
while [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ] || [ "$i" -le 4 ]; do
    f="$MNT/two/f$(( (i - 1) % 64 + 1 ))"
    dd if=/dev/urandom of="$f" bs=64k count=16 2>/dev/null || fail "write $f (write $i)"
    sync "$f" 2>/dev/null || sync
    i=$((i + 1))
done
echo "DATASET2-DONE $((i - 1)) writes of 1 MiB"
sync
(cd "$MNT" && find one two -type f | sort | xargs sha256sum) | sed 's/^/PSUM2 /'
umount "$MNT"
sync
echo "SNAPSHOT-WRITE-DONE"
