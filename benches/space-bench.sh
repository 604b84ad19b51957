#!/usr/bin/env bash
# Space and write amplification under sustained random overwrites, and guest IO with and
# without background scrub, on the embedded default store (real daemon, native
# vhost-user load generator). Prints:
#   - every --sample seconds: object-store bytes, live bytes, space amplification
#     (store / live), write amplification (bytes put to the store / bytes the guest
#     wrote), the guest's write rate in that interval, scrub passes;
#   - objects put and delete requests per GiB the guest wrote (a delete request carries
#     up to 1000 keys, as S3's DeleteObjects);
#   - 4k random reads QD32 and 70/30 random read/write QD16 while a scrub pass runs
#     and after it, same run, and their ratio.
#
#   benches/space-bench.sh                      # 30 minutes, 1 GiB, overwrites on 50 %
#   benches/space-bench.sh --secs 120 --hot 100 # a short run over the whole volume
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/logdisk
LOADGEN=target/release/logdisk-loadgen
SIZE=1G
SECS=1800
HOT=50
SAMPLE=30
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --loadgen) LOADGEN=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --secs) SECS=$2; shift 2 ;;
        --hot) HOT=$2; shift 2 ;;
        --sample) SAMPLE=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x $BIN && -x $LOADGEN ]] || cargo build --release --workspace
WORK=$(mktemp -d /tmp/logdisk-space-bench.XXXXXX)
DD=$WORK/dd
SOCK=$WORK/v.sock
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
ld() { "$BIN" --data-dir "$DD" "$@"; }
start_daemon() { # [config]
    local cfg=()
    [[ -n ${1:-} ]] && cfg=(--config "$1")
    "$BIN" --data-dir "$DD" "${cfg[@]}" serve --socket "$SOCK" --metrics "127.0.0.1:$PORT" "$VOLUME" >>"$WORK/daemon.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do [[ -S $SOCK ]] && curl -sf "http://127.0.0.1:$PORT/metrics" >/dev/null && return; sleep 0.1; done
    echo "daemon did not start"; tail "$WORK/daemon.log"; exit 1
}
stop_daemon() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; rm -f "$SOCK"; }
metric() { curl -sf "http://127.0.0.1:$PORT/metrics" | awk -v m="logdisk_$1{" 'index($0, m) == 1 { print $2 }'; }
store_bytes() { du -sb "$DD/objects" | cut -f1; }

VOLUME=v
ld volume create v --size "$SIZE" >/dev/null
VOL=$(ld volume info v --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')
REGION=$(( VOL * HOT / 100 / 4096 * 4096 ))
start_daemon
echo "fill $SIZE, then ${SECS}s of random 4-64 KiB overwrites over the first $HOT % (flush every 200 writes)"
"$LOADGEN" --socket "$SOCK" --rw write --bs 1M --iodepth 8 --once -q >/dev/null
W0=$(metric write_bytes_total)
P0=$(metric store_puts_total)
D0=$(metric store_delete_requests_total)
"$LOADGEN" --socket "$SOCK" --rw randwrite --bs 4k --bs-max 64k --iodepth 32 --fsync-every 200 \
    --size "$REGION" --time "$SECS" -q --json >"$WORK/overwrite.json" &
LG=$!
printf '%8s %10s %10s %8s %8s %10s %8s\n' t_s store_MiB live_MiB space_amp write_amp guest_MiB/s passes
T0=$(date +%s); LASTW=$W0; LASTT=$T0; PEAK=0; SUM=0; N=0
while kill -0 $LG 2>/dev/null; do
    sleep "$SAMPLE"
    kill -0 $LG 2>/dev/null || break
    now=$(date +%s); w=$(metric write_bytes_total); st=$(store_bytes); live=$(metric live_bytes)
    wa=$(metric write_amplification); passes=$(metric scrub_passes_total)
    python3 - "$now" "$T0" "$st" "$live" "$wa" "$w" "$LASTW" "$LASTT" "$passes" <<'PY'
import sys
now, t0, st, live, wa, w, lw, lt, passes = map(float, sys.argv[1:])
amp = st / live if live else 0
print(f"{now-t0:8.0f} {st/2**20:10.0f} {live/2**20:10.0f} {amp:8.3f} {wa:8.2f} {(w-lw)/max(now-lt,1)/2**20:10.1f} {passes:8.0f}")
PY
    amp=$(python3 -c "print($st/$live if $live else 0)")
    PEAK=$(python3 -c "print(max($PEAK, $amp))"); SUM=$(python3 -c "print($SUM + $amp)"); N=$((N + 1))
    LASTW=$w; LASTT=$now
done
wait $LG
W1=$(metric write_bytes_total); P1=$(metric store_puts_total); D1=$(metric store_delete_requests_total)
python3 - "$W0" "$W1" "$P0" "$P1" "$D0" "$D1" "$PEAK" "$SUM" "$N" "$(metric write_amplification)" <<'PY'
import sys
w0, w1, p0, p1, d0, d1, peak, s, n, wa = map(float, sys.argv[1:])
gib = (w1 - w0) / 2**30
print(f"guest wrote {gib:.1f} GiB; space amplification mean {s/max(n,1):.3f} peak {peak:.3f}; write amplification {wa:.2f}")
print(f"objects put per GiB written: {(p1-p0)/gib:.1f}; delete requests per GiB written: {(d1-d0)/gib:.2f}")
PY
stop_daemon

echo "guest IO with and without background scrub (4k randread QD32 and 70/30 randrw QD16, 4 s each)"
cat >"$WORK/lazy.toml" <<'TOML'
[scrub]
garbage_ratio = 0.95
max_space_amp = 0
interval_secs = 0
TOML
# A fresh volume: filled, then overwritten with scrub held back.
VOLUME=w
ld volume create w --size "$SIZE" >/dev/null
start_daemon "$WORK/lazy.toml"
"$LOADGEN" --socket "$SOCK" --rw write --bs 1M --iodepth 8 --once -q >/dev/null
# Garbage of about 36 % of the live data: above the scrub threshold (a third), below the
# bound at which writes wait (0.4 minus one pass): the steady state of a busy volume.
OPS=$(( VOL * 36 / 100 / (34 << 10) ))
"$LOADGEN" --socket "$SOCK" --rw randwrite --bs 4k --bs-max 64k --iodepth 32 --ops "$OPS" -q >/dev/null
stop_daemon
start_daemon
# IOPS; the p99.9 and max latency (µs) go to $WORK/lat.
rate() {
    "$LOADGEN" --socket "$SOCK" "$@" --time 4 --json -q | python3 -c '
import json, sys
r = json.load(sys.stdin)
l = r["lat_us"]
print(round(r["ops"] / r["seconds"]))
print("p99.9 %.0f us, max %.0f us" % (l["p99_9"], l["max"]), file=open(sys.argv[1], "a"))' "$WORK/lat"
}
P_BEFORE=$(metric scrub_passes_total)
R1=$(rate --rw randread --bs 4k --iodepth 32)
M1=$(rate --rw randrw --bs 4k --iodepth 16)
P_DURING=$(metric scrub_passes_total)
STATE=$(metric space_state)
for _ in $(seq 300); do [[ $(metric space_state) == 0 ]] && break; sleep 1; done
sleep 2
R0=$(rate --rw randread --bs 4k --iodepth 32)
M0=$(rate --rw randrw --bs 4k --iodepth 16)
echo "scrub passes while measuring: $((P_DURING - P_BEFORE)) (space_state after: $STATE)"
printf '%-22s %12s %12s %7s\n' job during_scrub after ratio
printf '%-22s %12s %12s %7s\n' randread-4k-qd32 "$R1" "$R0" "$(python3 -c "print(f'{$R1/$R0:.2f}')")"
printf '%-22s %12s %12s %7s\n' randrw70-4k-qd16 "$M1" "$M0" "$(python3 -c "print(f'{$M1/$M0:.2f}')")"
echo "latency (randread during, randrw during, randread after, randrw after):"
cat "$WORK/lat"
stop_daemon
