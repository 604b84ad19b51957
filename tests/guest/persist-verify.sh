#!/bin/sh
# Runs INSIDE the test guest (sourced as /test.sh) after the backend was killed with
# kill -9 and restarted: mount the disk and verify every checksum the first boot printed
# (delivered as /root/psums), then fsck.
set -eu
DEV=${DEV:-/dev/vda}
MNT=/mnt/verify
fail() { echo "CHECK FAILED: $*"; exit 1; }
[ -s /root/psums ] || fail "no checksums delivered"
e2fsck -fn "$DEV" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck after restart"; }
mkdir -p "$MNT"
mount -t ext4 "$DEV" "$MNT" || fail "mount after restart"
(cd "$MNT" && sha256sum -c /root/psums) || fail "checksums differ after kill -9 and restart"
echo "verified $(wc -l </root/psums) files after restart"
umount "$MNT"
echo "PERSIST-VERIFIED"
