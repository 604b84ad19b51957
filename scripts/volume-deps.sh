#!/usr/bin/env bash
# Module graph of src/volume: one "from to" line per `super::X` / `crate::volume::X` path
# in code (comments and test modules' `use super::*` left out), fed to tsort, which
# fails on an import cycle. Prints the modules in dependency order (lowest first).
#   scripts/volume-deps.sh          # order, or the cycle and exit 1
#   scripts/volume-deps.sh --edges  # the edges themselves
set -euo pipefail
cd "$(dirname "$0")/../src/volume"
edges() {
    for f in *.rs; do
        m=${f%.rs}
        [ "$m" = mod ] && continue
        echo "$m $m"
        { grep -v '^\s*//' "$f" || true; } |
            { grep -oE '(super|crate::volume)::[A-Za-z_]+' || true; } |
            sed -E 's/^(super|crate::volume):://' |
            sed -E 's/^(Volume|VolumeEnv|EngineOptions)$/engine/; s/^CloseReport$/epochs/; s/^(VolumeMeta|ParentRef)$/meta/' |
            { grep -vE '^[A-Z]' || true; } | sort -u | while read -r d; do
            if [ "$d" != "$m" ] && [ -f "$d.rs" ]; then echo "$d $m"; fi
        done
    done
}
if [ "${1:-}" = --edges ]; then
    edges | awk '$1 != $2 { print $2 " -> " $1 }'
    exit 0
fi
out=$(edges | tsort 2>&1) || true
if grep -q 'loop' <<<"$out"; then
    echo "import cycle in src/volume:" >&2
    grep -A100 'loop' <<<"$out" >&2
    exit 1
fi
echo "no import cycle in src/volume; modules, lowest first:"
echo $out
