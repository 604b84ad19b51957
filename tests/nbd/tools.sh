#!/usr/bin/env bash
# NBD export with the real tools (libnbd-bin, qemu-utils, fio) against a real daemon
# (`logdisk serve --nbd`), on the embedded file:// object store:
#   - nbdinfo: size, flags and the allocation map of a sparse volume (data only where
#     written, holes elsewhere);
#   - nbdcopy: a 256 MiB random image into a volume and back out, byte for byte, and
#     with 4 connections (multi-conn);
#   - qemu-img convert of a qcow2 into a volume over NBD, qemu-img compare;
#   - fio's nbd engine: random writes with crc32c verify, 4 jobs;
#   - a snapshot export (named at start, and one taken while the daemon runs, opened on
#     demand) is read-only and equals the volume as of the snapshot; the
#     logdisk:changed-since:SNAP context shows exactly the clusters written in between;
#   - a volume written over vhost-user-blk (the native load generator, verifying) while
#     a snapshot of it, taken meanwhile, is copied over NBD: the guest's IO goes on and
#     verifies, the copy equals the snapshot exported offline afterwards;
#   - TCP: a token is required (TOKEN/EXPORT), a listener without one refuses to start;
#   - bad input (tests/nbd/badclient.py): garbage, unknown option and export, wrong token,
#     reads beyond the end and oversized, unknown command, oversized write: error replies
#     or a closed connection; afterwards the daemon still serves every export unchanged.
#
#   tests/nbd/tools.sh [--bin target/release/logdisk] [--loadgen target/release/logdisk-loadgen]
set -Eeuo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/logdisk
LOADGEN=target/release/logdisk-loadgen
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --loadgen) LOADGEN=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BIN=$(realpath "$BIN")
LOADGEN=$(realpath "$LOADGEN")
for t in nbdinfo nbdcopy qemu-img fio python3; do
    command -v "$t" >/dev/null || { echo "missing $t (scripts/install-test-deps.sh installs it)"; exit 1; }
done
WORK=$(mktemp -d /tmp/logdisk-nbd.XXXXXX)
DD=$WORK/dd
SOCK=$WORK/nbd.sock
PID=
cleanup() {
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    if [[ ${KEEP:-0} = 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# Any command that ends the test under set -e says which and shows the daemon's last words.
trap 'rc=$?; echo "FAIL: line $LINENO: $BASH_COMMAND (status $rc)"; tail -n 20 "$WORK/daemon.log" 2>/dev/null' ERR
fail() { echo "FAIL: $*"; [[ -f $WORK/daemon.log ]] && tail -n 20 "$WORK/daemon.log"; exit 1; }
ld() { "$BIN" --data-dir "$DD" "$@"; }
uri() { echo "nbd+unix:///$1?socket=$SOCK"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "--- set-up: a sparse 512 MiB volume with 3 MiB written at 100 MiB, snapshot s1"
ld volume create sparse --size 512M >/dev/null
head -c 3M /dev/urandom >"$WORK/chunk"
ld volume import sparse "$WORK/chunk" --offset 100M >/dev/null
ld snapshot create sparse@s1 >/dev/null
ld volume create big --size 256M >/dev/null
ld volume create q --size 64M >/dev/null
ld volume create f --size 128M >/dev/null
ld volume create g --size 256M >/dev/null

echo "--- TCP without a token or --insecure refuses to start"
if "$BIN" --data-dir "$WORK/other" serve sparse --nbd "tcp:127.0.0.1:$(port)" >"$WORK/notoken.log" 2>&1; then
    fail "serve --nbd tcp: started without a token"
fi
grep -q "needs a token" "$WORK/notoken.log" || { cat "$WORK/notoken.log"; fail "no clear error without a token"; }

TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$TOKEN" >"$WORK/token"
TCP_PORT=$(port)
"$BIN" --data-dir "$DD" serve sparse sparse@s1 big q f g --socket-dir "$WORK/socks" --nbd "unix:$SOCK" \
    --nbd "tcp:127.0.0.1:$TCP_PORT" --nbd-token-file "$WORK/token" >"$WORK/daemon.log" 2>&1 &
PID=$!
for _ in $(seq 100); do [[ -S $SOCK ]] && grep -q "serving NBD on tcp" "$WORK/daemon.log" && break; sleep 0.1; done
[[ -S $SOCK ]] || fail "no NBD socket"
[[ $(stat -c %a "$SOCK") = 600 ]] || fail "socket mode $(stat -c %a "$SOCK"), expected 600"

echo "--- nbdinfo: size and allocation map of the sparse volume"
nbdinfo --json "$(uri sparse)" >"$WORK/info.json"
python3 - "$WORK/info.json" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))["exports"][0]
assert e["export-size"] == 512 << 20, e["export-size"]
assert e["can_multi_conn"] and e["can_zero"] and e["can_trim"] and not e["is_read_only"], e
print("size", e["export-size"], "multi-conn, trim, zero")
EOF
nbdinfo --map --totals "$(uri sparse)"
nbdinfo --map "$(uri sparse)" | awk '{print $1, $2, $3}' >"$WORK/map"
printf '0 104857600 3\n104857600 3145728 0\n108003328 428867584 3\n' | diff - "$WORK/map" \
    || fail "allocation map is not data at 100 MiB + 3 MiB, holes elsewhere"
nbdinfo "$(uri sparse@s1)" | grep -q "is_read_only: true" || fail "snapshot export not read-only"
nbdinfo --list "nbd+unix://?socket=$SOCK" | grep -c '^export=' | grep -qx 6 || fail "LIST does not show 6 exports"

echo "--- nbdcopy: 256 MiB random image in and back out"
head -c 256M /dev/urandom >"$WORK/rand.img"
t0=$(date +%s.%N)
nbdcopy --connections=4 "$WORK/rand.img" "$(uri big)"
t1=$(date +%s.%N)
nbdcopy "$(uri big)" "$WORK/back.img"
t2=$(date +%s.%N)
cmp "$WORK/rand.img" "$WORK/back.img" || fail "nbdcopy out differs from what went in"
python3 -c "print(f'in {256/($t1-$t0):.0f} MiB/s (4 connections), out {256/($t2-$t1):.0f} MiB/s: byte for byte equal')"
rm -f "$WORK/back.img"

echo "--- qemu-img convert qcow2 -> NBD, compare"
head -c 8M /dev/urandom >"$WORK/q.raw"
truncate -s 64M "$WORK/q.raw"
dd if=/dev/urandom of="$WORK/q.raw" bs=1M count=2 seek=40 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$WORK/q.raw" "$WORK/q.qcow2"
qemu-img convert -n -f qcow2 -O raw "$WORK/q.qcow2" "$(uri q)"
qemu-img compare -f qcow2 -F raw "$WORK/q.qcow2" "$(uri q)" || fail "qemu-img compare"
nbdinfo --map "$(uri q)" | awk '$3 == 0 {n += $2} END {print "data after convert:", n, "bytes"; exit !(n == 10485760)}' \
    || fail "convert did not keep the volume sparse"

echo "--- fio nbd engine: random writes, crc32c verify, 4 jobs"
fio --name=nbd --ioengine=nbd --uri="$(uri f)" --rw=randwrite --bs=4k --iodepth=16 --numjobs=4 \
    --size=32M --offset_increment=32M --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --group_reporting --output-format=json >"$WORK/fio.json" 2>"$WORK/fio.err" \
    || { cat "$WORK/fio.err"; fail "fio verify"; }
python3 - "$WORK/fio.json" <<'EOF'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
assert j["error"] == 0 and j["write"]["io_bytes"] == 128 << 20 and j["read"]["io_bytes"] == 128 << 20, j["error"]
print(f"fio: 128 MiB written ({j['write']['iops']:.0f} IOPS), read back and verified ({j['read']['iops']:.0f} IOPS), error {j['error']}")
EOF

echo "--- snapshot taken while serving, opened on demand; changed-since context"
qemu-io -f raw -c "write -P 0x5a 0 64k" "$(uri sparse)" >/dev/null
qemu-io -f raw -c "write -P 0x5a 200M 8k" "$(uri sparse)" >/dev/null
ld snapshot create sparse@s2 >/dev/null
qemu-io -f raw -c "write -P 0x33 300M 4k" "$(uri sparse)" >/dev/null
nbdcopy "$(uri sparse@s2)" "$WORK/s2.img"
nbdcopy "$(uri sparse@s1)" "$WORK/s1.img"
python3 - "$WORK/s1.img" "$WORK/s2.img" "$WORK/chunk" <<'EOF'
import sys
s1, s2, chunk = (open(p, "rb").read() for p in sys.argv[1:])
M = 1 << 20
assert s1[100 * M:103 * M] == chunk and s1.count(0) == len(s1) - len(chunk) + chunk.count(0)
assert s2[200 * M:200 * M + 8192] == b"\x5a" * 8192, "s2 lacks the write before it"
assert s2[300 * M:300 * M + 4096] == b"\0" * 4096, "s2 has a write made after it"
print("snapshot exports hold exactly the data as of each snapshot")
EOF
nbdinfo --map=logdisk:changed-since:s1 "$(uri sparse@s2)" | awk '$3 == 1 {print $1, $2}' >"$WORK/changed"
printf '0 65536\n209715200 8192\n' | diff - "$WORK/changed" || fail "changed-since s1 is not the 2 writes"
echo "changed since s1: $(tr '\n' ' ' <"$WORK/changed")"
python3 tests/nbd/badclient.py "unix:$SOCK" read-only sparse@s2

echo "--- vhost-user-blk writes (verified) while a snapshot taken meanwhile is copied over NBD"
"$LOADGEN" --socket "$WORK/socks/g.sock" --wait 20 --rw randwrite --bs 4k --bs-max 64k --iodepth 16 \
    --time 12 --verify --seed 5 --json -q >"$WORK/lg.json" 2>"$WORK/lg.err" &
LG=$!
sleep 4
ld snapshot create g@live >/dev/null
nbdcopy "$(uri g@live)" "$WORK/live.img"
kill -0 $LG 2>/dev/null || fail "the vhost-user writer stopped while the snapshot was copied"
wait $LG || { cat "$WORK/lg.err"; fail "the vhost-user writer failed (verify)"; }
python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print('vhost-user writer:', {k: j[k] for k in j if k in ('iops','ops','errors','verified')})" "$WORK/lg.json" 2>/dev/null || true
[[ $(stat -c %s "$WORK/live.img") = $((256 << 20)) ]] || fail "snapshot copy has the wrong size"

echo "--- TCP with the token"
nbdinfo "nbd://127.0.0.1:$TCP_PORT/$TOKEN/q" | grep -q "export-size: 67108864" || fail "token export"
if nbdinfo "nbd://127.0.0.1:$TCP_PORT/q" >/dev/null 2>&1; then fail "TCP without the token was served"; fi
python3 tests/nbd/badclient.py "tcp:127.0.0.1:$TCP_PORT" wrong-token q

echo "--- bad input"
for s in garbage garbage-request unknown-option unknown-export bad-requests; do
    python3 tests/nbd/badclient.py "unix:$SOCK" "$s" big
done
python3 tests/nbd/badclient.py "tcp:127.0.0.1:$TCP_PORT" bad-requests big "$TOKEN"
kill -0 "$PID" || fail "the daemon died"
qemu-img compare -f qcow2 -F raw "$WORK/q.qcow2" "$(uri q)" >/dev/null || fail "q changed after bad input"
nbdcopy "$(uri big)" - | cmp - "$WORK/rand.img" || fail "big changed after bad input"
echo "daemon alive, every export unchanged after bad input"

kill -TERM "$PID"
wait "$PID" || fail "daemon exited non-zero"
PID=
grep -q "NBD server stopped" "$WORK/daemon.log" || fail "no clean NBD shutdown"
ld volume export g@live "$WORK/live-offline.img" >/dev/null
cmp "$WORK/live.img" "$WORK/live-offline.img" || fail "the NBD copy taken during IO differs from the snapshot"
cmp -s "$WORK/live.img" <(head -c $((256 << 20)) /dev/zero) && fail "the snapshot copy is all zeroes: nothing was written before it"
echo "the NBD copy made while the guest wrote equals the snapshot exported offline"
echo "PASS: NBD with nbdinfo, nbdcopy, qemu-img, fio; snapshots; token; bad input"
