# Shared by benches/native-bench.sh and benches/guest-bench.sh (sourced; needs log/die).

# A scratch dir on a real disk (O_DIRECT needs one): under $DIR when given, else
# $LOGDISK_BENCH_TMPDIR / $TMPDIR / /tmp, or the logdisk cache dir when that is tmpfs.
# Prints its path.
bench_scratch() {
    local base=${DIR:-${LOGDISK_BENCH_TMPDIR:-${TMPDIR:-/tmp}}}
    if [[ -z "$DIR" && $(stat -f -c %T "$base") == tmpfs ]]; then
        base=${LOGDISK_CACHE:-${HOME:-/tmp}/.cache/logdisk}
    fi
    mkdir -p "$base"
    [[ $(stat -f -c %T "$base") != tmpfs ]] || die "$base is tmpfs: O_DIRECT (cache.direct=on) needs a real disk; use --dir"
    mktemp -d "$base/$1.XXXXXX"
}

# SIGTERM every pid in PIDS, give each 10 s, then SIGKILL and reap.
stop_pids() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

# utime+stime of PID in clock ticks
cpu_ticks() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    # after "pid (comm) ": state=1 ... utime=12 stime=13
    awk '{print $12 + $13}' <<<"$s"
}
