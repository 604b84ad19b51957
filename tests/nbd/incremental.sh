#!/usr/bin/env bash
# Incremental backups from the log, replayed onto a fresh object store:
#   write, snapshot s1, full export; write more, s2, `export --since s1`; write and zero
#   a range, s3, `export --since s2`; on another data dir (its own object store) import
#   the full image and apply both diffs with `import --diff`: the result equals s3 byte
#   for byte. `snapshot diff` lists exactly the written/zeroed ranges, and each diff
#   file's allocated size is its changed data (plus a small trailer), not the volume's.
#
#   tests/nbd/incremental.sh [--bin target/release/logdisk]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/logdisk
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
BIN=$(realpath "$BIN")
WORK=$(mktemp -d /tmp/logdisk-incr.XXXXXX)
trap 'if [[ ${KEEP:-0} = 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi' EXIT
fail() { echo "FAIL: $*"; exit 1; }
A() { "$BIN" --data-dir "$WORK/a" "$@"; }
B() { "$BIN" --data-dir "$WORK/b" "$@"; }
rnd() { head -c "$1" /dev/urandom >"$2"; }
alloc() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

A volume create v --size 256M >/dev/null
rnd 8M "$WORK/w1"
A volume import v "$WORK/w1" --offset 16M >/dev/null
A snapshot create v@s1 >/dev/null
A volume export v@s1 "$WORK/full.img" >/dev/null

# s2: 1 MiB overwritten inside the first write, 3 MiB new at 200 MiB, one 4 KiB cluster.
rnd 1M "$WORK/w2"; rnd 3M "$WORK/w3"; rnd 4K "$WORK/w4"
A volume import v "$WORK/w2" --offset 18M >/dev/null
A volume import v "$WORK/w3" --offset 200M >/dev/null
A volume import v "$WORK/w4" --offset 100M >/dev/null
A snapshot create v@s2 >/dev/null
A volume export v@s2 "$WORK/d1" --since s1

# s3: 2 MiB zeroed (discarded) inside the first write, 512 KiB new at 250 MiB.
head -c 2M /dev/zero >"$WORK/z"
rnd 512K "$WORK/w5"
A volume import v "$WORK/z" --offset 20M >/dev/null
A volume import v "$WORK/w5" --offset 250M >/dev/null
A snapshot create v@s3 >/dev/null
A volume export v@s3 "$WORK/d2" --since s2

A snapshot diff v@s1 v@s2
A snapshot diff v@s2 v@s3 --json >"$WORK/d2.json"
A snapshot diff v@s1 v@s2 --json >"$WORK/d1.json"
python3 - "$WORK/d1.json" "$WORK/d2.json" <<'EOF'
import json, sys
M = 1 << 20
d1, d2 = (json.load(open(p)) for p in sys.argv[1:])
ext = lambda d: [(e["offset"], e["length"], e["data"]) for e in d["extents"]]
assert ext(d1) == [(18 * M, M, True), (100 * M, 4096, True), (200 * M, 3 * M, True)], ext(d1)
assert ext(d2) == [(20 * M, 2 * M, False), (250 * M, M // 2, True)], ext(d2)
assert d1["data_bytes"] == 4 * M + 4096 and d2["data_bytes"] == M // 2 and d2["zeroed_bytes"] == 2 * M
print("snapshot diff: exactly the written and zeroed ranges")
EOF
for f in d1:$((4 * 1048576 + 4096)) d2:$((1048576 / 2)); do
    file=$WORK/${f%%:*}; want=${f##*:}
    got=$(alloc "$file")
    echo "${f%%:*}: $got bytes allocated for $want changed data bytes (file size $(stat -c %s "$file"))"
    [[ $got -ge $want && $got -le $((want + 65536)) ]] || fail "${f%%:*} allocates $got bytes, changed data is $want"
done

B volume create w --size 256M >/dev/null
B volume import w "$WORK/full.img" >/dev/null
B volume import w "$WORK/d1" --diff
B volume import w "$WORK/d2" --diff
B volume export w "$WORK/w.img" >/dev/null
A volume export v@s3 "$WORK/s3.img" >/dev/null
cmp "$WORK/w.img" "$WORK/s3.img" || fail "full + d1 + d2 differs from s3"
A volume export v@s2 "$WORK/s2.img" >/dev/null
cmp -s "$WORK/w.img" "$WORK/s2.img" && fail "s3 equals s2: the test proves nothing"
if B volume import w "$WORK/w1" --diff 2>"$WORK/err"; then fail "a non-diff file was applied"; fi
grep -q "not a logdisk diff file" "$WORK/err" || fail "unclear error for a non-diff file: $(cat "$WORK/err")"
echo "PASS: full + 2 incremental diffs onto a fresh object store equal s3"
