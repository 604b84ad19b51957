#!/bin/sh
# Runs INSIDE the test guest started by libvirt (tests/guest/libvirt-e2e.sh): writes 4 MiB
# of random data to vda, syncs, reads it back past the page cache, prints "SUM-A <sha256>";
# prints WAIT-HOTPLUG and waits for vdb (hot-plugged by the host), does the same there
# ("SUM-B"), prints LIBVIRT-GUEST-DONE and stays up until the host destroys the domain.
set -eu
fail() { echo "CHECK FAILED: $*"; exit 1; }
one() { # DEV TAG
    dd if=/dev/urandom of="/root/$2" bs=1M count=4 2>/dev/null || fail "random data"
    dd if="/root/$2" of="$1" bs=1M conv=fsync 2>/dev/null || fail "write $1"
    sync
    echo 3 >/proc/sys/vm/drop_caches
    want=$(sha256sum "/root/$2" | cut -d' ' -f1)
    got=$(dd if="$1" bs=1M count=4 2>/dev/null | sha256sum | cut -d' ' -f1)
    [ "$want" = "$got" ] || fail "$1 reads back differently"
    echo "SUM-$2 $want"
}
one /dev/vda A
echo "WAIT-HOTPLUG"
n=0
while [ ! -b /dev/vdb ]; do
    n=$((n + 1))
    [ "$n" -le 3000 ] || fail "vdb never appeared"
    sleep 0.1
done
one /dev/vdb B
echo "LIBVIRT-GUEST-DONE"
sleep 3600
