#!/usr/bin/env bash
# Online resize with a real guest in QEMU (TCG), the daemon a host service:
#   1. `logdisk serve` starts with no volume; `attach vm` (64 MiB); boot 1 makes ext4 and
#      writes; the host runs `volume resize vm 192M` while the guest runs; the guest sees
#      the new capacity without a reboot (/sys/block/vda/size), grows the mounted ext4 with
#      resize2fs and writes more than the old disk held.
#   2. the daemon is killed with -9 and started again with no argument (the recorded
#      attachment comes back); boot 2 checks capacity and checksums.
#   3. a fresh data dir on the same object store: boot 3 checks the same.
# Usage: tests/guest/resize-e2e.sh [--bin PATH] [--keep]
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"
RESIZE2FS=$(command -v resize2fs || echo /usr/sbin/resize2fs)
[[ -x $RESIZE2FS ]] || { echo "resize2fs not found (e2fsprogs)" >&2; exit 125; }

e2e_setup resize-e2e "RESIZE E2E"
SOCKS=$T/socks
start_daemon() { # DATA_DIR ARGS...
    local dd=$1; shift
    : >"$T/daemon.log"
    "$BIN" --data-dir "$dd" serve "$@" >>"$T/daemon.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 300); do [[ -S $dd/control.sock ]] && return 0; sleep 0.1; done
    cat "$T/daemon.log"; fail "daemon did not start"
}
wait_socket() { for _ in $(seq 300); do [[ -S $1 ]] && return 0; sleep 0.1; done; fail "socket $1 did not come back"; }
verify_boot() { # NAME
    "$HERE/run-guest.sh" --queues 1 --socket "$SOCKS/vm.sock" --script "$HERE/resize-guest.sh" \
        --env MODE=verify --env "EXPECT_SECTORS=$((192 * 2048))" --file "$T/psums:/root/psums" \
        --log "$T/$1.log" >/dev/null || { tail -n 30 "$T/$1.log"; fail "$1 checks failed"; }
    grep -q RESIZE-VERIFIED "$T/$1.log" || fail "$1 did not verify"
}

GUEST=$("$HERE/build-guest.sh" | tail -n 1)
say "guest image: $GUEST"
DD=$T/data
"$BIN" --data-dir "$DD" volume create vm --size 64M >/dev/null
start_daemon "$DD" --socket-dir "$SOCKS" --num-queues 1
"$BIN" --data-dir "$DD" attach vm >/dev/null || fail "attach"
say "boot 1: ext4, resize while the guest runs, resize2fs online, write past the old end"
"$HERE/run-guest.sh" --queues 1 --socket "$SOCKS/vm.sock" --script "$HERE/resize-guest.sh" \
    --file "$RESIZE2FS:/root/resize2fs" --log "$T/boot1.log" >/dev/null &
GUESTPID=$!
for _ in $(seq 3000); do grep -q RESIZE-NOW "$T/boot1.log" 2>/dev/null && break; kill -0 "$GUESTPID" 2>/dev/null || break; sleep 0.1; done
grep -q RESIZE-NOW "$T/boot1.log" || { tail -n 30 "$T/boot1.log"; fail "guest never reached the resize point"; }
"$BIN" --data-dir "$DD" volume resize vm 192M || fail "resize through the daemon"
wait "$GUESTPID" || { tail -n 30 "$T/boot1.log"; fail "boot 1 failed"; }
GUESTPID=
grep -q RESIZE-GUEST-DONE "$T/boot1.log" || fail "boot 1 did not finish"
say "guest: $(grep -o 'OLD-SECTORS.*' "$T/boot1.log" | tr -d '\r'), $(grep -o 'NEW-SECTORS.*' "$T/boot1.log" | tr -d '\r'), $(grep -o 'FS-KB.*' "$T/boot1.log" | tr -d '\r')"
grep '^PSUM ' "$T/boot1.log" | sed 's/^PSUM //' | tr -d '\r' >"$T/psums"
[[ $(wc -l <"$T/psums") = 2 ]] || fail "checksums missing"

say "kill -9, restart with no argument"
kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=
start_daemon "$DD"
wait_socket "$SOCKS/vm.sock"
verify_boot boot2
kill -TERM "$DAEMON"; wait "$DAEMON" || fail "daemon exit on SIGTERM"; DAEMON=

say "fresh data dir on the same object store"
start_daemon "$T/fresh" --backend "file://$DD/objects" --socket-dir "$SOCKS" --num-queues 1
"$BIN" --data-dir "$T/fresh" attach vm >/dev/null || fail "attach on a fresh data dir"
verify_boot boot3
kill -TERM "$DAEMON"; wait "$DAEMON" || fail "daemon exit on SIGTERM"; DAEMON=
say "PASS: grown online, seen by the guest without a reboot, ext4 grown, data past the old end kept across kill -9 and on a fresh data dir"
