#!/usr/bin/env bash
# A full write-buffer file system (issue 19) under a real guest client: logdisk in the test
# guest on a 64 MiB ext4 that also holds its embedded object store, a 256 MiB volume, and a
# ballast file leaving ~12 MiB free; logdisk-loadgen --journal writes verifiable patterns
# with flushes until ext4 is full and on into the full file system
# (tests/guest/enospc-guest.sh). Checks: requests failed and the daemon logged "no space"
# without crashing; after the ballast is deleted the same daemon takes writes and flushes
# again with no failure; it stops cleanly; and in the exported volume every write
# acknowledged before the last completed flush of each phase reads back, no sector holds
# garbage (logwrites-replay --volume-image, once per phase over that phase's region), and
# the object store alone (a fresh data dir) holds the same volume.
# ENOSPC_RESTART_WHILE_FULL=1: logdisk is stopped (SIGTERM) while the file system is
# full, started on it once, and started again after the space returned.
# ENOSPC_PHASE2_SECS (default 4): how long phase 2 writes. The daemon logs scrub passes
# with their phases (RUST_LOG): a failure prints them.
# Usage: [ENOSPC_RESTART_WHILE_FULL=1] [ENOSPC_PHASE2_SECS=N] tests/guest/enospc-e2e.sh [--bin PATH] [--keep]
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"
REPLAY=$(dirname "$BIN")/logwrites-replay
LOADGEN=$(dirname "$BIN")/logdisk-loadgen
for b in "$REPLAY" "$LOADGEN"; do [[ -x $b ]] || { echo "$b not found" >&2; exit 125; }; done
e2e_setup enospc-e2e ENOSPC-E2E
strip_binaries
truncate -s 64M "$T/nvme.img"
truncate -s 8M "$T/journal1.img"
truncate -s 8M "$T/journal2.img"
drive "$T/nvme.img" nvme
drive "$T/journal1.img" jnl1
drive "$T/journal2.img" jnl2
START=$(date +%s)
"$HERE/run-guest.sh" --script "$HERE/enospc-guest.sh" --mem 1G --timeout 600 \
    --env RESTART_WHILE_FULL="${ENOSPC_RESTART_WHILE_FULL:-0}" --env PHASE2_SECS="${ENOSPC_PHASE2_SECS:-4}" --env RUST_LOG=info,logdisk::volume::scrub=debug,logdisk::volume::scrubber=debug,logdisk::volume::write_path=debug \
    --file "$T/logdisk:/usr/bin/logdisk" --file "$T/logdisk-loadgen:/usr/bin/logdisk-loadgen" \
    --file "$HERE/powerloss.toml:/root/pl.toml" --log "$T/guest.log" -- "${QEXTRA[@]}" >/dev/null \
    || { tail -n 40 "$T/guest.log"; grep -aE '^\[enospc-guest|ENOSPC-GUEST|^powerloss:|pass phases' "$T/guest.log"; fail "guest run"; }
grep -q ENOSPC-GUEST-DONE "$T/guest.log" || fail "guest did not finish"
sed -n '/ENOSPC-DAEMON-LOG-BEGIN/,/ENOSPC-DAEMON-LOG-END/p' "$T/guest.log" | tr -d '\r'
grep -E '^\[enospc-guest|^powerloss:' "$T/guest.log" | tr -d '\r'
grep '^\[daemon\] ' "$T/guest.log" | tr -d '\r'
say "guest run $(( $(date +%s) - START )) s"
# The volume is exported here, from a copy of the data dir taken out of the guest's ext4
# (debugfs, no mount): first from the object store alone on a fresh data dir (the daemon
# stopped cleanly, so every write must be uploaded), then from the data dir itself.
e2fsck -fn "$T/nvme.img" >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out"; fail "ext4 damaged"; }
debugfs -R "rdump /ld $T" "$T/nvme.img" >/dev/null 2>&1
[[ -f $T/ld/backend ]] || fail "no data dir in the guest's file system"
cp -a "$T/ld/objects" "$T/objects-alone"
echo "file://$T/ld/objects" >"$T/ld/backend" # recorded by absolute path; it moved
"$BIN" --data-dir "$T/fresh" --backend "file://$T/objects-alone" --config "$HERE/powerloss.toml" \
    volume export vm "$T/alone.img" >"$T/export.out" 2>&1 || { tail -n 3 "$T/export.out"; fail "export from the object store alone"; }
"$BIN" --data-dir "$T/ld" --config "$HERE/powerloss.toml" volume export vm "$T/volume.img" >"$T/export.out" 2>&1 \
    || { tail -n 3 "$T/export.out"; fail "export from the data dir"; }
cmp -s "$T/alone.img" "$T/volume.img" || fail "the object store alone and the data dir disagree"
# Phase 1 wrote 0..24M, phase 2 240M..248M (another seed): each journal is checked
# against the image with the other phase's region cut off (zeroes read as never written).
tr -d '\0' <"$T/journal1.img" >"$T/journal1.txt"
tr -d '\0' <"$T/journal2.img" >"$T/journal2.txt"
head -c 240M "$T/volume.img" >"$T/phase1.img"
truncate -s 256M "$T/phase2.img"
dd if="$T/volume.img" of="$T/phase2.img" bs=1M skip=240 seek=240 conv=notrunc status=none
"$REPLAY" --journal "$T/journal1.txt" --volume-image "$T/phase1.img" \
    || fail "phase 1 (file system full): acknowledged writes lost or garbage read"
"$REPLAY" --journal "$T/journal2.txt" --seed 2 --volume-image "$T/phase2.img" \
    || fail "phase 2 (space returned): acknowledged writes lost or garbage read"
say "PASS"
