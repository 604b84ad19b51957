#!/usr/bin/env bash
# End-to-end check of logdisk with a real Linux guest in QEMU (TCG):
#   1. `logdisk serve` a fresh 1 GiB volume; boot the guest: device facts, mkfs, files +
#      checksums, remount, fio --verify=crc32c (4k random, 1M sequential), discard and
#      write-zeroes read back as zeroes; then write a dataset and sync.
#   2. kill -9 the daemon, restart it on the same data dir.
#   3. boot a second VM: fsck, mount, every checksum from boot 1 matches.
#   4. SIGTERM the daemon (clean shutdown: drains uploads); export the volume from a fresh
#      data dir on the same backend and check it equals an export from the original one.
# The volume is encrypted (`--encrypt --key-file`): the object store must not hold the text
# the guest wrote, the fresh data dir needs the key and refuses without it. --plain: a
# plain volume (then the text must be found there: the scan can fail).
# Usage: tests/guest/logdisk-e2e.sh [--bin PATH] [--queues N] [--plain] [--keep]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${LOGDISK_BIN:-$ROOT/target/release/logdisk}
QUEUES=2
KEEP=0
PLAIN=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --queues) QUEUES=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --plain) PLAIN=1; shift ;;
        *) echo "usage: $0 [--bin PATH] [--queues N] [--plain] [--keep]" >&2; exit 125 ;;
    esac
done
[[ -x $BIN ]] || { echo "logdisk binary $BIN not found (cargo build --release)" >&2; exit 125; }

T=$(mktemp -d /tmp/logdisk-e2e.XXXXXX)
DAEMON=
cleanup() {
    [[ -n $DAEMON ]] && kill -9 "$DAEMON" 2>/dev/null || true
    if [[ $KEEP = 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
say() { echo "[e2e $(date +%T)] $*"; }
fail() { echo "E2E FAILED: $*" >&2; exit 1; }

DD=$T/data
SOCK=$T/vm.sock
start_daemon() {
    "$BIN" --data-dir "$DD" serve --socket "$SOCK" --num-queues "$QUEUES" vm >>"$T/daemon.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 100); do [[ -S $SOCK ]] && grep -q "serving volume" "$T/daemon.log" && return 0; sleep 0.1; done
    cat "$T/daemon.log"; fail "daemon did not start"
}

GUEST=$("$HERE/build-guest.sh" | tail -n 1)
say "guest image: $GUEST"
KEYARGS=()
if [[ $PLAIN = 0 ]]; then
    head -c 32 /dev/urandom >"$T/vm.key"
    KEYARGS=(--key-file "$T/vm.key")
    "$BIN" --data-dir "$DD" volume create vm --size 1G --encrypt --key-file "$T/vm.key"
else
    "$BIN" --data-dir "$DD" volume create vm --size 1G
fi
start_daemon
say "daemon pid $DAEMON; boot 1"
"$HERE/run-guest.sh" --socket "$SOCK" --queues "$QUEUES" --cpus "$QUEUES" --script "$HERE/persist-write.sh" \
    --file "$HERE/example-check.sh" --env EXPECT_QUEUES="$QUEUES" --log "$T/boot1.log" >/dev/null \
    || { tail -n 40 "$T/boot1.log"; fail "boot 1 checks failed"; }
grep -q PERSIST-WRITTEN "$T/boot1.log" || fail "boot 1 did not write the dataset"
grep '^PSUM ' "$T/boot1.log" | sed 's/^PSUM //' | tr -d '\r' >"$T/psums"
say "boot 1 passed: $(wc -l <"$T/psums") files written; serial $(grep -o 'serial: .*' "$T/boot1.log" | head -1)"
grep -q "serial: vm" "$T/boot1.log" || fail "GET_ID serial is not the volume name"

say "kill -9 the daemon"
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=
start_daemon
say "daemon restarted (pid $DAEMON); boot 2"
"$HERE/run-guest.sh" --socket "$SOCK" --queues "$QUEUES" --cpus "$QUEUES" --script "$HERE/persist-verify.sh" \
    --file "$T/psums:/root/psums" --log "$T/boot2.log" >/dev/null \
    || { tail -n 40 "$T/boot2.log"; fail "boot 2: data lost after kill -9 + restart"; }
grep -q PERSIST-VERIFIED "$T/boot2.log" || fail "boot 2 did not verify"
say "boot 2 passed: every checksum matches after kill -9 and restart"

say "SIGTERM the daemon (clean shutdown)"
kill -TERM "$DAEMON"
for _ in $(seq 600); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.2; done
wait "$DAEMON" && status=0 || status=$?
DAEMON=
[[ $status = 0 ]] || { tail -n 20 "$T/daemon.log"; fail "daemon exited $status on SIGTERM"; }
grep -q "flushed and uploaded" "$T/daemon.log" || fail "clean shutdown did not drain uploads"
"$BIN" --data-dir "$DD" volume export vm "$T/a.raw" >/dev/null
if [[ $PLAIN = 0 ]]; then
    "$BIN" --data-dir "$T/nokey" --backend "file://$DD/objects" volume export vm "$T/c.raw" >"$T/nokey.out" 2>&1 \
        && fail "a fresh data dir exported the encrypted volume without its key"
    grep -q "is encrypted with key id" "$T/nokey.out" || { cat "$T/nokey.out"; fail "no clear error without the key"; }
    grep -rlq "logdisk-e2e-plaintext-marker" "$DD/objects" && fail "the guest's text is readable in the object store"
    say "encrypted: no object holds the guest's text; without the key: $(head -c 120 "$T/nokey.out")"
else
    grep -rlq "logdisk-e2e-plaintext-marker" "$DD/objects" || fail "the scan does not find the guest's text in a plain volume"
fi
"$BIN" --data-dir "$T/fresh" --backend "file://$DD/objects" volume export vm "$T/b.raw" "${KEYARGS[@]}" >/dev/null
cmp "$T/a.raw" "$T/b.raw" || fail "export from the object store alone differs"
say "PASS: guest checks, kill -9 + restart, clean shutdown, restart from the object store ($([[ $PLAIN = 0 ]] && echo encrypted || echo plain))"
