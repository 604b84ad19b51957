#!/usr/bin/env bash
# Native comparison: logdisk vs qemu-storage-daemon, driven by benches/loadgen (no VM).
#
#   benches/native-bench.sh [options]
#
# Both backends run at the same time on the same disk (a temp dir that is not tmpfs):
# logdisk serves a volume of --region bytes from a data dir with the embedded default
# object store (a local directory, uploads running); qemu-storage-daemon exports a raw file
# of the same size (cache.direct=on, aio=io_uring). Both are prefilled with 1 MiB writes.
# Then, --runs times, every job runs on both backends one after the other (the order
# alternates from run to run), and the table shows the median per backend and the ratio
# logdisk/qsd:
#   randwrite-4k-qd32   4 KiB random writes, 32 in flight
#   randread-4k-qd32    4 KiB random reads, 32 in flight (the region was written: cache hit)
#   randread-4k-qd1     the same, one at a time
#   randrw70-4k-qd16    4 KiB random 70 % reads / 30 % writes, 16 in flight (counts both)
#   read-1m-qd8         1 MiB sequential reads, 8 in flight (after the random-write jobs)
#   read-1m-seq-qd8     the same after the region was written again with 1 MiB sequential writes
#   write-1m-qd8        1 MiB sequential writes, 8 in flight
#   writeflush-4k-qd1   4 KiB random write + FLUSH (waited for), one at a time; counts writes
# Backend CPU: utime+stime of the backend process (from /proc/PID/stat) from the start of a
# job until the backend is idle again after it (so logdisk's uploads caused by the job are
# counted), divided by the job's IOs.
#
# Before the jobs (unless --no-ceiling): the disk's own ceiling, and the checksum floor
# (src/bin/crc-floor.rs: the CPU logdisk's two crc32c passes take per 1 MiB write here).
# Then (unless --no-restart) the memory and restart figures, on a separate logdisk data dir:
# a --restart-size volume written completely (1 MiB writes, verify pattern), daemon RSS,
# restart after kill -9 (time until the socket serves a read again), SIGTERM (drain) time,
# restart after the clean stop, and restart from the object store alone (fresh data dir,
# --backend file://<old data dir>/objects); each restart is followed by a read-back check.
#
# Options:
#   --runs N            runs per job and backend (default 3; the median is reported)
#   --time S            measured seconds per job (default 10), after --ramp
#   --ramp S            unmeasured warm-up seconds per job (default 1)
#   --region SIZE       volume and raw file size, the region every job covers (default 1G)
#   --queues N          virtqueues on both backends and in the generator (default 2)
#   --jobs LIST         comma-separated subset of the job names above
#   --restart-size SIZE volume written for the memory/restart figures (default 4G)
#   --no-restart        skip the memory/restart figures
#   --no-ceiling        skip the disk's own ceiling (benches/disk-ceiling.sh on the same dir,
#                       --region sized, run first; ~1 min); the report prints it beside the
#                       ratios: logdisk's 1 MiB write rate against the disk's log rate
#   --only-restart      only the memory/restart figures (RSS right after each read-back
#                       and again 5 s later, once the daemon has trimmed its heap)
#   --settle S          wait at most S seconds for a backend to go idle after a job (default 120)
#   --dir DIR           where data dir and raw file go (default: $LOGDISK_BENCH_TMPDIR, $TMPDIR
#                       or /tmp unless tmpfs, else ~/.cache/logdisk); a fresh temp dir inside
#   --out DIR           results (default <target dir>/bench/native-<date>)
#   --keep              keep the temp dir
#   --logdisk-config F  logdisk's TOML config for the comparison (e.g. [scrub] max_space_amp = 0
#                       to see random overwrites without the space bound's scrub)
#   --serve-arg ARG     one more argument to logdisk serve for the comparison (repeatable;
#                       e.g. --serve-arg --register-memory)
#   --no-build          use the binaries already built
# Environment: CARGO_TARGET_DIR is honoured; LOGDISK_BIN / LOGDISK_LOADGEN override the binaries.
#
# logdisk serves with --metrics on loopback: its engine counters (flushes and one-device-flush
# flushes, writes that waited for scrub or were paced, scrub copies, bytes put) are read
# before and after each of its jobs and reported per 1000 IOs or per byte written.
# Output: <out>/native-report.txt (the table), <out>/native-results.json (every run's raw
# generator report plus CPU figures, and the restart figures), daemon logs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { printf '[native-bench] %s\n' "$*" >&2; }
die() { printf '[native-bench] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib.sh
source "$HERE/lib.sh"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0; }

LD_CONFIG="" RUNS=3 TIME=10 RAMP=1 REGION=1G QUEUES=2 JOBS="" RESTART_SIZE=4G DO_BENCH=1 DO_RESTART=1 SETTLE=120 DO_CEILING=1
LD_SERVE_ARGS=()
# Seconds after a read-back before the idle RSS figure (the daemon trims its heap every 3 s).
IDLE_RSS_WAIT=5
DIR="" OUT="" KEEP=0 BUILD=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS=$2; shift 2 ;;
        --time) TIME=$2; shift 2 ;;
        --ramp) RAMP=$2; shift 2 ;;
        --region) REGION=$2; shift 2 ;;
        --queues) QUEUES=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --restart-size) RESTART_SIZE=$2; shift 2 ;;
        --no-restart) DO_RESTART=0; shift ;;
        --no-ceiling) DO_CEILING=0; shift ;;
        --only-restart) DO_BENCH=0; shift ;;
        --settle) SETTLE=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --logdisk-config) LD_CONFIG=$(realpath "$2"); shift 2 ;;
        --serve-arg) LD_SERVE_ARGS+=("$2"); shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ "$QUEUES" =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found (scripts/install-test-deps.sh installs it)"
command -v python3 >/dev/null || die "python3 not found"

# ------------------------------------------------------------------ binaries
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [[ $BUILD -eq 1 ]]; then
    log "building logdisk and logdisk-loadgen (release)"
    (cd "$REPO" && cargo build --release --quiet -p logdisk -p logdisk-loadgen) || die "cargo build failed"
fi
BIN=${LOGDISK_BIN:-$TARGET/release/logdisk}
LOADGEN=${LOGDISK_LOADGEN:-$TARGET/release/logdisk-loadgen}
[[ -x "$BIN" && -x "$LOADGEN" ]] || die "binaries not found in $TARGET/release (drop --no-build)"

# ------------------------------------------------------------------ dirs + cleanup
TMP=$(bench_scratch logdisk-native-bench) || exit 1
OUT=${OUT:-$TARGET/bench/native-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
RESULTS="$OUT/native-results.jsonl"
SERVE_EXTRA=()
METRICS_URL=""
# counters: the logdisk engine counters (Prometheus text from serve --metrics) as JSON.
counters() {
    [[ -n $METRICS_URL ]] || { echo '{}'; return; }
    python3 -c '
import json, sys, urllib.request
try:
    text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
except OSError:
    print("{}"); sys.exit(0)
out = {}
for line in text.splitlines():
    if line.startswith("logdisk_") and "{" in line:
        name, value = line.split("{", 1)[0][len("logdisk_"):], line.rsplit(" ", 1)[1]
        out[name] = out.get(name, 0.0) + float(value)
print(json.dumps(out))' "$METRICS_URL"
}
# disk_stat: the block device counters (/sys/dev/block/M:m/stat) of the disk under $TMP,
# or nothing (no block device behind it: tmpfs, overlay, btrfs subvolumes).
DISK_STAT=""
if dev=$(stat -c '%d' "$TMP" 2>/dev/null); then
    DISK_STAT="/sys/dev/block/$(((dev >> 8) & 0xfff)):$(((dev & 0xff) | ((dev >> 12) & 0xfff00)))/stat"
    [[ -r $DISK_STAT ]] || DISK_STAT=""
fi
disk_stat() {
    [[ -n $DISK_STAT ]] && cat "$DISK_STAT" 2>/dev/null || true
}
: >"$RESULTS"

PIDS=()
cleanup() {
    local rc=$?
    stop_pids
    if [[ $KEEP -eq 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

CLK_TCK=$(getconf CLK_TCK)
rss_kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The daemon's own memory: anonymous + file-backed RSS, without the shared guest memory it
# maps (RssShmem: the generator's memfd, a VM's RAM), which is the guest's, not logdisk's.
own_kib() { echo $(( $(rss_kib "$1" RssAnon) + $(rss_kib "$1" RssFile) )); }
now() { printf '%s\n' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }

# Wait until PID uses (almost) no CPU: at most 1 tick per 0.5 s, or until --settle runs out.
# Prints the seconds waited.
settle() {
    local pid=$1 t0 a b
    t0=$(now)
    a=$(cpu_ticks "$pid")
    while :; do
        sleep 0.5
        b=$(cpu_ticks "$pid")
        if [[ $((b - a)) -le 1 ]]; then break; fi
        a=$b
        if awk -v a="$t0" -v b="$(now)" -v m="$SETTLE" 'BEGIN {exit !(b - a > m)}'; then
            log "warning: pid $pid still busy after ${SETTLE}s"
            break
        fi
    done
    elapsed "$t0" "$(now)"
}

# start_logdisk DATA_DIR SOCKET LOG [extra global args...]; sets LD_PID
start_logdisk() {
    local dd=$1 sock=$2 logf=$3
    shift 3
    rm -f "$sock"
    "$BIN" --data-dir "$dd" "$@" serve --socket "$sock" --num-queues "$QUEUES" "${SERVE_EXTRA[@]}" vm >>"$logf" 2>&1 &
    LD_PID=$!
    PIDS+=("$LD_PID")
}
# wait_serving PID LOG OLD_LINES: until the daemon prints "serving volume" after line OLD_LINES
wait_serving() {
    local pid=$1 logf=$2 skip=$3
    for _ in $(seq 6000); do
        tail -n +"$((skip + 1))" "$logf" | grep -q "^serving volume" && return 0
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$logf" >&2; die "logdisk exited while starting"; }
        sleep 0.01
    done
    die "logdisk did not start within 60 s"
}
stop_pid() {  # SIGTERM and wait (no time limit: logdisk drains uploads for up to 120 s)
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ------------------------------------------------------------------ the comparison
ALL_JOBS=(randwrite-4k-qd32 randread-4k-qd32 randread-4k-qd1 randrw70-4k-qd16 read-1m-qd8 read-1m-seq-qd8 write-1m-qd8 writeflush-4k-qd1)
job_args() {
    case "$1" in
        randwrite-4k-qd32) echo "--rw randwrite --bs 4k --iodepth 32" ;;
        randread-4k-qd32)  echo "--rw randread --bs 4k --iodepth 32" ;;
        randread-4k-qd1)   echo "--rw randread --bs 4k --iodepth 1" ;;
        randrw70-4k-qd16)  echo "--rw randrw --rwmixread 70 --bs 4k --iodepth 16" ;;
        read-1m-qd8|read-1m-seq-qd8) echo "--rw read --bs 1M --iodepth 8" ;;
        write-1m-qd8)      echo "--rw write --bs 1M --iodepth 8" ;;
        writeflush-4k-qd1) echo "--rw randwrite --bs 4k --iodepth 1 --fsync-every 1" ;;
        # Any other queue depth of the 4k random jobs, for experiments (--jobs randread-4k-qd16).
        randread-4k-qd[0-9]*)  echo "--rw randread --bs 4k --iodepth ${1##*-qd}" ;;
        randwrite-4k-qd[0-9]*) echo "--rw randwrite --bs 4k --iodepth ${1##*-qd}" ;;
        randrw70-4k-qd[0-9]*)  echo "--rw randrw --rwmixread 70 --bs 4k --iodepth ${1##*-qd}" ;;
        *) return 1 ;;
    esac
}
if [[ -n "$JOBS" ]]; then
    IFS=, read -r -a SEL <<<"$JOBS"
    for j in "${SEL[@]}"; do job_args "$j" >/dev/null || die "unknown job '$j' (one of: ${ALL_JOBS[*]})"; done
else
    SEL=("${ALL_JOBS[@]}")
fi

# run_job BACKEND PID SOCKET JOB RUN: one generator run, CPU measured; appends to $RESULTS
run_job() {
    local be=$1 pid=$2 sock=$3 job=$4 run=$5 c0 c1 c2 js settle_s d0 d1
    local -a args
    read -r -a args <<<"$(job_args "$job")"
    if [[ $job == read-1m-seq-qd8 ]]; then
        # Reads after sequential writes: the region written again in order first (unmeasured).
        "$LOADGEN" --socket "$sock" --queues "$QUEUES" --rw write --bs 1M --iodepth 8 --once --quiet >/dev/null \
            || die "$be: sequential rewrite before $job failed"
    fi
    settle "$pid" >/dev/null
    local m0="{}" m1="{}"
    [[ $be == logdisk ]] && m0=$(counters)
    d0=$(disk_stat)
    c0=$(cpu_ticks "$pid")
    js=$("$LOADGEN" --socket "$sock" --queues "$QUEUES" --time "$TIME" --ramp "$RAMP" --json --quiet \
        --label "$be/$job/$run" "${args[@]}") || die "$be $job run $run: the generator failed (see above)"
    c1=$(cpu_ticks "$pid")
    settle_s=$(settle "$pid")
    c2=$(cpu_ticks "$pid")
    [[ $be == logdisk ]] && m1=$(counters)
    d1=$(disk_stat)
    kill -0 "$pid" 2>/dev/null || die "$be died during $job"
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])
tck = float(sys.argv[6])
r.update(backend=sys.argv[2], job=sys.argv[3], run=int(sys.argv[4]),
         cpu_job_seconds=(int(sys.argv[7]) - int(sys.argv[5])) / tck,
         cpu_seconds=(int(sys.argv[8]) - int(sys.argv[5])) / tck,
         settle_seconds=float(sys.argv[9]))
m0, m1 = json.loads(sys.argv[10]), json.loads(sys.argv[11])
if m1:
    r["engine"] = {k: m1[k] - m0.get(k, 0.0) for k in m1 if k.endswith("_total")}
d0, d1 = sys.argv[12].split(), sys.argv[13].split()
if len(d0) >= 17 and len(d1) >= 17:
    # Whole-device counters over the job (ramp included) and its settle: reads, writes,
    # discards and flushes completed; sectors of 512 bytes.
    d = [int(b) - int(a) for a, b in zip(d0, d1)]
    r["disk"] = dict(rd_ios=d[0], rd_bytes=512 * d[2], wr_ios=d[4], wr_bytes=512 * d[6],
                     discards=d[11], flushes=d[15])
print(json.dumps(r))' "$js" "$be" "$job" "$run" "$c0" "$CLK_TCK" "$c1" "$c2" "$settle_s" "$m0" "$m1" "$d0" "$d1" >>"$RESULTS"
    python3 -c '
import json, sys
r = json.loads(sys.argv[1].splitlines()[-1])
ops = max(r["reads"] + r["writes"], 1)
print("[native-bench] %-8s %-18s run %d: %9.0f IOPS %8.1f MB/s  p50 %7.1f us  p99 %8.1f us  cpu %.2f s (%.1f us/IO; %.1f s settle)" % (
    r["backend"], r["job"], r["run"], r["iops"], r["mb_s"], r["lat_us"]["p50"], r["lat_us"]["p99"],
    r["cpu_seconds"], 1e6 * r["cpu_seconds"] / ops, r["settle_seconds"]))' "$(tail -n 1 "$RESULTS")" >&2
}

CEILING_REPORT="$OUT/ceiling/ceiling-report.txt"
CRC_FLOOR="$OUT/crc-floor.txt"
if [[ $DO_BENCH -eq 1 && $DO_CEILING -eq 1 && -x "$TARGET/release/crc-floor" ]]; then
    # The CPU no checksumming backend can go below: logdisk's two crc32c passes per write.
    "$TARGET/release/crc-floor" --seconds 2 >"$CRC_FLOOR" || die "crc-floor failed"
    log "checksum floor: $(cat "$CRC_FLOOR")"
fi
if [[ $DO_BENCH -eq 1 && $DO_CEILING -eq 1 ]]; then
    log "the disk's own ceiling (benches/disk-ceiling.sh, $REGION files in $TMP)"
    "$HERE/disk-ceiling.sh" --dir "$TMP" --size "$REGION" --time 5 --out "$OUT/ceiling" >/dev/null \
        || die "benches/disk-ceiling.sh failed"
fi

if [[ $DO_BENCH -eq 1 ]]; then
    DD="$TMP/logdisk-data" RAW="$TMP/disk.raw"
    LSOCK="$TMP/logdisk.sock" QSOCK="$TMP/qsd.sock"
    "$BIN" --data-dir "$DD" volume create vm --size "$REGION" >/dev/null || die "volume create failed"
    SERVE_EXTRA=(--metrics 127.0.0.1:0 "${LD_SERVE_ARGS[@]}")
    start_logdisk "$DD" "$LSOCK" "$OUT/logdisk.log" ${LD_CONFIG:+--config "$LD_CONFIG"}
    SERVE_EXTRA=()
    LPID=$LD_PID
    wait_serving "$LPID" "$OUT/logdisk.log" 0
    # The engine's counters, read before and after each logdisk job (where its time goes).
    METRICS_URL=$(grep -o 'metrics on http://[^ ]*' "$OUT/logdisk.log" | head -n 1 | sed 's/^metrics on //')

    truncate -s "$REGION" "$RAW"
    qemu-storage-daemon \
        --blockdev "driver=file,node-name=f0,filename=$RAW,cache.direct=on,aio=io_uring,discard=unmap" \
        --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$QSOCK,writable=on,num-queues=$QUEUES" \
        >"$OUT/qsd.log" 2>&1 &
    QPID=$!
    PIDS+=("$QPID")
    for _ in $(seq 100); do [[ -S "$QSOCK" ]] && break; kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
    [[ -S "$QSOCK" ]] || die "qemu-storage-daemon did not start: $(tail -n 5 "$OUT/qsd.log")"
    log "logdisk $("$BIN" --version | awk '{print $2}') pid $LPID, qemu-storage-daemon $(qemu-storage-daemon --version | head -n1 | awk '{print $3}') pid $QPID; region $REGION, $QUEUES queue(s), ${TIME}s per job (+${RAMP}s ramp), $RUNS run(s); dir $TMP"

    for be in logdisk qsd; do
        if [[ $be == logdisk ]]; then p=$LPID s=$LSOCK; else p=$QPID s=$QSOCK; fi
        t0=$(now)
        "$LOADGEN" --socket "$s" --queues "$QUEUES" --rw write --bs 1M --iodepth 8 --once --quiet >/dev/null \
            || die "prefill of $be failed"
        log "prefilled $be in $(elapsed "$t0" "$(now)") s; settling"
        settle "$p" >/dev/null
    done

    for run in $(seq "$RUNS"); do
        for job in "${SEL[@]}"; do
            if (( run % 2 == 1 )); then order=(logdisk qsd); else order=(qsd logdisk); fi
            for be in "${order[@]}"; do
                if [[ $be == logdisk ]]; then run_job logdisk "$LPID" "$LSOCK" "$job" "$run"
                else run_job qsd "$QPID" "$QSOCK" "$job" "$run"; fi
            done
        done
    done
    echo "{\"logdisk_rss_kib\": $(rss_kib "$LPID" VmRSS), \"logdisk_hwm_kib\": $(rss_kib "$LPID" VmHWM), \"qsd_rss_kib\": $(rss_kib "$QPID" VmRSS)}" \
        >"$OUT/rss-after-bench.json"
    du -sk "$DD" | awk '{print "{\"logdisk_data_dir_kib\": " $1 "}"}' >"$OUT/du-after-bench.json"
    stop_pid "$LPID"
    stop_pid "$QPID"
fi

# ------------------------------------------------------------------ memory and restart
RESTART_JSON="$OUT/restart.json"
if [[ $DO_RESTART -eq 1 ]]; then
    RD="$TMP/restart-data" RSOCK="$TMP/restart.sock" RLOG="$OUT/logdisk-restart.log"
    : >"$RLOG"
    # loadgen JSON report -> "<MB/s> <seconds>"
    rate() { python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%.1f %.2f" % (r["mb_s"], r["seconds"]))' "$1"; }
    # start + time to "serving" + time to the first completed read; sets LD_PID, T_SERVE, T_IO
    timed_start() {
        local skip t0
        skip=$(wc -l <"$RLOG")
        t0=$(now)
        start_logdisk "$@"
        wait_serving "$LD_PID" "$RLOG" "$skip"
        T_SERVE=$(elapsed "$t0" "$(now)")
        "$LOADGEN" --socket "$RSOCK" --rw read --bs 4k --iodepth 1 --ops 1 --wait 60 --quiet >/dev/null \
            || die "no read after restart"
        T_IO=$(elapsed "$t0" "$(now)")
    }
    # verify NAME ARGS...: read back the pattern; prints the JSON report
    verify() {
        local name=$1
        shift
        "$LOADGEN" --socket "$RSOCK" --queues "$QUEUES" --verify --seed 42 --json --quiet "$@" \
            || die "read-back check after $name FAILED (data lost or wrong)"
    }

    "$BIN" --data-dir "$RD" volume create vm --size "$RESTART_SIZE" >/dev/null || die "volume create failed"
    start_logdisk "$RD" "$RSOCK" "$RLOG"
    wait_serving "$LD_PID" "$RLOG" 0
    RSS_IDLE=$(own_kib "$LD_PID")
    log "memory/restart: writing $RESTART_SIZE to a fresh volume (1 MiB writes, QD8, verify pattern)"
    W=$("$LOADGEN" --socket "$RSOCK" --queues "$QUEUES" --rw write --bs 1M --iodepth 8 --once --verify --seed 42 \
        --json --quiet) || die "writing $RESTART_SIZE failed"
    read -r W_MBS W_S <<<"$(rate "$W")"
    RSS_WRITTEN=$(own_kib "$LD_PID") HWM_WRITTEN=$(rss_kib "$LD_PID" VmHWM)
    log "wrote $RESTART_SIZE in ${W_S}s ($W_MBS MB/s); RSS ${RSS_WRITTEN} KiB (idle ${RSS_IDLE} KiB, peak ${HWM_WRITTEN} KiB)"
    # One more pattern write with a FLUSH: the flush makes every earlier write durable.
    "$LOADGEN" --socket "$RSOCK" --rw write --bs 4k --iodepth 1 --ops 1 --fsync-every 1 --verify --seed 42 \
        --quiet >/dev/null || die "flush failed"

    # 1. kill -9, restart from the local write buffer.
    kill -KILL "$LD_PID"
    wait "$LD_PID" 2>/dev/null || true
    timed_start "$RD" "$RSOCK" "$RLOG"
    K_SERVE=$T_SERVE K_IO=$T_IO
    log "restart after kill -9: serving after ${K_SERVE}s, first read after ${K_IO}s; reading all back"
    V1=$(verify "kill -9 restart" --rw read --bs 1M --iodepth 8 --once)
    read -r V1_MBS _ <<<"$(rate "$V1")"
    RSS_RESTARTED=$(own_kib "$LD_PID")
    # Again once idle: the daemon gives freed heap back every 3 s (service/memory_trim.rs).
    sleep "$IDLE_RSS_WAIT"
    RSS_RESTARTED_IDLE=$(own_kib "$LD_PID")

    # 2. SIGTERM (drains uploads), restart after the clean stop.
    t0=$(now)
    stop_pid "$LD_PID"
    STOP_S=$(elapsed "$t0" "$(now)")
    log "SIGTERM: stopped after ${STOP_S}s (drain)"
    timed_start "$RD" "$RSOCK" "$RLOG"
    C_SERVE=$T_SERVE C_IO=$T_IO
    log "restart after SIGTERM: serving after ${C_SERVE}s, first read after ${C_IO}s"
    verify "clean restart" --rw randread --bs 4k --iodepth 8 --time 3 >/dev/null
    t0=$(now)
    stop_pid "$LD_PID"
    STOP2_S=$(elapsed "$t0" "$(now)")

    # 3. Restart from the object store alone: a fresh data dir, same backend.
    timed_start "$TMP/fresh-data" "$RSOCK" "$RLOG" --backend "file://$RD/objects"
    O_SERVE=$T_SERVE O_IO=$T_IO
    log "restart from the object store: serving after ${O_SERVE}s, first read after ${O_IO}s; reading all back"
    V3=$(verify "object-store restart" --rw read --bs 1M --iodepth 8 --once)
    read -r V3_MBS _ <<<"$(rate "$V3")"
    RSS_OBJ=$(own_kib "$LD_PID")
    sleep "$IDLE_RSS_WAIT"
    RSS_OBJ_IDLE=$(own_kib "$LD_PID")
    stop_pid "$LD_PID"

    python3 -c '
import json, sys
k = ["restart_size", "rss_idle_kib", "write_mb_s", "write_seconds", "rss_after_write_kib", "hwm_after_write_kib",
     "kill9_restart_serving_s", "kill9_restart_first_io_s", "kill9_readback_mb_s", "rss_after_kill9_restart_kib",
     "sigterm_stop_s", "clean_restart_serving_s", "clean_restart_first_io_s", "second_sigterm_stop_s",
     "objstore_restart_serving_s", "objstore_restart_first_io_s", "objstore_readback_mb_s", "rss_after_objstore_restart_kib",
     "rss_idle_after_kill9_restart_kib", "rss_idle_after_objstore_restart_kib", "idle_rss_wait_s"]
v = sys.argv[1:]
out = {}
for key, val in zip(k, v):
    try:
        out[key] = float(val) if "." in val else int(val)
    except ValueError:
        out[key] = val
print(json.dumps(out, indent=1))' "$RESTART_SIZE" "$RSS_IDLE" "$W_MBS" "$W_S" "$RSS_WRITTEN" "$HWM_WRITTEN" \
        "$K_SERVE" "$K_IO" "$V1_MBS" "$RSS_RESTARTED" "$STOP_S" "$C_SERVE" "$C_IO" "$STOP2_S" \
        "$O_SERVE" "$O_IO" "$V3_MBS" "$RSS_OBJ" \
        "$RSS_RESTARTED_IDLE" "$RSS_OBJ_IDLE" "$IDLE_RSS_WAIT" >"$RESTART_JSON"
fi

# ------------------------------------------------------------------ report
python3 - "$RESULTS" "$RESTART_JSON" "$OUT" "$REGION" "$QUEUES" "$TIME" "$RUNS" "$CEILING_REPORT" "$HERE" "$RAMP" <<'PY'
import json, os, re, statistics, sys
results_path, restart_path, out, region, queues, secs, runs, ceiling_path, here, ramp = sys.argv[1:11]
ramp = float(ramp)
sys.path.insert(0, here)
import ceiling_table
rows = [json.loads(l) for l in open(results_path) if l.strip()]
lines = []
if rows:
    jobs = []
    for r in rows:
        if r["job"] not in jobs:
            jobs.append(r["job"])
    def med(job, be, f):
        vals = [f(r) for r in rows if r["job"] == job and r["backend"] == be]
        return statistics.median(vals) if vals else float("nan")
    def ratio(a, b):
        return a / b if b else float("nan")
    def cpu_io(r):
        """Backend CPU microseconds per IO of one run."""
        return 1e6 * r["cpu_seconds"] / max(r["reads"] + r["writes"], 1)
    def cpu_pair(job):
        """Median CPU per IO of `job`: (logdisk, qsd)."""
        return med(job, "logdisk", cpu_io), med(job, "qsd", cpu_io)
    lines.append(f"native vhost-user-blk comparison: region {region}, {queues} queue(s), {secs} s per job, "
                 f"median of {runs} run(s), backends alternating")
    lines.append("")
    hdr = f"{'job':<18} {'metric':<9} {'logdisk':>10} {'qsd':>10} {'ld/qsd':>7}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for job in jobs:
        big = "1m" in job
        metrics = [("MB/s", lambda r: r["mb_s"])] if big else [("IOPS", lambda r: r["iops"])]
        metrics += [("p50 us", lambda r: r["lat_us"]["p50"]), ("p99 us", lambda r: r["lat_us"]["p99"]),
                    ("cpu us/IO", cpu_io)]
        if any(r.get("read_lat_us") and r.get("write_lat_us") for r in rows if r["job"] == job):
            metrics += [("rd p99 us", lambda r: (r.get("read_lat_us") or {}).get("p99", 0.0)),
                        ("wr p99 us", lambda r: (r.get("write_lat_us") or {}).get("p99", 0.0))]
        for i, (name, f) in enumerate(metrics):
            a, b = med(job, "logdisk", f), med(job, "qsd", f)
            lines.append(f"{job if i == 0 else '':<18} {name:<9} {a:>10.1f} {b:>10.1f} {ratio(a, b):>7.2f}")
    lines.append("")
    lines.append("IOPS/MB/s: higher is better; latency and CPU per IO: lower is better (ratio < 1 favours logdisk).")
    lines.append("cpu us/IO: backend utime+stime from job start until the backend is idle again (includes")
    lines.append("logdisk's uploads caused by the job), per IO completed (ramp included). writeflush: a write")
    lines.append("and its flush are one IO (IOPS = writes/s; latency = write + flush).")
    eng = [r for r in rows if r["backend"] == "logdisk" and r.get("engine")]
    if eng:
        lines.append("Where logdisk's time went (engine counters over the job and its settle, median of the runs;")
        lines.append("per 1000 guest IOs, or per guest byte written): flushes (the guest's and scrub's own), those")
        lines.append("that took one device flush,")
        lines.append("writes that waited for scrub (and for how long, summed over writers) or were paced, scrub bytes read and copied and objects put")
        lines.append("per byte written, device reads of local data per guest read, and the share of new SCOs")
        lines.append("opened in a freshly preallocated file (not a recycled one: each write into it changes")
        lines.append("extent metadata):")
        keys = [("flushes/kIO", "flushes_total", "io"), ("single/kIO", "flushes_single_total", "io"),
                ("scrubwait/kIO", "space_throttled_writes_total", "io"), ("wait ms/kIO", "space_throttled_seconds_total", "ms"),
                ("paced/kIO", "paced_total", "io"),
                ("scrub rd B/B", "scrub_read_bytes_total", "bytes"),
                ("scrub B/B", "scrub_moved_bytes_total", "bytes"), ("put B/B", "uploaded_bytes_total", "bytes"),
                ("dev rd/read", "local_reads_total", "read"), ("fresh SCOs", "sco_files_fresh_total", "share")]
        lines.append(f"  {'job':<18} " + " ".join(f"{k[0]:>13}" for k in keys))
        for job in jobs:
            rs = [r for r in eng if r["job"] == job]
            if not rs:
                continue
            def per(r, key, unit):
                e = r["engine"]
                if unit == "io":
                    return 1000.0 * e.get(key, 0.0) / max(r["reads"] + r["writes"], 1)
                if unit == "ms":
                    return 1e6 * e.get(key, 0.0) / max(r["reads"] + r["writes"], 1)
                if unit == "read":
                    return e.get(key, 0.0) / max(e.get("reads_total", 0.0), 1.0)
                if unit == "share":
                    return e.get(key, 0.0) / max(e.get(key, 0.0) + e.get("sco_files_reused_total", 0.0), 1.0)
                return e.get(key, 0.0) / max(e.get("write_bytes_total", 0.0), 1.0)
            vals = [statistics.median(per(r, k, u) for r in rs) for _, k, u in keys]
            lines.append(f"  {job:<18} " + " ".join(f"{v:>13.2f}" for v in vals))
    disk = [r for r in rows if r.get("disk")]
    if disk:
        lines.append("The disk under each job: its block device's own counters over the job (ramp included) and")
        lines.append("the settle after it (so uploads and scrub count, and anything else on the disk), medians:")
        lines.append("bytes written and read per byte the generator wrote or read, write IOs, flushes and discards")
        lines.append("per 1000 generator IOs (the generator's counts scaled to the same span; \"w\": a job that")
        lines.append("reads nothing, device reads per byte written):")
        span = (float(secs) + ramp) / float(secs)
        nan = float("nan")
        def ios(r):
            return max(r["reads"] + r["writes"], 1) * span
        dkeys = [("wr B/B", lambda r, d, g: d["wr_bytes"] / g[1] if g[1] else nan),
                 # A job that reads nothing: its device reads (scrub's) per byte written.
                 ("rd B/B", lambda r, d, g: d["rd_bytes"] / (g[0] or g[1]) if g[0] or g[1] else nan),
                 ("wr IOs/kIO", lambda r, d, g: 1000.0 * d["wr_ios"] / ios(r)),
                 ("flush/kIO", lambda r, d, g: 1000.0 * d["flushes"] / ios(r)),
                 ("discard/kIO", lambda r, d, g: 1000.0 * d["discards"] / ios(r))]
        lines.append(f"  {'job':<18} {'backend':<8} " + " ".join(f"{k[0]:>12}" for k in dkeys))
        for job in jobs:
            for be in ("logdisk", "qsd"):
                rs = [r for r in disk if r["job"] == job and r["backend"] == be]
                if not rs:
                    continue
                def guest(r):
                    # The generator counts what ran after its ramp; the disk's counters
                    # span the ramp too: scaled to the same span.
                    per = r["bytes"] / max(r["reads"] + r["writes"], 1) * span
                    return r["reads"] * per, r["writes"] * per
                vals = [statistics.median(f(r, r["disk"], guest(r)) for r in rs) for _, f in dkeys]
                # Marked "w": device reads counted per byte written (the job reads nothing).
                marks = ["", "" if any(guest(r)[0] for r in rs) else " w", "", "", ""]
                lines.append(f"  {job:<18} {be:<8} " + " ".join(
                    f"{'-':>12}" if v != v else f"{v:>{12 - len(m)}.2f}{m}" for v, m in zip(vals, marks)))
    lines.append("Per-run figures (logdisk / qsd):")
    for job in jobs:
        for be in ("logdisk", "qsd"):
            rs = [r for r in rows if r["job"] == job and r["backend"] == be]
            f = (lambda r: r["mb_s"]) if "1m" in job else (lambda r: r["iops"])
            lines.append(f"  {job:<18} {be:<8} " + " ".join(f"{f(r):.0f}" for r in sorted(rs, key=lambda r: r["run"])))
    if os.path.exists(ceiling_path):
        ceil, table = ceiling_table.read(ceiling_path)
        lines.append("")
        lines.append("the disk's own ceiling, measured in this run (benches/disk-ceiling.sh, fio O_DIRECT):")
        lines.extend("  " + l for l in table)
        if "write-1m-qd8" in ceil and "write-1m-qd8" in jobs:
            inplace, lograte = ceil["write-1m-qd8"]
            ld = med("write-1m-qd8", "logdisk", lambda r: r["mb_s"])
            qs = med("write-1m-qd8", "qsd", lambda r: r["mb_s"])
            cl, cq = cpu_pair("write-1m-qd8")
            lines.append(f"  write-1m-qd8: logdisk {ld:.0f} MB/s = {ratio(ld, lograte):.2f} x the disk's log rate "
                         f"({lograte:.0f} MB/s; target >= 0.90); qsd {qs:.0f} MB/s = {ratio(qs, inplace):.2f} x in-place "
                         f"({inplace:.0f} MB/s)")
            lines.append(f"  write-1m-qd8: backend CPU per IO logdisk {cl:.0f} us = {ratio(cl, cq):.2f} x qsd's {cq:.0f} us "
                         f"(target <= 1.50)")
            floor = os.path.join(out, "crc-floor.txt")
            if os.path.exists(floor):
                us, gbs = (float(x) for x in open(floor).read().split()[1:3])
                lines.append(f"  write-1m-qd8: the checksum floor alone (2 crc32c passes over 1 MiB, {gbs:.1f} GB/s each, "
                             f"src/bin/crc-floor.rs) is {us:.0f} us = {ratio(us, cq):.2f} x qsd's CPU per IO")
        floor = os.path.join(out, "crc-floor.txt")
        if os.path.exists(floor) and "read-1m-seq-qd8" in jobs:
            check = float(open(floor).read().split()[1]) / 2
            cl, cq = cpu_pair("read-1m-seq-qd8")
            lines.append(f"  read-1m-seq-qd8: backend CPU per IO logdisk {cl:.0f} us = {ratio(cl, cq):.2f} x qsd's {cq:.0f} us; "
                         f"qsd's plus logdisk's read check (one crc32c pass over 1 MiB, {check:.0f} us) is {cq + check:.0f} us: "
                         f"logdisk = {ratio(cl, cq + check):.2f} x that")
        read_cpu = os.path.join(os.path.dirname(ceiling_path), "read-cpu.txt")
        scattered = [r for r in eng if r["job"] == "read-1m-qd8"]
        if os.path.exists(read_cpu) and scattered:
            per_read = float(open(read_cpu).read())
            dev = statistics.median(r["engine"].get("local_reads_total", 0.0) / max(r["engine"].get("reads_total", 0.0), 1.0)
                                    for r in scattered)
            cl, cq = cpu_pair("read-1m-qd8")
            lines.append(f"  read-1m-qd8: backend CPU per IO logdisk {cl:.0f} us = {ratio(cl, cq):.2f} x qsd's {cq:.0f} us; each "
                         f"read took {dev:.0f} device reads, and fio's own CPU for that many 4 KiB reads is "
                         f"{dev * per_read:.0f} us ({per_read:.2f} us each): logdisk = {ratio(cl, dev * per_read):.2f} x that floor")
if os.path.exists(restart_path):
    rs = json.load(open(restart_path))
    lines.append("")
    lines.append(f"logdisk memory and restart ({rs['restart_size']} volume written with 1 MiB sequential writes):")
    size = str(rs['restart_size']).upper().rstrip('IB')
    gib = float(size[:-1]) * {'K': 2**-20, 'M': 2**-10, 'G': 1, 'T': 1024}[size[-1]] if size[-1:].isalpha() else float(size) / 2**30
    lines.append(f"  own memory (RSS without the guest memory it maps); target <= 64 MiB + 2 MiB per written GiB = {64 + 2 * gib:.0f} MiB")
    lines.append(f"  RSS idle before writing          {rs['rss_idle_kib'] / 1024:8.1f} MiB")
    lines.append(f"  write {rs['restart_size']:<5}                      {rs['write_mb_s']:8.1f} MB/s ({rs['write_seconds']} s)")
    lines.append(f"  RSS after writing                {rs['rss_after_write_kib'] / 1024:8.1f} MiB (peak VmHWM, guest memory included: {rs['hwm_after_write_kib'] / 1024:.1f} MiB)")
    lines.append(f"  restart after kill -9            {rs['kill9_restart_serving_s']:8.2f} s to serving, {rs['kill9_restart_first_io_s']:.2f} s to first read")
    lines.append(f"    RSS after it                   {rs['rss_after_kill9_restart_kib'] / 1024:8.1f} MiB; full read-back {rs['kill9_readback_mb_s']} MB/s, data OK")
    if "rss_idle_after_kill9_restart_kib" in rs:
        lines.append(f"    {'RSS %s s later (idle)' % rs['idle_rss_wait_s']:<31}{rs['rss_idle_after_kill9_restart_kib'] / 1024:8.1f} MiB")
    lines.append(f"  SIGTERM stop (upload drain)      {rs['sigterm_stop_s']:8.2f} s (a second stop: {rs['second_sigterm_stop_s']} s)")
    lines.append(f"  restart after SIGTERM            {rs['clean_restart_serving_s']:8.2f} s to serving, {rs['clean_restart_first_io_s']:.2f} s to first read")
    lines.append(f"  restart from the object store    {rs['objstore_restart_serving_s']:8.2f} s to serving, {rs['objstore_restart_first_io_s']:.2f} s to first read")
    lines.append(f"    (fresh data dir)               full read-back {rs['objstore_readback_mb_s']} MB/s, data OK; RSS {rs['rss_after_objstore_restart_kib'] / 1024:.1f} MiB"
                 + (f", {rs['rss_idle_after_objstore_restart_kib'] / 1024:.1f} MiB {rs['idle_rss_wait_s']} s later (idle)" if "rss_idle_after_objstore_restart_kib" in rs else ""))
text = "\n".join(lines) + "\n"
open(os.path.join(out, "native-report.txt"), "w").write(text)
full = {"runs": rows}
if os.path.exists(restart_path):
    full["restart"] = json.load(open(restart_path))
for extra in ("rss-after-bench.json", "du-after-bench.json"):
    p = os.path.join(out, extra)
    if os.path.exists(p):
        full[extra[:-5].replace("-", "_")] = json.load(open(p))
json.dump(full, open(os.path.join(out, "native-results.json"), "w"), indent=1)
print(text, end="")
PY
log "report: $OUT/native-report.txt, raw: $OUT/native-results.json"
