#!/bin/sh
# Runs INSIDE the test guest (sourced as /test.sh) for tests/guest/snapshot-e2e.sh, with
# three disks: vda = the volume, vdb = its snapshot served read-only (VOL@SNAP),
# vdc = a clone of that snapshot. Checks: vdb is read-only and equals the fresh clone;
# the clone (a crash-consistent image taken mid-write) recovers with e2fsck and holds
# dataset 1 intact; the volume holds datasets 1 and 2.
set -eu
fail() { echo "CHECK FAILED: $*"; exit 1; }
for d in vda vdb vdc; do [ -b /dev/$d ] || fail "/dev/$d missing"; done
[ "$(cat /sys/block/vdb/ro)" = 1 ] || fail "the snapshot disk is not read-only"
if dd if=/dev/zero of=/dev/vdb bs=4k count=1 oflag=direct 2>/dev/null; then fail "write to the snapshot succeeded"; fi
cmp /dev/vdb /dev/vdc || fail "a fresh clone differs from its snapshot"
echo "snapshot disk is read-only and equals its clone"
rc=0
e2fsck -fy /dev/vdc >/tmp/fsck-clone.log 2>&1 || rc=$?
[ "$rc" -le 1 ] || { cat /tmp/fsck-clone.log; fail "e2fsck of the snapshot's clone: exit $rc"; }
mkdir -p /mnt/clone /mnt/vol
mount -t ext4 /dev/vdc /mnt/clone || fail "mount the clone"
(cd /mnt/clone && sha256sum -c /root/psums1) || fail "dataset 1 differs in the snapshot"
echo "snapshot taken mid-write: e2fsck exit $rc, dataset 1 intact, $(ls /mnt/clone/two | wc -l) files of dataset 2 present"
umount /mnt/clone
e2fsck -fn /dev/vda >/tmp/fsck-vol.log 2>&1 || { cat /tmp/fsck-vol.log; fail "e2fsck of the volume"; }
mount -t ext4 /dev/vda /mnt/vol || fail "mount the volume"
(cd /mnt/vol && sha256sum -c /root/psums2) >/dev/null || fail "datasets 1+2 differ in the volume"
umount /mnt/vol
echo "SNAPSHOT-VERIFIED"
