#!/usr/bin/env bash
# Fuzz logdisk's decoders of untrusted input with cargo-fuzz (libFuzzer + AddressSanitizer)
# on the stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz needs).
#
#   scripts/fuzz.sh                    CI run: every target, fixed seed, 15 s each
#   scripts/fuzz.sh --secs 600         longer run (per target), same seed
#   scripts/fuzz.sh --secs 3600 dtl    one target
#
# Targets (fuzz/fuzz_targets/): request_parser (virtio-blk requests from guest memory),
# nbd (NBD handshake and requests), dtl (DTL wire protocol), sco_object (SCO objects from
# a bucket), tlog (TLogs from a bucket or a crash-cut file). Seed: LOGDISK_FUZZ_SEED
# (default 1). Exits non-zero on the first crash, leak, timeout or out-of-memory; the
# crashing input is kept in fuzz/artifacts/<target>/ — turn it into a regression test.
# The corpus grows in a scratch dir; fuzz/seeds/<target> holds the committed inputs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=15
TARGETS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --secs) SECS=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(request_parser nbd dtl sco_object tlog)
SEED=${LOGDISK_FUZZ_SEED:-1}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/../target}/fuzz

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed: run scripts/install-test-deps.sh (cargo install cargo-fuzz)" >&2
    exit 1
fi

t0=$(date +%s)
cargo fuzz build -O
echo "fuzz: built in $(( $(date +%s) - t0 ))s"

BIN=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
for t in "${TARGETS[@]}"; do
    mkdir -p "$SCRATCH/$t" "artifacts/$t"
    seeds=()
    [[ -d seeds/$t ]] && seeds=("seeds/$t")
    echo "=== fuzz $t: ${SECS}s, seed $SEED"
    # New inputs go to the scratch corpus; seeds/<t> (committed, with every crash found so
    # far) is read only. -rss_limit_mb / -malloc_limit_mb: a hostile length must not make
    # a decoder allocate gigabytes.
    if ! "$BIN/$t" "$SCRATCH/$t" "${seeds[@]}" -seed="$SEED" -max_total_time="$SECS" \
        -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" 2>"$SCRATCH/$t.log"; then
        grep -E "ERROR|panicked|SUMMARY|Test unit written" "$SCRATCH/$t.log" | head -n 20 >&2
        tail -n 40 "$SCRATCH/$t.log" >&2
        echo "fuzz $t FAILED: the crashing input is in fuzz/artifacts/$t/; fix it and commit the input to fuzz/seeds/$t/ (tests/decoder_fuzz.rs replays it)" >&2
        exit 1
    fi
    grep -E "^stat::number_of_executed_units|DONE" "$SCRATCH/$t.log" | tail -n 2
done
echo "fuzz: ${#TARGETS[@]} targets passed in $(( $(date +%s) - t0 ))s"
