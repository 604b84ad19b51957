#!/usr/bin/env bash
# What the disk under test allows: the best ratio a log-structured backend can reach against
# an in-place one (a raw file, as qemu-storage-daemon serves it), per issue-8 job, from fio
# alone (no logdisk, no qsd, no VM).
#
#   benches/disk-ceiling.sh [--dir DIR] [--size SIZE] [--time S] [--out DIR]
#
# Every figure is fio with O_DIRECT and io_uring on a file in DIR (same default as the other
# benches: not tmpfs). For each job, two IO patterns that move the same data with the same
# bytes in flight:
#   in-place  what a raw-file backend does: IO on a prefilled file (blocks already written).
#   log       the best a log-structured backend can do: writes appended sequentially into a
#             freshly fallocated file (as logdisk's SCOs are), and for reads after random
#             writes, 4 KiB reads at random places (a 1 MiB read then touches 256 runs).
# The jobs:
#   randwrite-4k-qd32  in-place: 4 KiB random writes, 32 in flight. log: the same 128 KiB in
#                      flight as sequential appends, best of 4k x 32, 16k x 8, 32k x 4 and
#                      128k x 1; shown as 4 KiB-write equivalents (MB/s / 4 KiB).
#   write-1m-qd8       in-place: 1 MiB sequential writes into the prefilled file.
#                      log: the same into a freshly fallocated file.
#   read-1m-qd8        in-place: 1 MiB sequential reads. log after random writes: 4 KiB random
#                      reads with 8 x 256 in flight.
# (writeflush-4k-qd1 is left out: a flush-heavy logdisk volume writes into zero-filled spare
# SCOs, so its pattern is the in-place one; the random-read jobs read the same blocks either way.)
# ceiling = log / in-place: no log-structured backend on this disk can beat that ratio for
# the job (it still has metadata, flushes and uploads to pay on top).
#
# Options:
#   --dir DIR    where the test files go (default as benches/native-bench.sh); a temp dir inside
#   --size SIZE  prefilled file size and fresh-file size (default 4G)
#   --time S     seconds per measurement (default 5)
#   --out DIR    results: ceiling-report.txt and the fio JSON (default <target dir>/bench/ceiling-<date>)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
log() { printf '[disk-ceiling] %s\n' "$*" >&2; }
die() { printf '[disk-ceiling] ERROR: %s\n' "$*" >&2; exit 1; }
# shellcheck source=lib.sh
source "$HERE/lib.sh"
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0; }

DIR="" SIZE=4G TIME=5 OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --time) TIME=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) usage ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
command -v fio >/dev/null || die "fio is missing (scripts/install-test-deps.sh installs it)"
[[ $TIME =~ ^[0-9]+$ && $TIME -gt 0 ]] || die "--time must be a positive number of seconds"

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${OUT:-$TARGET/bench/ceiling-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
WORK=$(bench_scratch disk-ceiling)
trap 'rm -rf "$WORK"' EXIT
PREFILLED=$WORK/prefilled FRESH=$WORK/fresh

log "prefilling $SIZE in $WORK"
fio --name=prefill --filename="$PREFILLED" --rw=write --bs=1M --iodepth=8 --ioengine=io_uring \
    --direct=1 --size="$SIZE" --output=/dev/null

# fio NAME FILE ARGS...: one measurement, its JSON saved as OUT/NAME.json
run_fio() {
    local name=$1 file=$2
    shift 2
    fio --name="$name" --filename="$file" --ioengine=io_uring --direct=1 --size="$SIZE" \
        --runtime="$TIME" --output-format=json --output="$OUT/$name.json" "$@"
}
# in-place: time-based IO on the prefilled file
inplace() { run_fio "$1" "$PREFILLED" --time_based "${@:2}"; }
# log: a new fallocated file written front to back once (never over written blocks)
fresh() {
    rm -f "$FRESH"
    sync
    fallocate -l "$SIZE" "$FRESH"
    run_fio "$1" "$FRESH" --fallocate=none "${@:2}"
}

log "randwrite-4k-qd32"
inplace inplace-randwrite-4k-qd32 --rw=randwrite --bs=4k --iodepth=32
for p in 4k:32 16k:8 32k:4 128k:1; do
    fresh "log-append-${p%%:*}-qd${p##*:}" --rw=write --bs="${p%%:*}" --iodepth="${p##*:}"
done
log "write-1m-qd8"
inplace inplace-write-1m-qd8 --rw=write --bs=1M --iodepth=8
fresh log-append-1m-qd8 --rw=write --bs=1M --iodepth=8
log "read-1m-qd8"
inplace inplace-read-1m-qd8 --rw=read --bs=1M --iodepth=8
inplace log-randread-4k-qd2048 --rw=randread --bs=4k --iodepth=2048

python3 - "$OUT" <<'EOF' | tee "$OUT/ceiling-report.txt"
import json, os, sys
out = sys.argv[1]
def fig(name):
    j = json.load(open(os.path.join(out, name + ".json")))["jobs"][0]
    side = j["write"] if j["write"]["io_bytes"] else j["read"]
    return side["iops"], side["bw_bytes"] / 1e6
def iops4k(name):
    return fig(name)[1] * 1e6 / 4096
best = max(("log-append-4k-qd32", "log-append-16k-qd8", "log-append-32k-qd4", "log-append-128k-qd1"), key=iops4k)
rows = [
    ("randwrite-4k-qd32", "IOPS", fig("inplace-randwrite-4k-qd32")[0], iops4k(best), best, ">= 1.5"),
    ("write-1m-qd8", "MB/s", fig("inplace-write-1m-qd8")[1], fig("log-append-1m-qd8")[1], "log-append-1m-qd8", ">= 0.95"),
    ("read-1m-qd8 (after random writes)", "MB/s", fig("inplace-read-1m-qd8")[1], fig("log-randread-4k-qd2048")[1], "log-randread-4k-qd2048", ">= 0.95"),
]
print("| job | unit | in-place | log (best case) | ceiling log/in-place | issue-8 target | log pattern |")
print("| --- | --- | ---: | ---: | ---: | --- | --- |")
for job, unit, a, b, pat, tgt in rows:
    print(f"| {job} | {unit} | {a:,.0f} | {b:,.0f} | {b / a:.2f} | {tgt} | {pat} |".replace(",", " "))
# fio's own CPU (user + system) per 4 KiB random read: what any reader pays the kernel per
# device read, so a 1 MiB read of data scattered in 4 KiB pieces costs at least that many
# times it (native-bench.sh prints logdisk's against it).
j = json.load(open(os.path.join(out, "log-randread-4k-qd2048.json")))["jobs"][0]
us = (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] * 1000 / max(j["read"]["total_ios"], 1)
open(os.path.join(out, "read-cpu.txt"), "w").write(f"{us:.3f}\n")
print(f"fio's CPU per 4 KiB random read (log-randread-4k-qd2048): {us:.2f} us")
EOF
log "report: $OUT/ceiling-report.txt"
