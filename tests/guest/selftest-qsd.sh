#!/usr/bin/env bash
# Self-test of the guest harness against a real vhost-user-blk server: qemu-storage-daemon
# exporting a raw file. Proves build-guest.sh / run-guest.sh / the QEMU config work without
# logdisk, and is the baseline the logdisk guest tests are compared with.
#
#   tests/guest/selftest-qsd.sh [--queues N] [--size SIZE] [--keep] [-- run-guest options...]
#
#   --queues N   virtqueues (qsd export and QEMU device; default 2)
#   --size SIZE  raw disk size for truncate (default 1G)
#   --keep       keep the temp dir (raw file, logs) and print its path
#   -- ...       further options for run-guest.sh (e.g. --timeout 900 --log FILE)
# Exits 0 when tests/guest/example-check.sh passed in the guest.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
QUEUES=2 SIZE=1G KEEP=0 RUN_ARGS=()
log() { printf '[selftest-qsd] %s\n' "$*" >&2; }
die() { printf '[selftest-qsd] ERROR: %s\n' "$*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --queues) QUEUES=$2; shift 2 ;;
        --size)   SIZE=$2; shift 2 ;;
        --keep)   KEEP=1; shift ;;
        --)       shift; RUN_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1'" ;;
    esac
done

T0=$EPOCHREALTIME
"$REPO/scripts/install-test-deps.sh" >&2 || die "installing test dependencies failed"
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found"

# The raw file must be on a filesystem with O_DIRECT (cache.direct=on): not tmpfs.
BASE=${LOGDISK_TEST_TMPDIR:-${TMPDIR:-/tmp}}
if [[ $(stat -f -c %T "$BASE") == tmpfs ]]; then
    BASE=${LOGDISK_CACHE:-${HOME:-/tmp}/.cache/logdisk}
    mkdir -p "$BASE"
fi
TMP=$(mktemp -d "$BASE/logdisk-selftest-qsd.XXXXXX")
QSD_PID="" RG_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$RG_PID" ]] && kill -0 "$RG_PID" 2>/dev/null; then
        kill -TERM "$RG_PID" 2>/dev/null || true   # run-guest.sh stops its QEMU
        wait "$RG_PID" 2>/dev/null || true
    fi
    if [[ -n "$QSD_PID" ]] && kill -0 "$QSD_PID" 2>/dev/null; then
        kill -TERM "$QSD_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QSD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$QSD_PID" 2>/dev/null || true
        wait "$QSD_PID" 2>/dev/null || true
    fi
    if [[ $KEEP -eq 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

RAW="$TMP/disk.raw" SOCK="$TMP/qsd.sock"
truncate -s "$SIZE" "$RAW"

start_qsd() {  # $1 = aio mode
    rm -f "$SOCK"
    # discard=unmap: guest discards punch holes in the raw file (read back as zeroes);
    # qsd's default discard=ignore would drop them.
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=f0,filename=$RAW,cache.direct=on,aio=$1,discard=unmap" \
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$SOCK,writable=on,num-queues=$QUEUES" \
        >"$TMP/qsd-$1.log" 2>&1 &
    QSD_PID=$!
    for _ in $(seq 100); do
        [[ -S "$SOCK" ]] && return 0
        kill -0 "$QSD_PID" 2>/dev/null || break
        sleep 0.1
    done
    wait "$QSD_PID" 2>/dev/null || true
    QSD_PID=""
    return 1
}
AIO=io_uring
if ! start_qsd io_uring; then
    log "qemu-storage-daemon with aio=io_uring failed: $(tail -n 3 "$TMP/qsd-io_uring.log" | tr '\n' ' ')"
    AIO=native
    start_qsd native || die "qemu-storage-daemon failed: $(tail -n 5 "$TMP/qsd-native.log" | tr '\n' ' ')"
fi
log "qemu-storage-daemon $(qemu-storage-daemon --version | head -n1 | awk '{print $3}') (pid $QSD_PID) exports $SIZE raw file, aio=$AIO, $QUEUES queue(s), on $SOCK"

# Linux's virtio-blk uses min(num-queues, vCPUs) queues: give one vCPU per queue (min 2).
CPUS=$(( QUEUES > 2 ? QUEUES : 2 ))
# in the background + wait, so that a TERM to this script is handled at once (cleanup)
"$HERE/run-guest.sh" --socket "$SOCK" --script "$HERE/example-check.sh" --queues "$QUEUES" --cpus "$CPUS" \
    --env EXPECT_QUEUES="$QUEUES" --log "$TMP/console.log" "${RUN_ARGS[@]}" &
RG_PID=$!
set +e
wait "$RG_PID"
RC=$?
set -e
RG_PID=""

if ! kill -0 "$QSD_PID" 2>/dev/null; then
    log "qemu-storage-daemon died during the test"
    [[ $RC -ne 0 ]] || RC=1
fi
kill -TERM "$QSD_PID" 2>/dev/null || true
wait "$QSD_PID" 2>/dev/null || true
QSD_PID=""
if [[ -s "$TMP/qsd-$AIO.log" ]]; then log "qemu-storage-daemon said:"; sed 's/^/    /' "$TMP/qsd-$AIO.log" >&2; fi

TOTAL=$(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')
if [[ $RC -eq 0 ]]; then
    log "PASS in ${TOTAL}s"
else
    log "FAIL (run-guest exit $RC) after ${TOTAL}s"
fi
exit "$RC"
