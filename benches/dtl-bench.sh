#!/usr/bin/env bash
# DTL cost: the same writes with the Distributed Transaction Log off, async and sync, the
# DTL server on another "host" across a veth pair. Needs root (network namespaces).
#
#   sudo benches/dtl-bench.sh [options]
#
# Two network namespaces joined by a veth pair (a private 10.213.x.0/24, names unique per
# run, deleted on exit): `logdisk dtl serve` runs in host 2's, the logdisk daemon in host
# 1's, with the embedded default object store (a local directory, uploads running, so the
# DTL is trimmed as SCOs are uploaded as it would be in production). For each DTL mode
# (none, async, sync) a fresh data dir gets a --size volume (--prefill: written once with
# 1 MiB writes first), a daemon serves it, and logdisk-loadgen runs, --time seconds each
# after a --ramp:
#   randwrite-4k-qd32    4 KiB random writes, 32 in flight (no flushes)
#   writeflush-4k-qd1    4 KiB random write + FLUSH (waited for), one at a time; counts writes
# The table shows IOPS and latency p50/p99 per mode, and the ratio to mode none. In sync
# mode every write waits for the DTL server; in async mode a FLUSH does. The veth round trip
# (a TCP connect, host 1 to host 2) is printed for reference.
#
# Options:
#   --time S        measured seconds per job (default 10)
#   --ramp S        unmeasured warm-up seconds per job (default 1)
#   --size SIZE     volume size, the region every job covers (default 1G)
#   --prefill       write the whole volume once before the jobs (not measured)
#   --queues N      virtqueues (daemon and generator; default 1)
#   --modes LIST    comma-separated subset of none,async,sync (default all three)
#   --dir DIR       where data dirs go (default: $LOGDISK_BENCH_TMPDIR, $TMPDIR or /tmp
#                   unless tmpfs, else ~/.cache/logdisk); a fresh temp dir inside
#   --out DIR       results (default <target dir>/bench/dtl-<date>)
#   --plain         DTL in plain text (server --insecure, [dtl] insecure = true) instead
#                   of TLS (a throwaway CA from tests/dtl/make-certs.sh), to see TLS's cost
#   --keep          keep the temp dir
#   --no-build      use the binaries already built
# Environment: CARGO_TARGET_DIR is honoured; LOGDISK_BIN / LOGDISK_LOADGEN override the binaries.
#
# Output: <out>/dtl-report.txt (the table), <out>/dtl-results.jsonl (every job's raw
# generator report), daemon and DTL server logs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { printf '[dtl-bench] %s\n' "$*" >&2; }
die() { printf '[dtl-bench] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0; }
# shellcheck source=lib.sh
source "$HERE/lib.sh"
LD_TAG=dtl-bench
# shellcheck source=../tests/dtl/lib.sh
source "$REPO/tests/dtl/lib.sh"

TIME=10 RAMP=1 SIZE=1G PREFILL=0 QUEUES=1 MODES="none,async,sync" DIR="" OUT="" KEEP=0 BUILD=1 PLAIN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --time) TIME=$2; shift 2 ;;
        --ramp) RAMP=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --prefill) PREFILL=1; shift ;;
        --queues) QUEUES=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --plain) PLAIN=1; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
IFS=, read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do [[ $m =~ ^(none|async|sync)$ ]] || die "unknown mode '$m' (none, async, sync)"; done
why=$(ld_preflight) || die "$why"

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [[ $BUILD -eq 1 ]]; then
    log "building logdisk and logdisk-loadgen (release)"
    (cd "$REPO" && cargo build --release --quiet -p logdisk -p logdisk-loadgen) || die "cargo build failed"
fi
BIN=${LOGDISK_BIN:-$TARGET/release/logdisk}
LOADGEN=${LOGDISK_LOADGEN:-$TARGET/release/logdisk-loadgen}
[[ -x "$BIN" && -x "$LOADGEN" ]] || die "binaries not found in $TARGET/release (drop --no-build)"
"$BIN" volume create --help | grep -q -- '--dtl' || die "this logdisk build has no 'volume create --dtl'"

TMP=$(bench_scratch logdisk-dtl-bench) || exit 1
OUT=${OUT:-$TARGET/bench/dtl-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS="$OUT/dtl-results.jsonl"
: >"$RESULTS"

cleanup() {
    local rc=$?
    trap - EXIT
    ld_cleanup_procs
    ld_netns_down
    if [[ $KEEP -eq 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ld_netns_up
DTL_PORT=$(ld_free_ports "$NS2" "$IP2" 1)
DTL_ADDR="$IP2:$DTL_PORT"
head -c 32 /dev/urandom | base64 >"$TMP/dtl.token"
chmod 600 "$TMP/dtl.token"
if [[ $PLAIN = 1 ]]; then
    printf '[dtl]\ntoken_file = "%s"\ninsecure = true\n' "$TMP/dtl.token" >"$TMP/logdisk.toml"
    TLS_ARGS=(--insecure)
else
    "$REPO/tests/dtl/make-certs.sh" "$TMP/certs" "IP:$IP2" || die "cannot make TLS certificates (openssl)"
    printf '[dtl]\ntoken_file = "%s"\nca_file = "%s"\n' "$TMP/dtl.token" "$TMP/certs/ca.pem" >"$TMP/logdisk.toml"
    TLS_ARGS=(--tls-cert "$TMP/certs/server.pem" --tls-key "$TMP/certs/server.key")
fi
log "DTL transport: $([[ $PLAIN = 1 ]] && echo 'plain text (--plain)' || echo TLS)"
mkdir -p "$TMP/dtl"
(cd "$TMP/dtl" && exec ip netns exec "$NS2" "$BIN" dtl serve --listen "$DTL_ADDR" --dir "$TMP/dtl/logs" \
    --token-file "$TMP/dtl.token" "${TLS_ARGS[@]}") >"$OUT/dtl-server.log" 2>&1 &
DTL_PID=$!
ld_track "$DTL_PID"
ld_wait_port "$NS1" "$IP2" "$DTL_PORT" 100 || die "the DTL server did not start: $(tail -n 5 "$OUT/dtl-server.log")"
# veth round trip for reference: median of 20 TCP connects from host 1
RTT_US=$(ip netns exec "$NS1" "$LD_PY" -c '
import socket, statistics, sys, time
ts = []
for _ in range(20):
    t = time.perf_counter(); s = socket.create_connection((sys.argv[1], int(sys.argv[2]))); ts.append(time.perf_counter() - t); s.close()
print("%.0f" % (1e6 * statistics.median(ts)))' "$IP2" "$DTL_PORT")
log "DTL server pid $DTL_PID at $DTL_ADDR ($NS2); daemon in $NS1; TCP connect over the veth ~${RTT_US} us"

job_args() {
    case "$1" in
        randwrite-4k-qd32) echo "--rw randwrite --bs 4k --iodepth 32" ;;
        writeflush-4k-qd1) echo "--rw randwrite --bs 4k --iodepth 1 --fsync-every 1" ;;
    esac
}
JOBS=(randwrite-4k-qd32 writeflush-4k-qd1)

for mode in "${MODE_LIST[@]}"; do
    dd="$TMP/data-$mode" sock="$TMP/$mode.sock" dlog="$OUT/logdisk-$mode.log"
    dtl_args=()
    [[ $mode == none ]] || dtl_args=(--dtl "$DTL_ADDR" --dtl-mode "$mode")
    ip netns exec "$NS1" "$BIN" --data-dir "$dd" --config "$TMP/logdisk.toml" volume create "vol-$mode" \
        --size "$SIZE" "${dtl_args[@]}" >/dev/null || die "volume create ($mode) failed"
    ip netns exec "$NS1" "$BIN" --data-dir "$dd" --config "$TMP/logdisk.toml" serve --socket "$sock" \
        --num-queues "$QUEUES" "vol-$mode" >"$dlog" 2>&1 &
    pid=$!
    ld_track "$pid"
    for _ in $(seq 600); do grep -q "^serving volume" "$dlog" && break; ld_alive "$pid" || break; sleep 0.1; done
    grep -q "^serving volume" "$dlog" || die "logdisk ($mode) did not start: $(tail -n 5 "$dlog")"
    state() { "$BIN" --data-dir "$dd" volume info "vol-$mode" --json | "$LD_PY" -c 'import json,sys; print((json.load(sys.stdin).get("dtl") or {}).get("state","off"))'; }
    if [[ $PREFILL -eq 1 ]]; then
        t0=$(ld_now)
        "$LOADGEN" --socket "$sock" --queues "$QUEUES" --rw write --bs 1M --iodepth 8 --once --quiet >/dev/null \
            || die "prefill ($mode) failed"
        log "$mode: prefilled $SIZE in $(ld_elapsed "$t0" "$(ld_now)") s"
    fi
    for job in "${JOBS[@]}"; do
        read -r -a args <<<"$(job_args "$job")"
        st=$(state)
        js=$("$LOADGEN" --socket "$sock" --queues "$QUEUES" --time "$TIME" --ramp "$RAMP" --json --quiet \
            --label "$mode/$job" "${args[@]}") || die "$mode $job: the generator failed"
        st2=$(state)
        "$LD_PY" -c '
import json, sys
r = json.loads(sys.argv[1]); r.update(mode=sys.argv[2], job=sys.argv[3], dtl_state_before=sys.argv[4], dtl_state_after=sys.argv[5])
print(json.dumps(r))' "$js" "$mode" "$job" "$st" "$st2" >>"$RESULTS"
        "$LD_PY" -c '
import json, sys
r = json.loads(sys.argv[1])
print("[dtl-bench] %-5s %-18s %9.0f IOPS  p50 %8.1f us  p99 %8.1f us  (DTL %s -> %s)" % (
    r["mode"], r["job"], r["iops"], r["lat_us"]["p50"], r["lat_us"]["p99"], r["dtl_state_before"], r["dtl_state_after"]))' \
            "$(tail -n 1 "$RESULTS")" >&2
    done
    ld_stop "$pid" 150 || log "warning: logdisk ($mode) exited non-zero on SIGTERM"
done

"$LD_PY" - "$RESULTS" "$OUT" "$SIZE" "$TIME" "$QUEUES" "$PREFILL" "$RTT_US" <<'PY'
import json, os, sys
path, out, size, secs, queues, prefill, rtt = sys.argv[1:8]
rows = [json.loads(l) for l in open(path) if l.strip()]
modes = [m for m in ("none", "async", "sync") if any(r["mode"] == m for r in rows)]
jobs = ["randwrite-4k-qd32", "writeflush-4k-qd1"]
get = lambda m, j: next((r for r in rows if r["mode"] == m and r["job"] == j), None)
lines = [f"DTL cost over a veth (TCP connect ~{rtt} us): volume {size}{' prefilled' if prefill == '1' else ''}, "
         f"{queues} queue(s), {secs} s per job, embedded file object store, uploads running", ""]
hdr = f"{'job':<18} {'metric':<8}" + "".join(f" {m:>10}" for m in modes) + "".join(f" {m + '/none':>11}" for m in modes if m != "none")
lines += [hdr, "-" * len(hdr)]
for j in jobs:
    for i, (name, f) in enumerate([("IOPS", lambda r: r["iops"]), ("p50 us", lambda r: r["lat_us"]["p50"]),
                                   ("p99 us", lambda r: r["lat_us"]["p99"])]):
        vals = {m: (f(get(m, j)) if get(m, j) else float("nan")) for m in modes}
        line = f"{j if i == 0 else '':<18} {name:<8}" + "".join(f" {vals[m]:>10.1f}" for m in modes)
        if "none" in vals:
            line += "".join(f" {vals[m] / vals['none'] if vals['none'] else float('nan'):>11.2f}" for m in modes if m != "none")
        lines.append(line)
lines += ["", "writeflush: a write and its flush are one IO (IOPS = writes/s; latency = write + flush).",
          "DTL state before -> after each job: " + ", ".join(f"{r['mode']}/{r['job']}: {r['dtl_state_before']} -> {r['dtl_state_after']}" for r in rows if r["mode"] != "none")]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "dtl-report.txt"), "w").write(text)
print(text, end="")
PY
log "report: $OUT/dtl-report.txt, raw: $RESULTS"
