#!/bin/sh
# Runs INSIDE the test guest for tests/guest/resize-e2e.sh. Boot 1 (MODE=grow): ext4 on
# vda, a file written, RESIZE-NOW printed (the host grows the volume), waits until the
# disk's capacity changes without a reboot, grows the mounted ext4 online with resize2fs,
# writes more than the old disk held, prints checksums "PSUM ...". Boot 2/3 (MODE=verify):
# the capacity is EXPECT_SECTORS and the files match /root/psums.
set -eu
DEV=/dev/vda
MNT=/mnt/r
fail() { echo "CHECK FAILED: $*"; exit 1; }
mkdir -p "$MNT"
if [ "${MODE:-grow}" = verify ]; then
    [ "$(cat /sys/block/vda/size)" = "$EXPECT_SECTORS" ] || fail "capacity $(cat /sys/block/vda/size), want $EXPECT_SECTORS"
    e2fsck -f -n "$DEV" >/dev/null 2>&1 || fail "e2fsck"
    mount -t ext4 -o ro "$DEV" "$MNT" || fail "mount"
    (cd "$MNT" && sha256sum -c /root/psums) || fail "checksums"
    umount "$MNT"
    echo "RESIZE-VERIFIED"
    exit 0
fi
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4"
mount -t ext4 "$DEV" "$MNT" || fail "mount"
dd if=/dev/urandom of="$MNT/before" bs=1M count=8 2>/dev/null || fail "write before"
sync
old=$(cat /sys/block/vda/size)
echo "OLD-SECTORS $old"
echo "RESIZE-NOW"
n=0
while [ "$(cat /sys/block/vda/size)" = "$old" ]; do
    n=$((n + 1))
    [ "$n" -le 1200 ] || fail "the capacity never changed"
    sleep 0.1
done
echo "NEW-SECTORS $(cat /sys/block/vda/size)"
/root/resize2fs "$DEV" >/dev/null 2>&1 || fail "online resize2fs"
echo "FS-KB $(df -k "$MNT" | tail -n 1 | awk '{print $2}')"
# More than the old disk held: some of it lies past the old end.
dd if=/dev/urandom of="$MNT/after" bs=1M count=$((old / 2048 + 16)) 2>/dev/null || fail "write past the old end"
sync
(cd "$MNT" && sha256sum before after) | sed 's/^/PSUM /'
umount "$MNT"
sync
echo "RESIZE-GUEST-DONE"
