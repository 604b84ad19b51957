#!/usr/bin/env bash
# Power-loss test with dm-log-writes (issue 19). In the test guest (tests/guest/
# powerloss-guest.sh): a log-writes target over a plain virtio disk (the "host NVMe"), ext4
# on it, logdisk's data dir and embedded object store there, `logdisk serve`, and
# logdisk-loadgen --journal writing verifiable patterns on 2 queues with a FLUSH every few
# writes and a log mark after each completed FLUSH (plus snapshots, scrubs, SCO/TLog
# roll-over, checkpoints). On the host, logwrites-replay replays the log to points (marks,
# FLUSH/FUA entries, points between), replays ext4's journal (e2fsck -E journal_only),
# copies the data dir out (debugfs rdump), exports the volume with logdisk and checks every
# sector against the client's journal. POWERLOSS_FS=xfs: XFS instead of ext4 (a 512M device,
# the XFS minimum being 300M); the checker then mounts each replayed copy with a loop mount
# (the kernel recovers XFS's log; there is no userspace log replay) and copies the data dir
# out with cp -a: needs root and a host kernel with xfs.
#
# Usage: tests/guest/powerloss-e2e.sh [--bin PATH] [--keep]
# Environment:
#   POWERLOSS_FLUSHES  acknowledged flushes in the workload (default 2000)
#   POWERLOSS_POINTS   replay points checked: a number (a spread sample, default 40) or
#                      "all" (every mark, FLUSH/FUA entry and a point between each pair:
#                      the full run, hours)
#   POWERLOSS_DTL      1 (default): a DTL server in the guest, the volume in sync mode, and
#                      takeovers from the object store + DTL checked at marks; 0: none
#                      (a DTL in sync makes each flush a round trip: ~3x slower under TCG)
#   POWERLOSS_DTL_POINTS  at how many of the checked marks (plus the end) to also restart
#                      the volume from the object store + the DTL server's log (a takeover
#                      on an empty data dir); default 6, "all" with POWERLOSS_POINTS=all
#   POWERLOSS_SEED     workload seed (default 1)
#   POWERLOSS_WORK     keep the images here (default a temp dir)
#   POWERLOSS_FS       ext4 (default) or xfs: the file system holding the data dir
#   POWERLOSS_CONFIG   logdisk's config in the guest and for the replay (default
#                      tests/guest/powerloss.toml; tests/guest/powerloss-single.toml: larger
#                      SCOs, so the flush-heavy volume moves to zero-filled SCOs and its
#                      flushes take one device flush)
#   POWERLOSS_EXPECT_SINGLE  1: fail unless some flushes took one device flush
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"
REPLAY=${LOGDISK_REPLAY_BIN:-$(dirname "$BIN")/logwrites-replay}
LOADGEN=${LOGDISK_LOADGEN_BIN:-$(dirname "$BIN")/logdisk-loadgen}
for b in "$REPLAY" "$LOADGEN"; do
    [[ -x $b ]] || { echo "$b not found (cargo build --release --bins -p logdisk -p logdisk-loadgen)" >&2; exit 125; }
done
FS=${POWERLOSS_FS:-ext4}
case $FS in
    ext4) TOOLS=(debugfs e2fsck strip) NVME_SIZE=256M ;;
    xfs) TOOLS=(mount umount mountpoint strip) NVME_SIZE=512M
        [[ $(id -u) == 0 ]] || { echo "POWERLOSS_FS=xfs needs root (loop mounts)" >&2; exit 125; }
        grep -qw xfs /proc/filesystems || modprobe xfs 2>/dev/null \
            || { echo "the host kernel has no xfs (POWERLOSS_FS=xfs)" >&2; exit 125; } ;;
    *) echo "POWERLOSS_FS must be ext4 or xfs (got '$FS')" >&2; exit 2 ;;
esac
for t in "${TOOLS[@]}"; do
    command -v "$t" >/dev/null || [[ -x /usr/sbin/$t ]] || { echo "$t not found (e2fsprogs, util-linux, binutils)" >&2; exit 125; }
done
export PATH=$PATH:/usr/sbin
FLUSHES=${POWERLOSS_FLUSHES:-2000}
POINTS=${POWERLOSS_POINTS:-24}
USE_DTL=${POWERLOSS_DTL:-1}
if [[ $POINTS = all ]]; then DTL_POINTS=${POWERLOSS_DTL_POINTS:-all}; else DTL_POINTS=${POWERLOSS_DTL_POINTS:-6}; fi
SEED=${POWERLOSS_SEED:-1}
CONFIG=${POWERLOSS_CONFIG:-$HERE/powerloss.toml}
[[ -f $CONFIG ]] || { echo "POWERLOSS_CONFIG $CONFIG not found" >&2; exit 2; }

T=${POWERLOSS_WORK:-$(mktemp -d /tmp/logdisk-powerloss.XXXXXX)}
mkdir -p "$T"
# A failed run keeps its images and the replay's failed-<entry> directories as evidence.
cleanup() { local rc=$?; if [[ $KEEP = 1 || -n ${POWERLOSS_WORK:-} || $rc != 0 ]]; then echo "kept $T" >&2; else rm -rf "$T"; fi; }
trap cleanup EXIT
say() { echo "[powerloss-e2e $(date +%T)] $*"; }
fail() { echo "POWERLOSS E2E FAILED: $*" >&2; exit 1; }

strip_binaries
rm -f "$T/nvme.img" "$T/log.img" "$T/journal.img"
truncate -s "$NVME_SIZE" "$T/nvme.img"
truncate -s 4G "$T/log.img"
truncate -s 64M "$T/journal.img"
# vda: the "host NVMe" under dm-log-writes, with one request queue. dm-log-writes logs the
# writes a FLUSH covers when that FLUSH completes; with a queue per vCPU two FLUSHes can
# complete out of order, and the log then holds a write that completed earlier after one
# that completed later. Replayed, a TLog's zeroed region, written and completed before its
# first batch was sent, overwrote that batch: 3 power-loss failures (2026-12-06/07) were
# this, not logdisk. With one queue, FLUSHes complete in the order they were sent.
drive "$T/nvme.img" nvme num-queues=1
drive "$T/log.img" logw     # vdb: the log
drive "$T/journal.img" jnl  # vdc: the client's journal, copied here at the end
say "guest run: $FLUSHES flushes on $FS"
"$HERE/run-guest.sh" --script "$HERE/powerloss-guest.sh" --mem 1G --timeout 1200 \
    --file "$T/logdisk:/usr/bin/logdisk" --file "$T/logdisk-loadgen:/usr/bin/logdisk-loadgen" \
    --file "$CONFIG:/root/pl.toml" --env "FLUSHES=$FLUSHES" --env "SEED=$SEED" --env "FS=$FS" \
    --env "DTL=$USE_DTL" --env "EXPECT_SINGLE=${POWERLOSS_EXPECT_SINGLE:-0}" \
    --log "$T/guest.log" -- "${QEXTRA[@]}" >/dev/null || { tail -n 40 "$T/guest.log"; fail "guest run"; }
grep -q POWERLOSS-GUEST-DONE "$T/guest.log" || fail "guest did not finish"
grep -E '^\[powerloss-guest|^powerloss:|POWERLOSS-JOURNAL' "$T/guest.log" | tr -d '\r'
tr -d '\0' <"$T/journal.img" >"$T/journal.txt"
tail -n 1 "$T/journal.txt" | grep -qx E || fail "journal incomplete"

DTL_ARGS=()
if [[ $USE_DTL = 1 ]]; then
    DTL_ARGS=(--dtl-dir /dtl --dtl-points "$DTL_POINTS")
    say "replay: $POINTS points, object store + DTL at $DTL_POINTS marks and the end"
else
    say "replay: $POINTS points (no DTL: object store alone at the end)"
fi
"$REPLAY" --log "$T/log.img" --dev-size "$NVME_SIZE" --fs "$FS" --journal "$T/journal.txt" --seed "$SEED" \
    --logdisk "$T/logdisk" --config "$CONFIG" --volume vm --work "$T/replay" --points "$POINTS" \
    "${DTL_ARGS[@]}" \
    || fail "replay checker reported violations (see above)"
say "PASS"
