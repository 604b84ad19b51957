#!/usr/bin/env bash
# Snapshots and clones with a real guest in QEMU (TCG), all while `logdisk serve` runs:
#   1. boot 1 writes dataset 1 (synced), then keeps writing dataset 2; meanwhile the
#      host takes `snapshot create vm@live` through the daemon's control socket.
#   2. through the daemon: snapshot list, `clone vm@live c`, deleting vm@live is refused.
#   3. restart the daemon serving vm, vm@live (read-only) and c; boot 2 checks the
#      snapshot disk is read-only and equals the clone, the clone recovers with e2fsck and
#      holds dataset 1, the volume holds datasets 1 and 2.
#   4. offline: scrub the volume; exports of vm, vm@live and c are unchanged by it.
# Usage: tests/guest/snapshot-e2e.sh [--bin PATH] [--keep]
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"

e2e_setup snap-e2e "SNAPSHOT E2E"
ld() { "$BIN" --data-dir "$DD" "$@"; }

DD=$T/data
SOCKS=$T/socks
start_daemon() {
    : >"$T/daemon.log"
    "$BIN" --data-dir "$DD" serve --socket-dir "$SOCKS" --num-queues 1 "$@" >>"$T/daemon.log" 2>&1 &
    DAEMON=$!
    for _ in $(seq 150); do [[ $(grep -c "serving volume" "$T/daemon.log") -ge $# ]] && return 0; sleep 0.1; done
    cat "$T/daemon.log"; fail "daemon did not start"
}
stop_daemon() {
    kill -TERM "$DAEMON"
    wait "$DAEMON" && status=0 || status=$?
    DAEMON=
    [[ $status = 0 ]] || { tail -n 20 "$T/daemon.log"; fail "daemon exited $status on SIGTERM"; }
}

GUEST=$("$HERE/build-guest.sh" | tail -n 1)
say "guest image: $GUEST"
ld volume create vm --size 256M >/dev/null
start_daemon vm
say "boot 1: dataset 1, then dataset 2 while the host snapshots"
"$HERE/run-guest.sh" --queues 1 --socket "$SOCKS/vm.sock" --script "$HERE/snapshot-write.sh" --log "$T/boot1.log" >/dev/null &
GUESTPID=$!
for _ in $(seq 1200); do grep -q SNAPSHOT-NOW "$T/boot1.log" 2>/dev/null && break; kill -0 "$GUESTPID" 2>/dev/null || break; sleep 0.1; done
grep -q SNAPSHOT-NOW "$T/boot1.log" || { tail -n 30 "$T/boot1.log"; fail "guest never reached the snapshot point"; }
sleep 1
ld snapshot create vm@live || fail "snapshot create through the daemon"
grep -q DATASET2-DONE "$T/boot1.log" && fail "the guest finished writing before the snapshot: not a mid-write snapshot"
say "snapshot vm@live taken while the guest writes"
wait "$GUESTPID" || { tail -n 30 "$T/boot1.log"; fail "boot 1 failed"; }
GUESTPID=
grep -q SNAPSHOT-WRITE-DONE "$T/boot1.log" || fail "boot 1 did not finish"
grep '^PSUM1 ' "$T/boot1.log" | sed 's/^PSUM1 //' | tr -d '\r' >"$T/psums1"
grep '^PSUM2 ' "$T/boot1.log" | sed 's/^PSUM2 //' | tr -d '\r' >"$T/psums2"
say "boot 1 done: $(wc -l <"$T/psums1") files before the snapshot, $(grep -o 'DATASET2-DONE.*' "$T/boot1.log" | tr -d '\r')"

ld snapshot list vm | grep -q live || fail "snapshot list through the daemon"
ld clone vm@live c >/dev/null || fail "clone through the daemon"
if ld snapshot delete vm@live 2>"$T/err"; then fail "deleting a snapshot a clone depends on was allowed"; fi
grep -q "clones depend on it: c" "$T/err" || { cat "$T/err"; fail "unclear refusal"; }
stop_daemon

start_daemon vm vm@live c
say "boot 2: vda = vm, vdb = vm@live (read-only), vdc = clone c"
"$HERE/run-guest.sh" --queues 1 --socket "$SOCKS/vm.sock" --socket "$SOCKS/vm@live.sock" --socket "$SOCKS/c.sock" \
    --script "$HERE/snapshot-verify.sh" --file "$T/psums1:/root/psums1" --file "$T/psums2:/root/psums2" \
    --log "$T/boot2.log" >/dev/null || { tail -n 40 "$T/boot2.log"; fail "boot 2 checks failed"; }
grep -q SNAPSHOT-VERIFIED "$T/boot2.log" || fail "boot 2 did not verify"
grep -o 'snapshot taken mid-write.*' "$T/boot2.log" | tr -d '\r' | sed 's/^/  /'
stop_daemon

say "offline scrub: exports unchanged"
for v in vm vm@live c; do ld volume export "$v" "$T/pre-$v.raw" >/dev/null; done
ld scrub vm --threshold 0.9
for v in vm vm@live c; do
    ld volume export "$v" "$T/post-$v.raw" >/dev/null
    cmp "$T/pre-$v.raw" "$T/post-$v.raw" || fail "export of $v changed across scrub"
done
say "PASS: mid-write snapshot, snapshot served read-only, clone, refusals, scrub"
