#!/usr/bin/env bash
# Device faults with dm-flakey (issue 19): logdisk in the test guest on ext4 over a
# device-mapper target that fails every write with EIO for a few seconds while
# logdisk-loadgen --journal writes with flushes (tests/guest/flakey-guest.sh). Checks: some
# guest requests failed (none silently "succeeded" into nowhere: after ext4 is checked and
# logdisk restarted, every write acknowledged before the last completed flush reads back,
# no sector holds garbage: logwrites-replay --volume-image), and the volume serves writes
# again after the device recovered.
# Usage: tests/guest/flakey-e2e.sh [--bin PATH] [--keep]
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"
REPLAY=$(dirname "$BIN")/logwrites-replay
LOADGEN=$(dirname "$BIN")/logdisk-loadgen
for b in "$REPLAY" "$LOADGEN"; do [[ -x $b ]] || { echo "$b not found" >&2; exit 125; }; done
T=$(mktemp -d /tmp/logdisk-flakey.XXXXXX)
cleanup() { if [[ $KEEP = 1 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi; }
trap cleanup EXIT
say() { echo "[flakey-e2e $(date +%T)] $*"; }
fail() { echo "FLAKEY E2E FAILED: $*" >&2; exit 1; }
strip_binaries
truncate -s 256M "$T/nvme.img"
truncate -s 16M "$T/journal.img"
truncate -s 32M "$T/volume.img"
drive "$T/nvme.img" nvme
drive "$T/journal.img" jnl
drive "$T/volume.img" vol
"$HERE/run-guest.sh" --script "$HERE/flakey-guest.sh" --mem 1G --timeout 900 \
    --file "$T/logdisk:/usr/bin/logdisk" --file "$T/logdisk-loadgen:/usr/bin/logdisk-loadgen" \
    --file "$HERE/powerloss.toml:/root/pl.toml" --log "$T/guest.log" -- "${QEXTRA[@]}" >/dev/null \
    || { tail -n 40 "$T/guest.log"; fail "guest run"; }
grep -q FLAKEY-GUEST-DONE "$T/guest.log" || fail "guest did not finish"
sed -n '/FLAKEY-DAEMON-LOG-BEGIN/,/FLAKEY-DAEMON-LOG-END/p' "$T/guest.log" | tr -d '\r'
grep -E '^\[flakey-guest|^powerloss:' "$T/guest.log" | tr -d '\r'
tr -d '\0' <"$T/journal.img" >"$T/journal.txt"
"$REPLAY" --journal "$T/journal.txt" --volume-image "$T/volume.img" || fail "acknowledged writes lost or garbage read"
say "PASS"
