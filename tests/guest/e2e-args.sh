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
