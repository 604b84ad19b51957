#!/usr/bin/env bash
# Two-host failover test of the Distributed Transaction Log (DTL), on one machine.
#
#   tests/dtl/failover.sh [--bin PATH] [--loadgen PATH] [--only N[,N...]] [--keep] [--dir DIR]
#
# Needs root (network namespaces), iproute2, python3 and SeaweedFS `weed`
# (scripts/install-test-deps.sh). Exit 0 when every scenario passes, 1 otherwise,
# 125 when it cannot run here (not root, no `ip netns`).
#
# Setup (names carry this run's pid, so a leftover of another run never collides; a trap
# kills every process started here and deletes the namespaces on any exit):
#   - two network namespaces, "host 1" and "host 2", a veth pair between them (a private
#     10.213.x.0/24), lo up in both; nothing listens outside them;
#   - in host 2's namespace, bound to its veth address: SeaweedFS (`weed mini`, the object
#     store both hosts use, host 1 over the veth) and `logdisk dtl serve` with a token file
#     and a TLS certificate for its address (a CA made by tests/dtl/make-certs.sh);
#   - logdisk daemons: host 1's in ns1 with data dir h1, host 2's in ns2 with data dir h2;
#     both use the same --backend s3://BUCKET/PREFIX and a config file whose [dtl]
#     token_file is the server's token and ca_file the CA (the DTL runs over TLS);
#   - logdisk-loadgen (a native vhost-user-blk frontend) writes a (seed, sector) verify
#     pattern and later reads it back, checking every byte (exit 2 on a mismatch).
# Volumes use 8 MiB SCOs, so the data written spans several SCOs.
#
# Scenarios (PASS/FAIL each, with timings; on failure the tails of the logs):
#   0 baseline: host 1 serves a volume over S3 (no DTL): write+flush, kill -9, restart on
#     host 1, verify; SIGTERM; export from a fresh data dir on host 2 = expected bytes.
#     (Checks the harness with what exists without the DTL.)
#   1 sync: create with --dtl H2:PORT --dtl-mode sync, serve, `volume set --uploads paused`,
#     write the pattern with flushes, check no SCO reached the object store, kill -9 host 1,
#     `volume takeover` on host 2, serve there, verify-read everything; SIGTERM host 2,
#     `volume export` on host 2, sha256 = the expected bytes.
#   2 async: the same with --dtl-mode async (before the kill, waits until `volume info`
#     says the DTL is in_sync: async mode only promises what has reached the DTL).
#   3 DTL server outage: while host 1 writes, kill -9 the DTL server: `volume info` must
#     say "degraded" and writes+flushes must go on; a region is written only during the
#     outage; the server restarts and the state must return to "in_sync"; then kill -9
#     host 1, takeover, verify (including the region written during the outage).
#   4 stale old owner: after a takeover (as in 1), restart host 1's daemon on its old data
#     dir: it must refuse the volume with a log line containing "fenced" and exit non-zero
#     (it was the only volume); host 2's copy still verifies; after a clean stop of host 2
#     an export from a fresh data dir (object store only) still has the expected bytes.
#   5 takeover refusal: DTL server killed, host 1 writes+flushes more (degraded), kill -9
#     host 1; takeover without --force must exit non-zero with a message, both while the
#     DTL server is down and after it is back; then `takeover --force` is run and what it
#     recovers is reported (the region written before the outage must verify).
#   6 DTL queue overflow: with uploads paused and the DTL server down, host 1 writes 80 MiB
#     (more than the DTL client's 64 MiB queue); the server returns. If the state comes
#     back to in_sync while uploads are still paused, that claim is tested by a failover;
#     otherwise uploads are resumed, the state must reach in_sync within 60 s, and then
#     kill -9 / takeover / verify.
#   7 partitioned old owner: host 1's daemon keeps running but loses the network (veth end
#     down); host 2 takes over and verifies; host 1 comes back, writes another pattern and
#     resumes uploads: it must log "fenced", host 2 must still verify, and after host 2's
#     clean stop an export from a fresh data dir must hold only host 2's data.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${LOGDISK_BIN:-$TARGET/release/logdisk}
LOADGEN=${LOGDISK_LOADGEN:-$TARGET/release/logdisk-loadgen}
ONLY="" KEEP=0 BASE=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --loadgen) LOADGEN=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --dir) BASE=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option '$1' (see --help)" >&2; exit 125 ;;
    esac
done

LD_TAG=dtl-failover
# shellcheck source=lib.sh
source "$HERE/lib.sh"

why=$(ld_preflight) || { echo "SKIP: $why" >&2; exit 125; }
[[ -x $BIN ]] || { echo "logdisk binary $BIN not found (cargo build --release)" >&2; exit 125; }
[[ -x $LOADGEN ]] || { echo "loadgen binary $LOADGEN not found (cargo build --release --workspace)" >&2; exit 125; }

# ------------------------------------------------------------------ sizes and names
VOL_SIZE=128M VOL_BYTES=$((128 << 20))
SCO_SIZE=8M
WRITE_BYTES=$((24 << 20))   # the region every scenario writes and verifies
BS=64k
BUCKET="dtl$$"
PREFIX="run"
BACKEND="s3://$BUCKET/$PREFIX"

# A scratch dir on a real disk (O_DIRECT): --dir, else $TMPDIR or /tmp unless tmpfs.
base=${BASE:-${TMPDIR:-/tmp}}
if [[ -z $BASE && $(stat -f -c %T "$base") == tmpfs ]]; then base=${HOME:-/root}/.cache/logdisk; fi
mkdir -p "$base"
T=$(mktemp -d "$base/logdisk-dtl-failover.$$.XXXXXX")

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    ld_cleanup_procs
    ld_netns_down
    if [[ $KEEP = 1 ]]; then ld_log "kept $T"; else rm -rf "$T"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

T_START=$(ld_now)
ld_log "logdisk $("$BIN" --version 2>/dev/null | awk '{print $2}') ($BIN); scratch $T"

# ------------------------------------------------------------------ expected export hashes
# sha256 of a VOL_BYTES image holding the (seed, sector) pattern in [0, WRITE_BYTES) and
# zeroes after it (computed in the background: ~3 s of python per seed).
expect_hash_start() {
    python3 - "$1" "$WRITE_BYTES" "$VOL_BYTES" >"$T/expect-$1.sha256" 2>&1 <<'PY' &
import hashlib, struct, sys
seed, wbytes, vbytes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
M = (1 << 64) - 1
h = hashlib.sha256()
for s in range(wbytes // 512):
    a = seed ^ ((s * 0x9e3779b97f4a7c15) & M)
    out = []
    for w in range(64):
        z = a ^ ((w * 0xbf58476d1ce4e5b9) & M)
        z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & M
        z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & M
        out.append(z ^ (z >> 31))
    h.update(struct.pack("<64Q", *out))
zero = bytes(1 << 20)
left = vbytes - wbytes
while left > 0:
    n = min(left, len(zero)); h.update(zero[:n]); left -= n
print(h.hexdigest())
PY
    ld_track $!
}
expect_hash() {  # SEED -> the hash (waits for the background job)
    local i
    for ((i = 0; i < 600; i++)); do
        [[ -s "$T/expect-$1.sha256" ]] && [[ $(wc -c <"$T/expect-$1.sha256") -ge 64 ]] && break
        sleep 0.1
    done
    head -c 64 "$T/expect-$1.sha256"
}

# ------------------------------------------------------------------ the two hosts
ld_netns_up
ld_weed_start "$NS2" "$IP2" "$T/weed"
ld_bucket_create "$BUCKET"
DTL_PORT=$(ld_free_ports "$NS2" "$IP2" 1)
DTL_ADDR="$IP2:$DTL_PORT"
head -c 32 /dev/urandom | base64 >"$T/dtl.token"
chmod 600 "$T/dtl.token"
mkdir -p "$T/dtl"
# TLS: a throwaway CA and a certificate for the server's address (host 1 checks it).
"$ROOT/tests/dtl/make-certs.sh" "$T/certs" "IP:$IP2" || ld_die "cannot make TLS certificates (openssl)"
DTL_LOG="$T/dtl-server.log"
: >"$DTL_LOG"
DTL_PID=""
dtl_server_start() {
    local i
    echo "--- $(date +%T) starting the DTL server" >>"$DTL_LOG"
    (cd "$T/dtl" && exec ip netns exec "$NS2" "$BIN" dtl serve --listen "$DTL_ADDR" --dir "$T/dtl/logs" \
        --token-file "$T/dtl.token" --tls-cert "$T/certs/server.pem" --tls-key "$T/certs/server.key") \
        >>"$DTL_LOG" 2>&1 &
    DTL_PID=$!
    ld_track "$DTL_PID"
    for ((i = 0; i < 100; i++)); do
        ld_alive "$DTL_PID" || { tail -n 20 "$DTL_LOG" >&2; return 1; }
        ld_wait_port "$NS1" "$IP2" "$DTL_PORT" 1 && return 0
    done
    return 1
}
dtl_server_kill9() {
    echo "--- $(date +%T) kill -9 the DTL server" >>"$DTL_LOG"
    ld_kill9 "$DTL_PID"
    DTL_PID=""
}
dtl_server_start || ld_die "the DTL server did not start (see above)"
ld_log "DTL server pid $DTL_PID at $DTL_ADDR (in $NS2), reachable from $NS1"

# Which parts of the DTL CLI this build has
HAVE_DTL=0 HAVE_TAKEOVER=0 HAVE_SET=0
"$BIN" volume create --help 2>/dev/null | grep -q -- '--dtl' && HAVE_DTL=1
"$BIN" volume takeover --help >/dev/null 2>&1 && HAVE_TAKEOVER=1
"$BIN" volume set --help >/dev/null 2>&1 && HAVE_SET=1
CFG_ARGS=()
if [[ $HAVE_DTL = 1 ]]; then
    printf '[dtl]\ntoken_file = "%s"\nca_file = "%s"\n' "$T/dtl.token" "$T/certs/ca.pem" >"$T/logdisk.toml"
    CFG_ARGS=(--config "$T/logdisk.toml")
fi
ld_log "this build: volume create --dtl: $([[ $HAVE_DTL = 1 ]] && echo yes || echo NO);" \
    "volume set: $([[ $HAVE_SET = 1 ]] && echo yes || echo NO); volume takeover: $([[ $HAVE_TAKEOVER = 1 ]] && echo yes || echo NO)"

# ------------------------------------------------------------------ helpers for scenarios
# Every scenario runs in this shell: commands' output goes to $SLOG; a failed check sets
# FAILMSG and the scenario function returns 1.
SLOG=/dev/null
FAILMSG=""
SDIR=""
LOGS=()          # logs whose tails are printed when the scenario fails
SPIDS=()         # daemons of the current scenario (killed at its end)
NOTES=()         # observations printed after the scenario's verdict

say() { echo "    $(date +%T) $*" | tee -a "$SLOG" >&2; }
note() { NOTES+=("$*"); say "note: $*"; }
fail() { FAILMSG=$*; echo "FAILED: $*" >>"$SLOG"; return 1; }

# cli HOST DATADIR ARGS...: logdisk in that host's namespace (2 minutes at most)
cli() {
    local h=$1 dd=$2 ns
    shift 2
    [[ $h = 1 ]] && ns=$NS1 || ns=$NS2
    echo "+ [host $h] logdisk --data-dir $dd $*" >>"$SLOG"
    timeout -k 5 120 ip netns exec "$ns" "$BIN" --data-dir "$dd" --backend "$BACKEND" "${CFG_ARGS[@]}" "$@"
}
# must WHAT CMD...: run, output to the log; on failure FAILMSG = WHAT
must() {
    local what=$1 rc
    shift
    "$@" >>"$SLOG" 2>&1
    rc=$?
    [[ $rc = 0 ]] || fail "$what (exit $rc)"
}
info() {  # HOST DATADIR VOL -> JSON on one line (empty on error)
    cli "$1" "$2" volume info "$3" --json 2>>"$SLOG" | tr -d '\n'
}
dtl_state() { jget "$(info "$1" "$2" "$3")" dtl.state; }
# wait_in_sync HOST DATADIR VOL TRIES: poll the DTL state every 0.2 s until in_sync. Sets the
# caller's $s (last state) and adds each new state to the caller's $seen.
wait_in_sync() {
    local i
    for ((i = 0; i < $4; i++)); do
        s=$(dtl_state "$1" "$2" "$3")
        [[ $seen == *" $s"* ]] || seen="$seen $s"
        [[ $s == in_sync ]] && return 0
        sleep 0.2
    done
    return 1
}

# wait_state HOST DATADIR VOL STATE SECONDS: polls volume info; prints the seconds it took
wait_state() {
    local t0 s i
    t0=$(ld_now)
    for ((i = 0; i < $5 * 5; i++)); do
        s=$(dtl_state "$1" "$2" "$3")
        [[ $s == "$4" ]] && { ld_elapsed "$t0" "$(ld_now)"; return 0; }
        sleep 0.2
    done
    echo "DTL state still '$s' after $5 s (wanted $4)" >>"$SLOG"
    return 1
}

# daemon HOST DATADIR SOCKET VOL LOG: start `serve`, wait until it serves; sets DPID.
# Returns 1 (with DPID set, maybe dead) if it exits or does not serve within 60 s.
daemon() {
    local h=$1 dd=$2 sock=$3 vol=$4 lg=$5 ns skip i
    [[ $h = 1 ]] && ns=$NS1 || ns=$NS2
    rm -f "$sock"
    touch "$lg"
    skip=$(wc -l <"$lg")
    echo "--- $(date +%T) serve $vol on host $h" >>"$lg"
    echo "+ [host $h] logdisk --data-dir $dd serve --socket $sock $vol" >>"$SLOG"
    ip netns exec "$ns" "$BIN" --data-dir "$dd" --backend "$BACKEND" "${CFG_ARGS[@]}" \
        serve --socket "$sock" "$vol" >>"$lg" 2>&1 &
    DPID=$!
    ld_track "$DPID"
    SPIDS+=("$DPID")
    [[ " ${LOGS[*]} " == *" $lg "* ]] || LOGS+=("$lg")
    for ((i = 0; i < 600; i++)); do
        tail -n +"$((skip + 2))" "$lg" | grep -q "^serving volume" && [[ -S $sock ]] && return 0
        ld_alive "$DPID" || return 1
        sleep 0.1
    done
    return 1
}
serve_or_fail() {  # like daemon, FAILMSG on failure
    daemon "$@" || fail "host $1 daemon did not serve $4 (see $(basename "$5"))"
}

# loadgen wrappers (SOCKET SEED [extra args]); the pattern depends on (seed, absolute sector)
lg() { echo "+ logdisk-loadgen $*" >>"$SLOG"; timeout -k 5 300 "$LOADGEN" --quiet "$@"; }
lg_write() {  # SOCKET SEED OFFSET SIZE: sequential 64k writes QD8, a FLUSH every 8 writes
    lg --socket "$1" --rw write --bs "$BS" --iodepth 8 --once --verify --seed "$2" \
        --offset "$3" --size "$4" --fsync-every 8 --timeout 30
}
lg_flush() {  # SOCKET SEED OFFSET: one pattern write + FLUSH (covers every earlier write)
    lg --socket "$1" --rw write --bs 4k --iodepth 1 --ops 1 --fsync-every 1 --verify --seed "$2" \
        --offset "$3" --size 4k --timeout 30
}
lg_verify() {  # SOCKET SEED OFFSET SIZE
    lg --socket "$1" --rw read --bs "$BS" --iodepth 8 --once --verify --seed "$2" --offset "$3" --size "$4" \
        --timeout 60
}

# S3 objects of VOL written under generation 1 / any generation
objs() { ld_s3_count "$BUCKET" "$PREFIX/$1/$2"; }
obj_keys() { ld_s3_keys "$BUCKET" "$PREFIX/$1/"; }

kill9_host() {  # PID: kill -9 a daemon
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
    ld_untrack "$1"
    return 0
}

scenario_teardown() {
    local p
    for p in "${SPIDS[@]}"; do ld_kill9 "$p"; done
    SPIDS=()
}

RESULTS=()
ANY_FAIL=0
run_scenario() {  # N TITLE FUNCTION
    local n=$1 title=$2 fn=$3 t0 dt l
    if [[ -n $ONLY && ",$ONLY," != *",$n,"* ]]; then return 0; fi
    SDIR="$T/s$n"
    mkdir -p "$SDIR"
    SLOG="$SDIR/commands.log"
    : >"$SLOG"
    FAILMSG="" LOGS=("$DTL_LOG") SPIDS=() NOTES=()
    echo "=== scenario $n: $title" >&2
    t0=$(ld_now)
    # The DTL server runs at the start of every scenario
    if [[ -z $DTL_PID ]] || ! ld_alive "$DTL_PID"; then dtl_server_start || ld_die "cannot restart the DTL server"; fi
    if "$fn" "$n"; then
        dt=$(ld_elapsed "$t0" "$(ld_now)")
        RESULTS+=("PASS  $n $title (${dt}s)")
        echo "PASS scenario $n: $title (${dt}s)"
    else
        dt=$(ld_elapsed "$t0" "$(ld_now)")
        RESULTS+=("FAIL  $n $title (${dt}s): $FAILMSG")
        echo "FAIL scenario $n: $title (${dt}s): $FAILMSG"
        ANY_FAIL=1
        echo "----- scenario $n commands (tail of $SLOG)" >&2
        tail -n 25 "$SLOG" >&2
        for l in "${LOGS[@]}"; do
            echo "----- tail of $l" >&2
            tail -n 25 "$l" >&2
        done
    fi
    for l in "${NOTES[@]}"; do RESULTS+=("        note: $l"); done
    scenario_teardown
}

need_dtl_cli() {
    local missing=()
    [[ $HAVE_DTL = 1 ]] || missing+=("volume create --dtl/--dtl-mode")
    [[ $HAVE_SET = 1 ]] || missing+=("volume set --uploads")
    [[ $HAVE_TAKEOVER = 1 ]] || missing+=("volume takeover")
    [[ ${#missing[@]} = 0 ]] || fail "this logdisk build lacks: ${missing[*]}"
}

# setup_writer N VOL MODE SEED: create VOL on host 1 with the DTL in MODE, serve it, pause
# its uploads, check `volume info`; sets D1 D2 S1 S2 L1 L2 H1PID
setup_writer() {
    local n=$1 vol=$2 mode=$3 j
    D1="$SDIR/h1" D2="$SDIR/h2" S1="$SDIR/h1.sock" S2="$SDIR/h2.sock" L1="$SDIR/h1-daemon.log" L2="$SDIR/h2-daemon.log"
    must "volume create on host 1" cli 1 "$D1" volume create "$vol" --size "$VOL_SIZE" --sco-size "$SCO_SIZE" \
        --dtl "$DTL_ADDR" --dtl-mode "$mode" || return 1
    serve_or_fail 1 "$D1" "$S1" "$vol" "$L1" || return 1
    H1PID=$DPID
    must "volume set --uploads paused (through the control socket)" cli 1 "$D1" volume set "$vol" --uploads paused || return 1
    j=$(info 1 "$D1" "$vol")
    echo "info: $j" >>"$SLOG"
    [[ $(jget "$j" uploads_paused) == true ]] || { fail "volume info: uploads_paused is not true: $j"; return 1; }
    [[ $(jget "$j" dtl.mode) == "$mode" ]] || { fail "volume info: dtl.mode is not $mode: $j"; return 1; }
    [[ $(jget "$j" dtl.addr) == "$DTL_ADDR" ]] || { fail "volume info: dtl.addr is not $DTL_ADDR: $j"; return 1; }
    local t
    t=$(wait_state 1 "$D1" "$vol" in_sync 20) || { fail "DTL not in_sync on host 1 after serve"; return 1; }
    say "host 1 serves $vol (DTL $mode, in_sync after ${t}s), uploads paused"
}

# takeover_and_verify VOL MODE SEED [takeover args]: kill -9 host 1 must have happened;
# takeover on host 2, serve, verify [0, WRITE_BYTES). Sets H2PID.
takeover_and_verify() {
    local vol=$1 mode=$2 seed=$3 t0 j gen
    shift 3
    t0=$(ld_now)
    must "volume takeover on host 2" cli 2 "$D2" volume takeover "$vol" --dtl "$DTL_ADDR" --dtl-mode "$mode" "$@" \
        || return 1
    say "takeover on host 2 took $(ld_elapsed "$t0" "$(ld_now)")s: $(grep '^took over' "$SLOG" | tail -n 1 | cut -c1-200)"
    t0=$(ld_now)
    serve_or_fail 2 "$D2" "$S2" "$vol" "$L2" || return 1
    H2PID=$DPID
    say "host 2 serves $vol after $(ld_elapsed "$t0" "$(ld_now)")s"
    j=$(info 2 "$D2" "$vol")
    echo "host 2 info: $j" >>"$SLOG"
    gen=$(jget "$j" generation)
    [[ $gen =~ ^[0-9]+$ && $gen -gt 1 ]] || note "host 2's volume info shows generation '$gen' (expected > 1)"
    t0=$(ld_now)
    must "verify read of the whole written region on host 2 (data lost or wrong)" \
        lg_verify "$S2" "$seed" 0 "$WRITE_BYTES" || return 1
    say "host 2: verify read of $((WRITE_BYTES >> 20)) MiB passed in $(ld_elapsed "$t0" "$(ld_now)")s"
}

# export_check HOST DATADIR VOL SEED: offline export, sha256 = expected image
export_check() {
    local h=$1 dd=$2 vol=$3 seed=$4 got want
    must "volume export on host $h" cli "$h" "$dd" volume export "$vol" "$SDIR/export.img" || return 1
    got=$(sha256sum "$SDIR/export.img" | awk '{print $1}')
    rm -f "$SDIR/export.img"
    want=$(expect_hash "$seed")
    [[ $got == "$want" ]] || { fail "export on host $h: sha256 $got, expected $want"; return 1; }
    say "export on host $h ($(basename "$dd")): sha256 matches the expected image"
}

# ------------------------------------------------------------------ scenarios
scenario_baseline() {
    local vol=base seed=10 t0
    D1="$SDIR/h1" D2="$SDIR/h2" S1="$SDIR/h1.sock" L1="$SDIR/h1-daemon.log"
    expect_hash_start "$seed"
    # plain CLI, no config (the [dtl] section would need this build's support for it)
    local saved=("${CFG_ARGS[@]}")
    CFG_ARGS=()
    must "volume create (S3 over the veth from host 1)" cli 1 "$D1" volume create "$vol" --size "$VOL_SIZE" \
        --sco-size "$SCO_SIZE" || { CFG_ARGS=("${saved[@]}"); return 1; }
    serve_or_fail 1 "$D1" "$S1" "$vol" "$L1" || { CFG_ARGS=("${saved[@]}"); return 1; }
    t0=$(ld_now)
    must "pattern write on host 1" lg_write "$S1" "$seed" 0 "$WRITE_BYTES" &&
        must "final write+flush" lg_flush "$S1" "$seed" 0 || { CFG_ARGS=("${saved[@]}"); return 1; }
    say "wrote $((WRITE_BYTES >> 20)) MiB + flush in $(ld_elapsed "$t0" "$(ld_now)")s; kill -9 host 1"
    kill9_host "$DPID"
    serve_or_fail 1 "$D1" "$S1" "$vol" "$L1" || { CFG_ARGS=("${saved[@]}"); return 1; }
    must "verify after kill -9 + restart on host 1" lg_verify "$S1" "$seed" 0 "$WRITE_BYTES" \
        || { CFG_ARGS=("${saved[@]}"); return 1; }
    t0=$(ld_now)
    ld_stop "$DPID" 150 || { CFG_ARGS=("${saved[@]}"); fail "SIGTERM of host 1 exited non-zero"; return 1; }
    say "verified after restart; SIGTERM (drain) took $(ld_elapsed "$t0" "$(ld_now)")s; $(objs "$vol" g) objects in S3"
    export_check 2 "$D2" "$vol" "$seed"
    local rc=$?
    CFG_ARGS=("${saved[@]}")
    return $rc
}

# 1 and 2
scenario_failover() {
    local n=$1 mode vol seed t0 t
    [[ $n = 1 ]] && mode=sync || mode=async
    vol="s$n-$mode" seed=$((10 + n))
    expect_hash_start "$seed"
    need_dtl_cli || return 1
    setup_writer "$n" "$vol" "$mode" || return 1
    t0=$(ld_now)
    must "pattern write on host 1" lg_write "$S1" "$seed" 0 "$WRITE_BYTES" || return 1
    must "final write+flush on host 1" lg_flush "$S1" "$seed" 0 || return 1
    say "wrote $((WRITE_BYTES >> 20)) MiB (FLUSH every 8 writes and at the end) in $(ld_elapsed "$t0" "$(ld_now)")s"
    if [[ $mode = async ]]; then
        t=$(wait_state 1 "$D1" "$vol" in_sync 30) || { fail "async DTL did not reach in_sync within 30 s after the writes"; return 1; }
        say "async DTL in_sync ${t}s after the last flush"
    else
        [[ $(dtl_state 1 "$D1" "$vol") == in_sync ]] || { fail "sync DTL not in_sync after the writes: $(info 1 "$D1" "$vol")"; return 1; }
    fi
    local sco
    sco=$(obj_keys "$vol" | grep -c '/sco/')
    [[ $sco = 0 ]] || { fail "uploads paused, yet $sco SCO objects of $vol are in the object store"; return 1; }
    say "no SCO of $vol in the object store (uploads paused): the DTL alone has the data; kill -9 host 1"
    kill9_host "$H1PID"
    takeover_and_verify "$vol" "$mode" "$seed" || return 1
    t0=$(ld_now)
    ld_stop "$H2PID" 150 || { fail "SIGTERM of host 2's daemon exited non-zero"; return 1; }
    say "host 2 stopped cleanly in $(ld_elapsed "$t0" "$(ld_now)")s"
    export_check 2 "$D2" "$vol" "$seed"
}

# 3
scenario_outage() {
    local n=$1 vol=s3-outage seed=13 mode=sync bg t0 t j rc
    local A=$((16 << 20)) B_OFF=$((16 << 20)) B=$((8 << 20))
    need_dtl_cli || return 1
    setup_writer "$n" "$vol" "$mode" || return 1
    # The daemon serves one frontend at a time, so the writers below run one after the
    # other. Region A [0,16M) is written before the outage and rewritten (4k random
    # write+flush, QD1, ~3 s) by a background writer while the DTL server is killed;
    # region B [16M,24M) is written only while the server is down. What queues up for
    # the DTL during the outage stays below the client's queue limit (64 MiB).
    must "first pass over region A" lg_write "$S1" "$seed" 0 "$A" || return 1
    echo "+ background loadgen (region A, 4k write+flush QD1, 3 s)" >>"$SLOG"
    "$LOADGEN" --quiet --socket "$S1" --rw randwrite --bs 4k --iodepth 1 --verify --seed "$seed" --size "$A" \
        --fsync-every 1 --time 3 --timeout 10 >>"$SDIR/bg-loadgen.log" 2>&1 &
    bg=$!
    ld_track "$bg"
    LOGS+=("$SDIR/bg-loadgen.log")
    sleep 1
    ld_alive "$bg" || { fail "the background writer ended early: $(tail -n 3 "$SDIR/bg-loadgen.log")"; return 1; }
    dtl_server_kill9
    t=$(wait_state 1 "$D1" "$vol" degraded 15) || { fail "volume info did not say 'degraded' within 15 s of killing the DTL server: $(info 1 "$D1" "$vol")"; return 1; }
    say "DTL server killed while host 1 writes: volume info says degraded after ${t}s"
    wait "$bg"
    rc=$?
    ld_untrack "$bg"
    [[ $rc = 0 ]] || { fail "the background writer failed (exit $rc): IO stalled (>10 s) or failed when the DTL server died"; return 1; }
    say "background writer finished OK across the kill (no request slower than 10 s): $(grep -o 'IOPS.*' "$SDIR/bg-loadgen.log" | head -n 1)"
    t0=$(ld_now)
    must "write region B while the DTL server is down" \
        lg --socket "$S1" --rw write --bs 4k --iodepth 1 --once --verify --seed "$seed" --offset "$B_OFF" --size "$B" \
        --fsync-every 1 --timeout 10 || return 1
    say "IO goes on while degraded: region B ($((B >> 20)) MiB, 4k write+flush) in $(ld_elapsed "$t0" "$(ld_now)")s"
    j=$(info 1 "$D1" "$vol")
    echo "info: $j" >>"$SLOG"
    [[ $(jget "$j" dtl.state) == degraded ]] || { fail "state is not 'degraded' while the server is still down: $(jget "$j" dtl)"; return 1; }
    t0=$(ld_now)
    dtl_server_start || { fail "cannot restart the DTL server"; return 1; }
    local seen="" s
    wait_in_sync 1 "$D1" "$vol" 300 || true
    [[ $s == in_sync ]] || { fail "DTL state '$s' 60 s after the server came back (wanted in_sync; seen:$seen)"; return 1; }
    say "DTL server back: in_sync after $(ld_elapsed "$t0" "$(ld_now)")s (states seen:$seen)"
    must "final write+flush" lg_flush "$S1" "$seed" 0 || return 1
    [[ $(dtl_state 1 "$D1" "$vol") == in_sync ]] || { fail "not in_sync before the kill: $(info 1 "$D1" "$vol")"; return 1; }
    [[ $(obj_keys "$vol" | grep -c '/sco/') = 0 ]] || { fail "uploads paused, yet SCOs of $vol are in the object store"; return 1; }
    kill9_host "$H1PID"
    say "kill -9 host 1"
    takeover_and_verify "$vol" "$mode" "$seed"
}

# 4
scenario_stale_owner() {
    local n=$1 vol=s4-stale seed=14 mode=sync t0 i before after newkeys rc
    expect_hash_start "$seed"
    need_dtl_cli || return 1
    setup_writer "$n" "$vol" "$mode" || return 1
    must "pattern write on host 1" lg_write "$S1" "$seed" 0 "$WRITE_BYTES" || return 1
    must "final write+flush on host 1" lg_flush "$S1" "$seed" 0 || return 1
    kill9_host "$H1PID"
    say "wrote $((WRITE_BYTES >> 20)) MiB, kill -9 host 1"
    takeover_and_verify "$vol" "$mode" "$seed" || return 1
    before=$(obj_keys "$vol" | sort)
    # restart the old owner on its old data dir (its write buffer still holds the data)
    t0=$(ld_now)
    if daemon 1 "$D1" "$S1" "$vol" "$L1"; then
        fail "host 1's daemon serves $vol again after host 2 took it over (no fencing)"
        return 1
    fi
    for ((i = 0; i < 300; i++)); do ld_alive "$DPID" || break; sleep 0.1; done
    if ld_alive "$DPID"; then
        grep -qi fenced "$L1" && note "host 1's daemon logged 'fenced' but still runs 30 s later (it serves nothing else)"
        fail "host 1's daemon neither served nor exited within 60+30 s"
        return 1
    fi
    wait "$DPID"
    rc=$?
    ld_untrack "$DPID"
    say "old owner's daemon exited with status $rc after $(ld_elapsed "$t0" "$(ld_now)")s: $(grep -i fenced "$L1" | tail -n 1 | cut -c1-220)"
    grep -qi fenced "$L1" || { fail "host 1's daemon exited (status $rc) without a log line containing 'fenced'"; return 1; }
    [[ $rc != 0 ]] || { fail "host 1's daemon refused its only volume but exited with status 0"; return 1; }
    after=$(obj_keys "$vol" | sort)
    newkeys=$(comm -13 <(echo "$before") <(echo "$after") | grep -v '^$' || true)
    if [[ -n $newkeys ]]; then
        note "objects of $vol that appeared while host 1's daemon ran: $(echo "$newkeys" | tr "\n" " " | head -c 400)"
    fi
    must "verify on host 2 after the old owner's restart attempt" lg_verify "$S2" "$seed" 0 "$WRITE_BYTES" || return 1
    say "host 2 still verifies"
    ld_stop "$H2PID" 150 || { fail "SIGTERM of host 2's daemon exited non-zero"; return 1; }
    export_check 2 "$SDIR/h3" "$vol" "$seed" || return 1
    say "(export from a fresh data dir: the object store alone, after host 2's clean stop)"
}

# 5
scenario_refusal() {
    local n=$1 vol=s5-refuse seed=15 mode=sync out rc t
    local A=$((16 << 20)) B_OFF=$((16 << 20)) B=$((8 << 20))
    need_dtl_cli || return 1
    setup_writer "$n" "$vol" "$mode" || return 1
    must "write region A" lg_write "$S1" "$seed" 0 "$A" || return 1
    must "flush" lg_flush "$S1" "$seed" 0 || return 1
    dtl_server_kill9
    t=$(wait_state 1 "$D1" "$vol" degraded 15) || { fail "not degraded within 15 s of killing the DTL server"; return 1; }
    must "write region B while the DTL server is down" lg_write "$S1" "$seed" "$B_OFF" "$B" || return 1
    must "flush while the DTL server is down" lg_flush "$S1" "$seed" "$B_OFF" || return 1
    say "DTL server down (degraded after ${t}s), $((B >> 20)) MiB more written and flushed; kill -9 host 1"
    kill9_host "$H1PID"

    # a) DTL server still down
    out=$(cli 2 "$D2" volume takeover "$vol" --dtl "$DTL_ADDR" --dtl-mode "$mode" 2>&1)
    rc=$?
    echo "$out" >>"$SLOG"
    say "takeover while the DTL server is down: exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
    [[ $rc != 0 ]] || { fail "takeover succeeded while the DTL server was down and host 1 had flushed writes it never got"; return 1; }
    [[ -n $out ]] || { fail "takeover refused (exit $rc) without a message"; return 1; }

    # b) DTL server back (it lacks region B)
    dtl_server_start || { fail "cannot restart the DTL server"; return 1; }
    out=$(cli 2 "$D2" volume takeover "$vol" --dtl "$DTL_ADDR" --dtl-mode "$mode" 2>&1)
    rc=$?
    echo "$out" >>"$SLOG"
    say "takeover with the DTL server back (it lacks what was written while it was down): exit $rc: $(echo "$out" | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
    [[ $rc != 0 ]] || { fail "takeover without --force succeeded though the DTL was not in sync at the old owner"; return 1; }
    [[ -n $out ]] || { fail "takeover refused (exit $rc) without a message"; return 1; }

    # c) --force: what comes back (documented, region A must verify)
    if must "takeover --force" cli 2 "$D2" volume takeover "$vol" --dtl "$DTL_ADDR" --dtl-mode "$mode" --force; then
        serve_or_fail 2 "$D2" "$S2" "$vol" "$L2" || return 1
        must "verify region A (written while the DTL was in sync) after takeover --force" \
            lg_verify "$S2" "$seed" 0 "$A" || return 1
        if lg_verify "$S2" "$seed" "$B_OFF" "$B" >>"$SLOG" 2>&1; then
            note "after takeover --force region B (written while the DTL was down) verifies too"
        else
            note "after takeover --force region B (written while the DTL was down) does not verify: lost, as expected"
        fi
    else
        return 1
    fi
}

# 6
scenario_overflow() {
    local n=$1 vol=s6-overflow seed=16 mode=sync t0 t s i seen="" healed=0
    need_dtl_cli || return 1
    setup_writer "$n" "$vol" "$mode" || return 1
    must "write the region" lg_write "$S1" "$seed" 0 "$WRITE_BYTES" || return 1
    dtl_server_kill9
    t=$(wait_state 1 "$D1" "$vol" degraded 15) || { fail "not degraded within 15 s of killing the DTL server"; return 1; }
    # 80 MiB of writes (the region over and over) while the server is down: more than the
    # client's DTL queue (64 MiB) holds
    t0=$(ld_now)
    must "80 MiB of writes while the DTL server is down" \
        lg --socket "$S1" --rw write --bs "$BS" --iodepth 8 --verify --seed "$seed" --size "$WRITE_BYTES" \
        --ops 1280 --fsync-every 8 --timeout 10 || return 1
    must "flush" lg_flush "$S1" "$seed" 0 || return 1
    say "80 MiB written+flushed while degraded in $(ld_elapsed "$t0" "$(ld_now)")s; state $(dtl_state 1 "$D1" "$vol");" \
        "queue overflow logged: $(grep -c 'DTL queue full' "$L1")x"
    dtl_server_start || { fail "cannot restart the DTL server"; return 1; }
    t0=$(ld_now)
    wait_in_sync 1 "$D1" "$vol" 25 || true
    if [[ $s == in_sync ]]; then
        note "uploads still paused, DTL back in_sync after $(ld_elapsed "$t0" "$(ld_now)")s (states seen:$seen): the failover below checks that claim"
    else
        say "uploads paused, DTL server back for 5 s: state '$s' (seen:$seen); resuming uploads"
        must "volume set --uploads running" cli 1 "$D1" volume set "$vol" --uploads running || return 1
        t=$(wait_state 1 "$D1" "$vol" in_sync 60) || { fail "DTL not in_sync 60 s after uploads resumed: $(jget "$(info 1 "$D1" "$vol")" dtl)"; return 1; }
        healed=1
        say "uploads resumed: in_sync after ${t}s; $(obj_keys "$vol" | grep -c /sco/) SCO objects in the object store"
    fi
    must "final write+flush" lg_flush "$S1" "$seed" 0 || return 1
    kill9_host "$H1PID"
    say "kill -9 host 1"
    takeover_and_verify "$vol" "$mode" "$seed" || return 1
    [[ $healed = 1 ]] || note "a queue overflow healed without uploads and the failover verified"
}

# 7
scenario_partition() {
    local n=$1 vol=s7-partition seed=17 mode=sync t0 rc i
    expect_hash_start "$seed"
    need_dtl_cli || return 1
    setup_writer "$n" "$vol" "$mode" || return 1
    must "pattern write on host 1" lg_write "$S1" "$seed" 0 "$WRITE_BYTES" || return 1
    must "final write+flush on host 1" lg_flush "$S1" "$seed" 0 || return 1
    # Host 1 stays up but loses the network (its veth end down): host 2 takes over.
    ip -n "$NS1" link set "$VETH1" down
    say "host 1 cut off (its daemon keeps running); takeover on host 2"
    takeover_and_verify "$vol" "$mode" "$seed" || return 1
    ip -n "$NS1" link set "$VETH1" up
    say "host 1 reconnected: it writes 8 MiB with another pattern (seed 99) and resumes uploads"
    lg --socket "$S1" --rw write --bs "$BS" --iodepth 8 --once --verify --seed 99 --size $((8 << 20)) \
        --fsync-every 8 --timeout 30 >>"$SLOG" 2>&1
    rc=$?
    cli 1 "$D1" volume set "$vol" --uploads running >>"$SLOG" 2>&1
    for ((i = 0; i < 100; i++)); do grep -qi fenced "$L1" && break; sleep 0.1; done
    say "old owner's writes after the takeover: loadgen exit $rc; its log: $(grep -i fenced "$L1" | head -n 1 | sed 's/^[^ ]* *//' | cut -c1-220)"
    grep -qi fenced "$L1" || { fail "host 1 wrote after the takeover (loadgen exit $rc) and never logged 'fenced'"; return 1; }
    [[ $rc != 0 ]] || note "host 1 completed writes after it was taken over (loadgen exit 0) but logged 'fenced'"
    sleep 2
    must "verify on host 2 after the old owner's writes" lg_verify "$S2" "$seed" 0 "$WRITE_BYTES" || return 1
    ld_stop "$H2PID" 150 || { fail "SIGTERM of host 2's daemon exited non-zero"; return 1; }
    ld_kill9 "$H1PID"
    export_check 2 "$SDIR/h3" "$vol" "$seed" || return 1
    say "(export from a fresh data dir after host 2's clean stop: nothing of host 1's later writes)"
}

run_scenario 0 "baseline: S3 over the veth, kill -9 + restart, export from host 2" scenario_baseline
run_scenario 1 "sync DTL: kill -9 host 1, takeover on host 2, verify" scenario_failover
run_scenario 2 "async DTL: kill -9 host 1, takeover on host 2, verify" scenario_failover
run_scenario 3 "DTL server killed during writes: degraded, in_sync again, then failover" scenario_outage
run_scenario 4 "stale old owner restarted after takeover is fenced" scenario_stale_owner
run_scenario 5 "takeover refused when the DTL was not in sync" scenario_refusal
run_scenario 6 "DTL queue overflow during an outage: in_sync only once healed, then failover" scenario_overflow
run_scenario 7 "partitioned old owner keeps running: fenced once it reconnects" scenario_partition

echo
echo "DTL failover results ($(ld_elapsed "$T_START" "$(ld_now)")s in all):"
for r in "${RESULTS[@]}"; do echo "  $r"; done
[[ $ANY_FAIL = 0 ]]
