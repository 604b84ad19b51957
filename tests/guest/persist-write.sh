#!/bin/sh
# Runs INSIDE the test guest (sourced as /test.sh). Runs the full device check
# (example-check.sh), then leaves a dataset for the crash/restart step: a fresh ext4 with
# random files, their checksums printed as "PSUM <sha256>  <path>" lines, then unmount
# and sync so a FLUSH reaches the backend before the host kills it.
set -eu
. /root/example-check.sh
step "write the dataset that must survive kill -9 of the backend"
mkfs.ext4 -q -F -L persist "$DEV" || fail "mkfs.ext4 (persist)"
mount -t ext4 "$DEV" "$MNT" || fail "mount (persist)"
mkdir -p "$MNT/data"
i=1
while [ "$i" -le 12 ]; do
    dd if=/dev/urandom of="$MNT/data/file$i" bs=256k count=$((i * 3)) 2>/dev/null || fail "write file$i"
    i=$((i + 1))
done
# Text the host looks for in the object store (an encrypted volume must not show it).
yes "logdisk-e2e-plaintext-marker" | head -c 1048576 >"$MNT/data/marker.txt" || fail "write marker.txt"
sync
(cd "$MNT" && find data -type f | sort | xargs sha256sum) >/tmp/psums
sed 's/^/PSUM /' /tmp/psums
umount "$MNT"
sync
echo "PERSIST-WRITTEN"
