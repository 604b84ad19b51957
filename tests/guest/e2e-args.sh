# Sourced by the guest end-to-end scripts (source "$(dirname "$0")/e2e-args.sh" "$@"):
# sets HERE (tests/guest), ROOT (the repo), BIN (--bin PATH or $LOGDISK_BIN, default the
# release build) and KEEP (--keep: keep the work dir); exits 125 on a bad option or a
# missing binary.
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${LOGDISK_BIN:-$ROOT/target/release/logdisk}
KEEP=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        *) echo "usage: $0 [--bin PATH] [--keep]" >&2; exit 125 ;;
    esac
done
[[ -x $BIN ]] || { echo "logdisk binary $BIN not found (cargo build --release)" >&2; exit 125; }

# e2e_setup NAME LABEL: work dir T=/tmp/logdisk-NAME.XXXXXX; on exit the guest ($GUESTPID)
# and the daemon ($DAEMON) are killed and T is removed (kept with --keep); say() logs with
# NAME and the time, fail() ends the test with "LABEL FAILED: ...".
e2e_setup() {
    E2E_NAME=$1
    E2E_LABEL=$2
    T=$(mktemp -d "/tmp/logdisk-$1.XXXXXX")
    DAEMON=
    GUESTPID=
    trap e2e_cleanup EXIT
}
e2e_cleanup() {
    [[ -n $GUESTPID ]] && kill "$GUESTPID" 2>/dev/null || true
    [[ -n $DAEMON ]] && kill -9 "$DAEMON" 2>/dev/null || true
    if [[ $KEEP = 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi
}
say() { echo "[$E2E_NAME $(date +%T.%3N)] $*"; }
fail() { echo "$E2E_LABEL FAILED: $*" >&2; exit 1; }

# drive FILE ID [PROPS]: one more plain virtio-blk disk for the guest (QEMU's own, on raw
# FILE, serial ID, PROPS more device properties), appended to QEXTRA (the guest sees them
# as vda, vdb, ... in order).
QEXTRA=()
drive() { QEXTRA+=(-drive "file=$1,if=none,id=$2,format=raw,cache=unsafe,aio=threads" -device "virtio-blk-pci,drive=$2,serial=$2${3:+,$3}"); }
# strip_binaries: stripped copies of $BIN and $LOADGEN in $T (the per-run initramfs stays
# small; the release build carries debug info).
strip_binaries() {
    strip -o "$T/logdisk" "$BIN"
    strip -o "$T/logdisk-loadgen" "$LOADGEN"
}
