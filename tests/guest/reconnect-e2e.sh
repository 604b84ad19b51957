#!/usr/bin/env bash
# Restart and upgrade logdisk under a running guest (QEMU, TCG, chardev reconnect-ms):
#   the guest (tests/guest/reconnect-guest.sh) runs fio --verify=crc32c on vda (4k random
#   writes QD32 + 1M sequential writes, 2 queues) and an ext4 file workload with checksums
#   on vdb, and times a probe read to see pauses. Meanwhile the host
#     - kills the daemon with -9 at random moments RECONNECT_KILLS times (default 3 in CI;
#       RECONNECT_KILLS=10 is the full variant) and starts it again with no argument (the
#       recorded attachments come back); the second restart first runs a daemon that
#       aborts while QEMU sends its memory table (LOGDISK_FAULT=vhost-mem-table), the third
#       one that aborts at ring start after repairing the inflight region
#       (LOGDISK_FAULT=vhost-ring-start);
#     - once stops it with SIGTERM and starts a fresh copy of the binary (the upgrade path).
#   Pass: fio 0 errors and verified every run, no I/O error in the guest's dmesg, e2fsck
#   clean, every checksum matches; the guest-visible pauses are printed.
# Usage: tests/guest/reconnect-e2e.sh [--bin PATH] [--keep]     (env RECONNECT_KILLS=N)
set -euo pipefail
source "$(dirname "$0")/e2e-args.sh" "$@"
KILLS=${RECONNECT_KILLS:-3}
[[ $KILLS =~ ^[1-9][0-9]*$ ]] || { echo "RECONNECT_KILLS must be a positive integer" >&2; exit 125; }
# The guest works this long: the restarts happen in the first part of it.
DURATION=$((KILLS * 4 + 20))

e2e_setup reconnect-e2e "RECONNECT E2E"
DD=$T/data
SOCKS=$T/socks
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# start_daemon BIN [ENV=VALUE...]: serve the recorded attachments.
start_daemon() {
    local bin=$1; shift
    env "$@" "$bin" --data-dir "$DD" serve >>"$T/daemon.log" 2>&1 &
    DAEMON=$!
}
# Both sockets exist (stale ones of a killed daemon are removed before it restarts).
wait_listening() {
    for _ in $(seq 600); do
        [[ -S $SOCKS/fio.sock && -S $SOCKS/fs.sock ]] && return 0
        kill -0 "$DAEMON" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
guest_alive() { kill -0 "$GUESTPID" 2>/dev/null; }

GUEST=$("$HERE/build-guest.sh" | tail -n 1)
say "guest image: $GUEST; $KILLS kill -9 restarts + 1 SIGTERM upgrade; guest workload ${DURATION}s"
"$BIN" --data-dir "$DD" volume create fio --size 128M >/dev/null
"$BIN" --data-dir "$DD" volume create fs --size 128M >/dev/null
env RUST_LOG=info "$BIN" --data-dir "$DD" serve --socket-dir "$SOCKS" --num-queues 2 fio fs >>"$T/daemon.log" 2>&1 &
DAEMON=$!
wait_listening || { cat "$T/daemon.log"; fail "daemon did not start"; }
cp "$BIN" "$T/logdisk-upgraded"   # the "new version" started after the SIGTERM

"$HERE/run-guest.sh" --queues 2 --socket "$SOCKS/fio.sock" --socket "$SOCKS/fs.sock" --reconnect-ms 100 \
    --script "$HERE/reconnect-guest.sh" --env "DURATION=$DURATION" --timeout 900 \
    --log "$T/guest.log" >/dev/null 2>"$T/run-guest.err" &
GUESTPID=$!
for _ in $(seq 6000); do grep -q RECONNECT-GO "$T/guest.log" 2>/dev/null && break; guest_alive || break; sleep 0.05; done
grep -q RECONNECT-GO "$T/guest.log" || { tail -n 30 "$T/guest.log"; fail "the guest never started its workload"; }
# Guest uptime -> host clock (to within the 50 ms this loop polls at).
GO_HOST_MS=$(now_ms)
GO_UPTIME=$(tr -d '\r' <"$T/guest.log" | awk '/RECONNECT-GO/ { print $NF; exit }')
say "guest workload running"

declare -a WINDOWS   # "kill_ms back_ms label" per restart
restart() { # KIND: kill9 | term
    local kind=$1 t0 t1 bin=$BIN
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.2f", 1.5 + (r % 250) / 100 }')"
    guest_alive || fail "the guest ended before restart $2"
    t0=$(now_ms)
    if [[ $kind = kill9 ]]; then
        kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
    else
        kill -TERM "$DAEMON"; wait "$DAEMON" || fail "daemon exit status after SIGTERM"
        bin=$T/logdisk-upgraded
    fi
    rm -f "$SOCKS/fio.sock" "$SOCKS/fs.sock"
    local fault=""
    [[ $kind = kill9 && $2 = 2 ]] && fault=vhost-mem-table
    [[ $kind = kill9 && $2 = 3 ]] && fault=vhost-ring-start
    if [[ -n $fault ]]; then
        # A daemon that dies at the fault point once QEMU reconnects; then the real one.
        start_daemon "$bin" RUST_LOG=info LOGDISK_FAULT=$fault
        for _ in $(seq 600); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.05; done
        kill -0 "$DAEMON" 2>/dev/null && fail "the daemon with LOGDISK_FAULT=$fault did not abort"
        wait "$DAEMON" 2>/dev/null || true
        grep -q "fault injection: aborting at $fault" "$T/daemon.log" || fail "fault point $fault not reached"
    fi
    start_daemon "$bin" RUST_LOG=info
    wait_listening || { tail -n 30 "$T/daemon.log"; fail "daemon did not come back"; }
    t1=$(now_ms)
    WINDOWS+=("$t0 $t1 restart-$2-$kind${fault:++crash-at-$fault}")
    say "restart $2 ($kind${fault:+, first a crash at $fault}): daemon listening again after $((t1 - t0)) ms"
}
for i in $(seq "$KILLS"); do restart kill9 "$i"; done
restart term "$((KILLS + 1))"

say "restarts done; waiting for the guest"
if ! wait "$GUESTPID"; then GUESTPID=; tail -n 40 "$T/guest.log"; fail "the guest's checks failed"; fi
GUESTPID=
grep -q RECONNECT-VERIFIED "$T/guest.log" || fail "the guest did not verify"
tr -d '\r' <"$T/guest.log" | grep -E '^(fio run|FIO-RUNS|FS-FILES|FS-CHECKSUMS-OK|PAUSE)' | sed 's/^/  guest: /'
# Per restart, the longest probe read that overlapped the window from the kill to one second
# after the daemon listened again: the pause the guest saw. Reads overlapping no restart
# show the TCG baseline.
tr -d '\r' <"$T/guest.log" | awk -v go_ms="$GO_HOST_MS" -v go_up="$GO_UPTIME" -v w="${WINDOWS[*]}" '
    BEGIN { n = split(w, f, " "); for (i = 1; i <= n; i += 3) { k++; a[k] = f[i]; b[k] = f[i + 1] + 1000; name[k] = f[i + 2]; down[k] = f[i + 1] - f[i] } }
    /^PAUSE/ {
        s = go_ms + ($2 - go_up) * 1000; e = s + $3 * 1000; hit = 0
        for (j = 1; j <= k; j++) if (s < b[j] && e > a[j]) { hit = 1; if ($3 > m[j]) m[j] = $3 }
        if (!hit && $3 > base) base = $3
    }
    END {
        for (j = 1; j <= k; j++) printf "  %s: daemon down %d ms, longest guest probe read across it %.2f s\n", name[j], down[j], m[j]
        printf "  TCG baseline: longest probe read overlapping no restart %.2f s\n", base
    }'
RESUB=$(grep -c "resubmitting requests left in flight" "$T/daemon.log" || true)
say "queues that resubmitted requests left in flight after a restart: $RESUB"
kill -TERM "$DAEMON"; wait "$DAEMON" || fail "final daemon exit status"; DAEMON=
say "PASS: $KILLS kill -9 restarts (one crashing on the memory table, one at ring start) + a SIGTERM upgrade under fio verify and ext4: 0 errors, verified, fsck clean, checksums match"
