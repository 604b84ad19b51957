#!/usr/bin/env bash
# NBD over a unix socket: logdisk (`serve --nbd`) against qemu-nbd on a raw file in the
# same directory (same disk), same run, fio's nbd engine (one connection per job):
# 1 MiB sequential write and read, 4 KiB random write and read at QD32. Prints one table
# with the ratio logdisk / qemu-nbd.
#
#   benches/nbd-bench.sh [--secs 10] [--size 1G] [--dir /var/tmp] [--jobs 1]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/logdisk
SECS=10
SIZE=1G
DIR=/var/tmp
JOBS=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
for t in fio qemu-nbd python3; do command -v $t >/dev/null || { echo "missing $t"; exit 1; }; done
BIN=$(realpath "$BIN")
WORK=$(mktemp -d "$DIR/logdisk-nbd-bench.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" --data-dir "$WORK/dd" volume create v --size "$SIZE" >/dev/null
"$BIN" --data-dir "$WORK/dd" serve v --nbd "unix:$WORK/ld.sock" >"$WORK/ld.log" 2>&1 &
PIDS+=($!)
truncate -s "$SIZE" "$WORK/raw.img"
qemu-nbd -f raw --cache=none --aio=io_uring -x v -t -e 16 --socket="$WORK/q.sock" "$WORK/raw.img" 2>"$WORK/q.log" &
PIDS+=($!)
for _ in $(seq 100); do [[ -S $WORK/ld.sock && -S $WORK/q.sock ]] && break; sleep 0.1; done

run() { # uri rw bs iodepth -> "iops MiB/s"
    fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" --numjobs="$JOBS" \
        --size="$SIZE" --time_based --runtime="$SECS" --group_reporting --output-format=json 2>/dev/null |
        python3 -c '
import json, sys
t = sys.stdin.read(); j = json.loads(t[t.index("{"):])["jobs"][0]
d = j["write"] if j["write"]["io_bytes"] else j["read"]
print("%.0f %.1f" % (d["iops"], d["bw_bytes"] / 2**20))'
}

printf '%-22s %14s %14s %8s\n' "test" "logdisk" "qemu-nbd" "ratio"
for t in "write 1M 8" "read 1M 8" "randwrite 4k 32" "randread 4k 32"; do
    read -r rw bs qd <<<"$t"
    read -r li lb <<<"$(run "nbd+unix:///v?socket=$WORK/ld.sock" "$rw" "$bs" "$qd")"
    read -r qi qb <<<"$(run "nbd+unix:///v?socket=$WORK/q.sock" "$rw" "$bs" "$qd")"
    if [[ $bs = 1M ]]; then a=$lb; b=$qb; unit=MiB/s; else a=$li; b=$qi; unit=IOPS; fi
    printf '%-22s %14s %14s %8s\n' "$rw $bs QD$qd ($unit)" "$a" "$b" "$(python3 -c "print(f'{$a/max($b,0.001):.2f}')")"
done
