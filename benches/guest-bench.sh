#!/usr/bin/env bash
# In-guest fio comparison: logdisk vs qemu-storage-daemon, both over vhost-user-blk.
#
#   benches/guest-bench.sh [options]
#
# Builds (or reuses) the test guest (tests/guest/build-guest.sh), starts logdisk (a volume
# in a data dir with the embedded default object store) and qemu-storage-daemon (a raw
# file, cache.direct=on, aio=io_uring) side by side on the same disk, boots the guest
# under QEMU (tests/guest/run-guest.sh: memfd shared memory, the same --queues for both
# disks) and runs the same fio jobs inside on each disk (--direct=1). By default one boot
# carries both disks (vda = logdisk, vdb = qemu-storage-daemon, identical device options)
# and the backends alternate job by job (the order flips every job); --boot-per-backend
# boots a guest per backend instead (alternating order over --rounds).
#
# Both disks are switched to "write back" (/sys/block/vdX/cache_type) first:
# qemu-storage-daemon advertises write-through, and the guest would send it no flushes.
# Each disk is written completely first (1 MiB sequential, QD8), so the reads hit data.
# Jobs (fio names; runtime --runtime after --ramp, each):
#   randread-4k-qd1  randread-4k-qd32  randwrite-4k-qd1  randwrite-4k-qd32
#   read-1m-qd8  write-1m-qd8  randwrite-4k-qd1-fsync (fsync=1)  randrw70-4k-qd16 (70 % reads)
# Host CPU of each backend process (utime+stime from /proc/PID/stat) is sampled when the
# guest prints a job's start marker and again at the next job's start (the guest idles
# --settle seconds after each job, so logdisk's uploads caused by the job are counted).
#
# Options:
#   --runtime S        seconds per fio job (default 10)
#   --ramp S           fio ramp_time per job, not measured (default 2)
#   --settle S         guest sleep after each job (default 3)
#   --size SIZE        disk size = the region fio covers (default 1G)
#   --queues N         virtqueues per disk, both backends (default 2); vCPUs = max(N, 2)
#   --engine E         fio ioengine in the guest: libaio (default) or io_uring
#   --jobs LIST        comma-separated subset of the job names above
#   --rounds N         repeat everything N times; the table shows medians (default 1)
#   --boot-per-backend one guest boot per backend instead of one boot with both disks
#   --mem SIZE         guest RAM (default 1G)
#   --dir DIR          where the data dir and raw file go (not tmpfs; default as native-bench.sh)
#   --out DIR          results (default <target dir>/bench/guest-<date>)
#   --keep             keep the temp dir
#   --no-build         use the binaries already built
#   --ceiling          first measure the disk's own ceiling (benches/disk-ceiling.sh on the same
#                      dir, --size files, ~1 min): the report then sets write-1m-qd8's ratio
#                      beside the best a log can reach against in-place writes on this disk
#   --verbose          stream the guest console
# Output: <out>/guest-report.txt (the table), <out>/guest-results.json (all fio JSON and CPU
# figures), <out>/fio/<backend>-<job>-r<round>.json (raw fio output), console and daemon logs.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { printf '[guest-bench] %s\n' "$*" >&2; }
die() { printf '[guest-bench] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib.sh
source "$HERE/lib.sh"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0; }

RUNTIME=10 RAMP=2 SETTLE=3 SIZE=1G QUEUES=2 ENGINE=libaio JOBS="" ROUNDS=1 PER_BACKEND=0 MEM=1G
DIR="" OUT="" KEEP=0 BUILD=1 VERBOSE=0 CEILING=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runtime) RUNTIME=$2; shift 2 ;;
        --ramp) RAMP=$2; shift 2 ;;
        --settle) SETTLE=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --queues) QUEUES=$2; shift 2 ;;
        --engine) ENGINE=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --boot-per-backend) PER_BACKEND=1; shift ;;
        --mem) MEM=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --verbose) VERBOSE=1; shift ;;
        --ceiling) CEILING=1; shift ;;
        -h|--help) usage ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
for v in RUNTIME RAMP SETTLE QUEUES ROUNDS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--${v,,} must be a whole number"
done
[[ $QUEUES -ge 1 && $ROUNDS -ge 1 && $RUNTIME -ge 1 ]] || die "--queues, --rounds and --runtime must be at least 1"
[[ "$ENGINE" == libaio || "$ENGINE" == io_uring ]] || die "--engine is libaio or io_uring"
ALL_JOBS=(randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32 read-1m-qd8 write-1m-qd8
          randwrite-4k-qd1-fsync randrw70-4k-qd16)
if [[ -n "$JOBS" ]]; then
    IFS=, read -r -a SEL <<<"$JOBS"
    for j in "${SEL[@]}"; do
        [[ " ${ALL_JOBS[*]} " == *" $j "* ]] || die "unknown job '$j' (one of: ${ALL_JOBS[*]})"
    done
else
    SEL=("${ALL_JOBS[@]}")
fi
command -v qemu-storage-daemon >/dev/null || die "qemu-storage-daemon not found (run scripts/install-test-deps.sh)"
command -v python3 >/dev/null || die "python3 not found"

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
if [[ $BUILD -eq 1 ]]; then
    log "building logdisk (release)"
    (cd "$REPO" && cargo build --release --quiet -p logdisk) || die "cargo build failed"
fi
BIN=${LOGDISK_BIN:-$TARGET/release/logdisk}
[[ -x "$BIN" ]] || die "$BIN not found (drop --no-build)"
log "guest image: $("$REPO/tests/guest/build-guest.sh" | tail -n1)"

TMP=$(bench_scratch logdisk-guest-bench) || exit 1
OUT=${OUT:-$TARGET/bench/guest-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/fio"
MARKS="$OUT/cpu-marks.txt"
: >"$MARKS"

PIDS=() RG_PID=""
cleanup() {
    local rc=$?
    if [[ -n "$RG_PID" ]] && kill -0 "$RG_PID" 2>/dev/null; then
        kill -TERM "$RG_PID" 2>/dev/null || true   # run-guest.sh stops its QEMU
        wait "$RG_PID" 2>/dev/null || true
    fi
    stop_pids
    if [[ $KEEP -eq 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


CEILING_REPORT="$OUT/ceiling/ceiling-report.txt"
rm -f "$CEILING_REPORT" # a reused --out dir: never report an older run's ceiling
if [[ $CEILING -eq 1 ]]; then
    log "the disk's own ceiling (benches/disk-ceiling.sh, $SIZE files in $TMP)"
    "$HERE/disk-ceiling.sh" --dir "$TMP" --size "$SIZE" --time 5 --out "$OUT/ceiling" >/dev/null \
        || die "benches/disk-ceiling.sh failed"
fi

# ------------------------------------------------------------------ backends
DD="$TMP/logdisk-data" RAW="$TMP/disk.raw" LSOCK="$TMP/logdisk.sock" QSOCK="$TMP/qsd.sock"
"$BIN" --data-dir "$DD" volume create vm --size "$SIZE" >/dev/null || die "volume create failed"
"$BIN" --data-dir "$DD" serve --socket "$LSOCK" --num-queues "$QUEUES" vm >"$OUT/logdisk.log" 2>&1 &
LPID=$!
PIDS+=("$LPID")
truncate -s "$SIZE" "$RAW"
qemu-storage-daemon \
    --blockdev "driver=file,node-name=f0,filename=$RAW,cache.direct=on,aio=io_uring,discard=unmap" \
    --export "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=$QSOCK,writable=on,num-queues=$QUEUES" \
    >"$OUT/qsd.log" 2>&1 &
QPID=$!
PIDS+=("$QPID")
for _ in $(seq 600); do
    grep -q "^serving volume" "$OUT/logdisk.log" && [[ -S "$QSOCK" ]] && break
    kill -0 "$LPID" 2>/dev/null || die "logdisk exited: $(tail -n 5 "$OUT/logdisk.log")"
    kill -0 "$QPID" 2>/dev/null || die "qemu-storage-daemon exited: $(tail -n 5 "$OUT/qsd.log")"
    sleep 0.1
done
{ [[ -S "$QSOCK" ]] && grep -q "^serving volume" "$OUT/logdisk.log"; } || die "backends did not start"
log "logdisk pid $LPID, qemu-storage-daemon $(qemu-storage-daemon --version | head -n1 | awk '{print $3}') pid $QPID; $SIZE disks, $QUEUES queue(s), fio $ENGINE, ${RUNTIME}s per job (+${RAMP}s ramp), dir $TMP"

# ------------------------------------------------------------------ the guest side
cat >"$TMP/guest-fio.sh" <<'GUEST'
#!/bin/sh
# Runs in the test guest (busybox sh). Env: DEVS ("vda:logdisk vdb:qsd"), JOBS, RUNTIME, RAMP,
# SETTLE, ENGINE, PREFILL (names of backends to write completely first).
set -u
for d in $DEVS; do
    dev=${d%%:*}
    echo "write back" >"/sys/block/$dev/cache_type" || { echo "BENCH-FAILED: cannot set cache_type of $dev"; exit 1; }
    echo "bench: $dev (${d#*:}): cache_type $(cat /sys/block/$dev/cache_type), $(ls /sys/block/$dev/mq | wc -l) queue(s), $(( $(cat /sys/block/$dev/size) / 2048 )) MiB"
done
job_args() {
    case "$1" in
        prefill)                echo "--rw=write --bs=1M --iodepth=8" ;;
        randread-4k-qd1)        echo "--rw=randread --bs=4k --iodepth=1" ;;
        randread-4k-qd32)       echo "--rw=randread --bs=4k --iodepth=32" ;;
        randwrite-4k-qd1)       echo "--rw=randwrite --bs=4k --iodepth=1" ;;
        randwrite-4k-qd32)      echo "--rw=randwrite --bs=4k --iodepth=32" ;;
        read-1m-qd8)            echo "--rw=read --bs=1M --iodepth=8" ;;
        write-1m-qd8)           echo "--rw=write --bs=1M --iodepth=8" ;;
        randwrite-4k-qd1-fsync) echo "--rw=randwrite --bs=4k --iodepth=1 --fsync=1" ;;
        randrw70-4k-qd16)       echo "--rw=randrw --rwmixread=70 --bs=4k --iodepth=16" ;;
    esac
}
# run JOB DEV NAME [time-based args]
run() {
    job=$1 dev=$2 name=$3
    shift 3
    # shellcheck disable=SC2046
    echo "LOGDISK-BENCH-BEGIN $job $name"
    fio --name="$job" --filename="/dev/$dev" --direct=1 --ioengine="$ENGINE" $(job_args "$job") \
        --norandommap --randrepeat=0 --group_reporting --output-format=json "$@" >/tmp/fio.json 2>/tmp/fio.err
    rc=$?
    echo "LOGDISK-BENCH-END $job $name $rc"
    echo "LOGDISK-BENCH-JSON-BEGIN $job $name"
    cat /tmp/fio.json
    echo "LOGDISK-BENCH-JSON-END $job $name"
    if [ "$rc" -ne 0 ]; then
        echo "BENCH-FAILED: fio $job on $name ($dev) exited $rc:"
        cat /tmp/fio.err
        exit 1
    fi
}
for d in $DEVS; do
    case " $PREFILL " in *" ${d#*:} "*) run prefill "${d%%:*}" "${d#*:}" ;; esac
    sleep "$SETTLE"
done
i=0
for job in $JOBS; do
    # alternate which backend goes first
    if [ $((i % 2)) -eq 0 ]; then order=$DEVS; else order=$(echo "$DEVS" | awk '{for (i = NF; i > 0; i--) printf "%s ", $i}'); fi
    for d in $order; do
        run "$job" "${d%%:*}" "${d#*:}" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"
        sleep "$SETTLE"
    done
    i=$((i + 1))
done
echo "LOGDISK-BENCH-BEGIN done -"
GUEST

CPUS=$(( QUEUES > 2 ? QUEUES : 2 ))
SIZE_MIB=$(python3 -c "
import sys
u = {'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30, 't': 1 << 40}
s = sys.argv[1].lower().removesuffix('ib').removesuffix('b')
print((int(s[:-1]) * u[s[-1]] if s[-1] in u else int(s)) >> 20)" "$SIZE")

# boot ROUND "vda:name ..." PREFILL_NAMES SOCKETS...
boot() {
    local round=$1 devs=$2 prefill=$3 n_disks timeout console rc line
    shift 3
    n_disks=$(wc -w <<<"$devs")
    # per disk: prefill at >= 20 MB/s, each job with ramp+settle, plus a few minutes of margin
    timeout=$(( 300 + n_disks * (SIZE_MIB / 20 + ${#SEL[@]} * (RUNTIME + RAMP + SETTLE + 15)) ))
    local tag
    tag="r$round-$(tr ' :' '_-' <<<"$devs")"
    console="$OUT/console-$tag.log"
    local -a sargs=()
    local s
    for s in "$@"; do sargs+=(--socket "$s"); done
    log "round $round: booting the guest with $devs (timeout ${timeout}s)"
    exec {fd}< <("$REPO/tests/guest/run-guest.sh" "${sargs[@]}" --script "$TMP/guest-fio.sh" \
        --queues "$QUEUES" --cpus "$CPUS" --mem "$MEM" --timeout "$timeout" --log "$console" \
        --env DEVS="$devs" --env JOBS="${SEL[*]}" --env RUNTIME="$RUNTIME" --env RAMP="$RAMP" \
        --env SETTLE="$SETTLE" --env ENGINE="$ENGINE" --env PREFILL="$prefill" 2>"$OUT/run-guest-$tag.err")
    RG_PID=$!
    while IFS= read -r line <&"$fd"; do
        [[ $VERBOSE -eq 1 ]] && printf '%s\n' "$line"
        case "$line" in
            LOGDISK-BENCH-BEGIN*|LOGDISK-BENCH-END*)
                # marker round job backend ticks(logdisk) ticks(qsd) time
                read -r m job be _ <<<"$line"
                printf '%s %s %s %s %s %s %s\n' "${m#LOGDISK-BENCH-}" "$round" "$job" "$be" \
                    "$(cpu_ticks "$LPID")" "$(cpu_ticks "$QPID")" "$EPOCHREALTIME" >>"$MARKS"
                [[ $VERBOSE -eq 1 || "$m" != LOGDISK-BENCH-END ]] || log "  $job on $be done"
                ;;
            *BENCH-FAILED*) log "guest: $line" ;;
        esac
    done
    exec {fd}<&-
    set +e
    wait "$RG_PID"
    rc=$?
    set -e
    RG_PID=""
    if [[ $rc -ne 0 ]]; then
        tail -n 5 "$OUT/run-guest-$tag.err" >&2
        tail -n 20 "$console" >&2
        die "guest run failed (run-guest exit $rc); console: $console"
    fi
    kill -0 "$LPID" 2>/dev/null || die "logdisk died during the run"
    kill -0 "$QPID" 2>/dev/null || die "qemu-storage-daemon died during the run"
}

for round in $(seq "$ROUNDS"); do
    first=""
    [[ $round -eq 1 ]] && first="logdisk qsd"
    if [[ $PER_BACKEND -eq 1 ]]; then
        if (( round % 2 == 1 )); then order=(logdisk qsd); else order=(qsd logdisk); fi
        for be in "${order[@]}"; do
            if [[ $be == logdisk ]]; then sock=$LSOCK; else sock=$QSOCK; fi
            pf=""
            [[ -n "$first" ]] && pf=$be
            boot "$round" "vda:$be" "$pf" "$sock"
        done
    else
        boot "$round" "vda:logdisk vdb:qsd" "$first" "$LSOCK" "$QSOCK"
    fi
done

# ------------------------------------------------------------------ report
python3 - "$OUT" "$MARKS" "$(getconf CLK_TCK)" "$SIZE" "$QUEUES" "$ENGINE" "$RUNTIME" "$ROUNDS" "$PER_BACKEND" \
    "${SEL[*]}" "$CEILING_REPORT" "$HERE" <<'PY'
import glob, json, os, re, statistics, sys
out, marks_path, tck, size, queues, engine, runtime, rounds, per_backend, job_order, ceiling_path, here = sys.argv[1:13]
sys.path.insert(0, here)
import ceiling_table
tck = float(tck)

# fio JSON blocks from the consoles
runs = {}  # (round, job, backend) -> fio json
for path in sorted(glob.glob(os.path.join(out, "console-r*.log"))):
    rnd = int(re.search(r"console-r(\d+)-", path).group(1))
    lines = open(path, errors="replace").read().splitlines()
    i = 0
    while i < len(lines):
        m = re.search(r"LOGDISK-BENCH-JSON-BEGIN (\S+) (\S+)", lines[i])
        if m:
            job, be = m.groups()
            j = i + 1
            while j < len(lines) and f"LOGDISK-BENCH-JSON-END {job} {be}" not in lines[j]:
                j += 1
            text = "\n".join(lines[i + 1:j])
            # fio may print notes before the JSON object
            text = text[text.find("{"):] if "{" in text else text
            try:
                data = json.loads(text)
            except ValueError as e:
                sys.exit(f"cannot parse fio JSON for {job} on {be} in {path}: {e}")
            runs[(rnd, job, be)] = data
            with open(os.path.join(out, "fio", f"{be}-{job}-r{rnd}.json"), "w") as f:
                json.dump(data, f, indent=1)
            i = j
        i += 1

# CPU: from a job's BEGIN marker to the next BEGIN marker of the same boot
marks = [l.split() for l in open(marks_path) if l.strip()]
cpu = {}
begins = [m for m in marks if m[0] == "BEGIN"]
for a, b in zip(begins, begins[1:]):
    if a[1] != b[1] or a[2] == "done":
        continue
    col = 4 if a[3] == "logdisk" else 5
    cpu[(int(a[1]), a[2], a[3])] = (int(b[col]) - int(a[col])) / tck

def dirs(job):
    if "randrw" in job:
        return ["read", "write"]
    return ["read"] if "read" in job else ["write"]

def pct(d, key, p):
    try:
        return d[key]["percentile"][p] / 1000.0
    except (KeyError, TypeError):
        return float("nan")

rows = []
for (rnd, job, be), data in sorted(runs.items()):
    j = data["jobs"][0]
    r = {"round": rnd, "job": job, "backend": be, "cpu_seconds": cpu.get((rnd, job, be))}
    r["iops"] = sum(j[d]["iops"] for d in ("read", "write"))
    r["mb_s"] = sum(j[d]["bw_bytes"] for d in ("read", "write")) / 1e6
    for d in dirs(job):
        r[f"{d}_p50_us"] = pct(j[d], "clat_ns", "50.000000")
        r[f"{d}_p99_us"] = pct(j[d], "clat_ns", "99.000000")
    if j.get("sync", {}).get("total_ios"):
        r["sync_p50_us"] = pct(j["sync"], "lat_ns", "50.000000")
        r["sync_p99_us"] = pct(j["sync"], "lat_ns", "99.000000")
    r["ios"] = sum(j[d]["total_ios"] for d in ("read", "write"))
    r["guest_cpu_usr_sys"] = [j["usr_cpu"], j["sys_cpu"]]
    rows.append(r)

present = {r["job"] for r in rows}
jobs = [j for j in job_order.split() if j in present]
def med(job, be, key):
    vals = [r[key] for r in rows if r["job"] == job and r["backend"] == be and r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")
mode = "one guest per backend" if per_backend == "1" else "one guest, both disks, backends alternating per job"
lines = [f"in-guest fio (QEMU TCG): {size} disks, {queues} queue(s), {engine}, direct=1, {runtime} s per job, "
         f"{rounds} round(s), {mode}", ""]
hdr = f"{'job':<24} {'metric':<12} {'logdisk':>10} {'qsd':>10} {'ld/qsd':>7}"
lines += [hdr, "-" * len(hdr)]
for job in jobs:
    metrics = [("MB/s", "mb_s")] if "1m" in job else [("IOPS", "iops")]
    for d in dirs(job):
        short = "" if len(dirs(job)) == 1 else d[0] + " "
        metrics += [(f"{short}p50 us", f"{d}_p50_us"), (f"{short}p99 us", f"{d}_p99_us")]
    if "fsync" in job:
        metrics += [("sync p50 us", "sync_p50_us"), ("sync p99 us", "sync_p99_us")]
    metrics += [("host cpu s", "cpu_seconds")]
    for i, (name, key) in enumerate(metrics):
        a, b = med(job, "logdisk", key), med(job, "qsd", key)
        ratio = a / b if b and b == b and a == a else float("nan")
        lines.append(f"{job if i == 0 else '':<24} {name:<12} {a:>10.1f} {b:>10.1f} {ratio:>7.2f}")
lines += ["", "IOPS, MB/s: higher is better; latencies (fio clat) and CPU: lower is better.",
          "host cpu s: utime+stime of the backend process from the job's start until the next job starts",
          "(the guest idles --settle seconds in between, so uploads caused by the job are included).",
          "randwrite-4k-qd1-fsync: fsync=1, both disks in write-back mode; IOPS are writes/s."]
if os.path.exists(ceiling_path):
    ceil, table = ceiling_table.read(ceiling_path)
    lines += ["", "the disk's own ceiling, measured in this run before the guest (benches/disk-ceiling.sh, fio O_DIRECT):"]
    lines += ["  " + l for l in table]
    if "write-1m-qd8" in ceil and "write-1m-qd8" in jobs:
        inplace, lograte = ceil["write-1m-qd8"]
        ld, qs = med("write-1m-qd8", "logdisk", "mb_s"), med("write-1m-qd8", "qsd", "mb_s")
        best = lograte / inplace
        lines.append(f"  write-1m-qd8: logdisk/qsd {ld / qs:.2f}; a log on this disk reaches {best:.2f} x in-place writes, "
                     f"so logdisk is at {ld / qs / best:.2f} of that ceiling (qsd writes in place)")
text = "\n".join(lines) + "\n"
open(os.path.join(out, "guest-report.txt"), "w").write(text)
json.dump({"rows": rows, "fio": {f"{be}/{job}/r{rnd}": d for (rnd, job, be), d in runs.items()}},
          open(os.path.join(out, "guest-results.json"), "w"))
print(text, end="")
PY
log "report: $OUT/guest-report.txt, raw: $OUT/guest-results.json and $OUT/fio/"
