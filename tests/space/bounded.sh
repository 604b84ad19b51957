#!/usr/bin/env bash
# Space stays bounded under sustained overwrites (issue: garbage-driven scrub), with the
# real daemon and the native vhost-user load generator on the embedded default store:
#   1. a volume is filled with a verifiable pattern, then overwritten at full speed with
#      random 4-64 KiB writes and a flush every 200 writes for --secs seconds; the object
#      store's bytes (du of the store directory) are sampled every few seconds and must
#      stay <= --max-amp x the live data after --settle seconds;
#   2. the same while the daemon is killed with -9 and restarted every 2 s (--restart-secs);
#   3. every byte of the volume reads back as written (the load generator's pattern).
# Prints the samples, the peak ratio of each phase and the guest's write rate.
#
#   tests/space/bounded.sh                                  # CI: 1 GiB, 75 s + 60 s
#   tests/space/bounded.sh --secs 1800 --restart-secs 600   # the long run
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/logdisk
LOADGEN=target/release/logdisk-loadgen
SIZE=1G
SECS=75
RESTART_SECS=60
SETTLE=30
MAX_AMP=1.5
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --loadgen) LOADGEN=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --restart-secs) RESTART_SECS=$2; shift 2 ;;
        --settle) SETTLE=$2; shift 2 ;;
        --max-amp) MAX_AMP=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
WORK=$(mktemp -d /tmp/logdisk-space.XXXXXX)
DD=$WORK/dd
SOCK=$WORK/v.sock
PID=
cleanup() {
    [[ -n $PID ]] && kill -9 "$PID" 2>/dev/null
    wait 2>/dev/null
    if [[ ${KEEP:-0} = 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# Any command that ends the test under set -e says which and shows the daemon's last words.
trap 'rc=$?; echo "FAIL: line $LINENO: $BASH_COMMAND (status $rc)"; tail -n 20 "$WORK/daemon.log" 2>/dev/null' ERR

ld() { "$BIN" --data-dir "$DD" "$@"; }
start_daemon() {
    "$BIN" --data-dir "$DD" serve --socket "$SOCK" v >>"$WORK/daemon.log" 2>&1 &
    PID=$!
}
# Scrub deletes objects while du walks the store: a file gone between its listing and
# its stat makes du exit 1 (and, under set -e, ended this test with only du's complaint); what
# vanished is not stored any more, so the total du still prints is the right figure.
store_bytes() { { du -sb "$DD/objects" 2>/dev/null || true; } | cut -f1; }
# The daemon's own figures: live and log (live + garbage, before compression) MiB.
daemon_figures() {
    ld volume info v --json | python3 -c '
import json, sys
j = json.load(sys.stdin); s = j["space"]; m = 1 << 20
print("live %d MiB, log %d MiB, stored %d MiB, pending %d MiB, %s" % (s["live_bytes"] // m,
      s["log_bytes"] // m, j["stored_bytes"] // m, j["pending_upload_bytes"] // m, s["state"]))'
}

ld volume create v --size "$SIZE" >/dev/null
VOL_BYTES=$(ld volume info v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')
start_daemon
echo "filling $SIZE with the pattern"
"$LOADGEN" --socket "$SOCK" --wait 20 --rw write --bs 1M --iodepth 8 --once --verify --seed 7 -q >/dev/null

PEAK=0
check_sample() { # phase elapsed
    local store live ratio
    store=$(store_bytes)
    # The whole volume was written once, so its live data is its size; a running
    # daemon's own figure is printed beside it.
    live=$VOL_BYTES
    local reported=""
    [[ -n $PID ]] && reported=" (daemon: $(daemon_figures 2>/dev/null || echo "no figures"))"
    [[ $live -gt 0 ]] || return 0
    ratio=$(python3 -c "print(f'{$store/$live:.3f}')")
    echo "  $1 t=${2}s store=$((store >> 20)) MiB live=$((live >> 20)) MiB ratio=$ratio$reported"
    if [[ $2 -ge $SETTLE ]]; then
        PEAK=$(python3 -c "print(max($PEAK, $ratio))")
    fi
}

echo "phase 1: ${SECS}s of random 4-64 KiB overwrites, daemon running"
"$LOADGEN" --socket "$SOCK" --rw randwrite --bs 4k --bs-max 64k --iodepth 32 --fsync-every 200 \
    --time "$SECS" --verify --seed 7 --json -q >"$WORK/phase1.json" &
LG=$!
T0=$(date +%s)
while kill -0 $LG 2>/dev/null; do
    sleep 3
    check_sample running $(( $(date +%s) - T0 ))
done
wait $LG
P1=$PEAK
python3 -c "import json; r=json.load(open('$WORK/phase1.json')); print(f'  guest writes: {r[\"bytes\"]/r[\"seconds\"]/1048576:.0f} MiB/s')"
ld volume info v | grep -E "space|scrub|garbage|live" || true

echo "phase 2: ${RESTART_SECS}s of overwrites, daemon killed with -9 every 2 s"
PEAK=0
T0=$(date +%s)
CYCLES=0
while [[ $(( $(date +%s) - T0 )) -lt $RESTART_SECS ]]; do
    [[ -n $PID ]] || start_daemon
    "$LOADGEN" --socket "$SOCK" --wait 20 --rw randwrite --bs 4k --bs-max 64k --iodepth 32 --fsync-every 200 \
        --time 1.5 --verify --seed 7 -q >/dev/null
    sleep 0.5
    kill -9 "$PID"; wait "$PID" 2>/dev/null || true
    PID=
    CYCLES=$((CYCLES + 1))
    check_sample restart $(( $(date +%s) - T0 ))
done
P2=$PEAK
start_daemon
echo "phase 3: every byte reads back"
"$LOADGEN" --socket "$SOCK" --wait 20 --rw read --bs 1M --iodepth 8 --once --verify --seed 7 -q >/dev/null
echo "peak store/live after ${SETTLE}s: running $P1, with $CYCLES kill -9 restarts $P2 (limit $MAX_AMP)"
python3 -c "import sys; sys.exit(0 if max($P1, $P2) <= $MAX_AMP else 1)" || {
    echo "FAIL: the object store grew above $MAX_AMP x the live data"
    tail -20 "$WORK/daemon.log"
    exit 1
}
echo "PASS"
