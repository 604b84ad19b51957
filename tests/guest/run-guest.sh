#!/usr/bin/env bash
# Boot the logdisk test guest once (QEMU, TCG) with vhost-user-blk disks and run a script in it.
#
#   tests/guest/run-guest.sh --socket /tmp/vol.sock --script tests/guest/example-check.sh
#
# Options:
#   --socket PATH     vhost-user-blk unix socket; repeat for more disks (vda, vdb, ... in order)
#   --script FILE     shell script run in the guest as /test.sh (busybox sh; cwd /root)
#   --env NAME=VALUE  variable exported to the guest script; repeatable
#   --file SRC[:DEST] extra host file copied into the guest (default DEST /root/<name>); repeatable
#   --queues N        virtqueues per disk (default 2)
#   --mem SIZE        guest RAM (default 512M)
#   --cpus N          vCPUs (default 2)
#   --timeout SECS    kill QEMU and fail after this long (default 600)
#   --log FILE        also write the console to FILE
#   --append STR      extra kernel command line arguments
#   --socket-wait S   wait up to S seconds for each socket to appear (default 30)
#   --reconnect-ms N  let QEMU reconnect to a restarted backend (chardev reconnect-ms)
#   --kernel-verbose  kernel messages at the default log level (default: warnings only)
#   -- ARGS...        extra QEMU arguments
#
# The guest image comes from tests/guest/build-guest.sh (cached); the script is delivered by
# appending a small per-run cpio archive to the cached initramfs. The QEMU command line is
# the one in qemu-configs/qemu-vhost-user-blk.sh. The console streams to stdout.
#
# Exit status: the guest's `LOGDISK-GUEST-EXIT <status>` (0 = the script passed);
#   124 timeout, 125 usage or setup error, 126 QEMU ended without the exit line
#   (QEMU error, kernel panic, guest crash).
# Also prints, on stderr, `[run-guest] boot <s>s (to disks ready), total <s>s, status <n>`.
set -euo pipefail
shopt -s extglob

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

log() { printf '[run-guest] %s\n' "$*" >&2; }
die() { printf '[run-guest] ERROR: %s\n' "$*" >&2; exit 125; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 125; }

SOCKETS=() FILES=() ENVS=() EXTRA=()
SCRIPT="" QUEUES=2 MEM=512M CPUS=2 TIMEOUT=600 LOGFILE="" APPEND_EXTRA="" SOCKET_WAIT=30
RECONNECT="" KVERBOSE=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --socket)         [[ $# -ge 2 ]] || die "--socket needs a path"; SOCKETS+=("$2"); shift 2 ;;
        --script)         [[ $# -ge 2 ]] || die "--script needs a file"; SCRIPT=$2; shift 2 ;;
        --env)            [[ "${2:-}" == *=* ]] || die "--env needs NAME=VALUE"; ENVS+=("$2"); shift 2 ;;
        --file)           [[ $# -ge 2 ]] || die "--file needs SRC[:DEST]"; FILES+=("$2"); shift 2 ;;
        --queues)         QUEUES=${2:-}; shift 2 ;;
        --mem)            MEM=${2:-}; shift 2 ;;
        --cpus)           CPUS=${2:-}; shift 2 ;;
        --timeout)        TIMEOUT=${2:-}; shift 2 ;;
        --log)            LOGFILE=${2:-}; shift 2 ;;
        --append)         APPEND_EXTRA=${2:-}; shift 2 ;;
        --socket-wait)    SOCKET_WAIT=${2:-}; shift 2 ;;
        --reconnect-ms)   RECONNECT=${2:-}; shift 2 ;;
        --kernel-verbose) KVERBOSE=1; shift ;;
        -h|--help)        usage ;;
        --)               shift; EXTRA=("$@"); break ;;
        *)                die "unknown option '$1' (see --help)" ;;
    esac
done
[[ "$QUEUES" =~ ^[1-9][0-9]*$ ]] || die "--queues must be a positive integer"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "--cpus must be a positive integer"
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive number of seconds"
[[ "$SOCKET_WAIT" =~ ^[0-9]+$ ]] || die "--socket-wait must be a number of seconds"
[[ -z "$SCRIPT" || -f "$SCRIPT" ]] || die "script '$SCRIPT' not found"
[[ ${#SOCKETS[@]} -le 16 ]] || die "at most 16 disks"
for t in cpio gzip timeout; do command -v "$t" >/dev/null || die "'$t' not found; run scripts/install-test-deps.sh"; done
command -v "${LOGDISK_QEMU:-qemu-system-x86_64}" >/dev/null \
    || die "${LOGDISK_QEMU:-qemu-system-x86_64} not found; run scripts/install-test-deps.sh"

# ---------------------------------------------------------------- guest image
GUEST=$("$HERE/build-guest.sh" | tail -n1) || die "building the guest failed"
[[ -f "$GUEST/initramfs.cpio.gz" ]] || die "no initramfs in '$GUEST'"
KERNEL="$GUEST/vmlinux"
[[ -f "$KERNEL" ]] || KERNEL="$GUEST/vmlinuz"

# ---------------------------------------------------------------- temp dir + cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/logdisk-run-guest.XXXXXX")
QPID="" RPID=""
cleanup() {
    local rc=$?
    if [[ -n "$QPID" ]] && kill -0 "$QPID" 2>/dev/null; then
        kill -TERM "$QPID" 2>/dev/null || true      # timeout(1) forwards it to QEMU
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$QPID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$QPID" 2>/dev/null || true
        pkill -KILL -P "$QPID" 2>/dev/null || true
    fi
    [[ -n "$RPID" ]] && kill "$RPID" 2>/dev/null || true
    rm -rf "$TMP"
    return $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- per-run initramfs overlay
OV="$TMP/overlay"
mkdir -p "$OV/etc/logdisk" "$OV/root"
if [[ -n "$SCRIPT" ]]; then
    cp "$SCRIPT" "$OV/test.sh"
    chmod 755 "$OV/test.sh"
fi
: >"$OV/etc/logdisk/test.env"
for kv in "${ENVS[@]}"; do
    name=${kv%%=*}
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad --env name '$name'"
    printf '%s=%q\n' "$name" "${kv#*=}" >>"$OV/etc/logdisk/test.env"
done
for spec in "${FILES[@]}"; do
    src=${spec%%:*}
    dest=/root/$(basename "$src")
    [[ "$spec" == *:* ]] && dest=${spec#*:}
    [[ -f "$src" ]] || die "--file '$src' not found"
    [[ "$dest" == /* ]] || dest=/root/$dest
    mkdir -p "$OV$(dirname "$dest")"
    cp -p "$src" "$OV$dest"
done
(cd "$OV" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -n -1 >"$TMP/overlay.cpio.gz"
# The kernel unpacks concatenated cpio archives in order; later files win.
cat "$GUEST/initramfs.cpio.gz" "$TMP/overlay.cpio.gz" >"$TMP/initrd.cpio.gz"

# ---------------------------------------------------------------- sockets
for s in "${SOCKETS[@]}"; do
    waited=0
    while [[ ! -S "$s" ]]; do
        [[ $waited -lt $((SOCKET_WAIT * 10)) ]] || die "socket '$s' does not exist (waited ${SOCKET_WAIT}s)"
        sleep 0.1; waited=$((waited + 1))
    done
done

# ---------------------------------------------------------------- QEMU command
# Kernel arguments: serial console, panic => exit (with -no-reboot), and boot-time savers
# that matter under TCG (no speculative-execution mitigations, no crypto self-tests, ...).
APPEND="console=ttyS0 panic=-1 oops=panic mitigations=off cryptomgr.notests no_timer_check"
APPEND+=" tsc=reliable 8250.nr_uarts=1 random.trust_cpu=on logdisk.disks=${#SOCKETS[@]}"
[[ $KVERBOSE -eq 1 ]] || APPEND+=" loglevel=4"
[[ -n "$APPEND_EXTRA" ]] && APPEND+=" $APPEND_EXTRA"

# shellcheck source=../../qemu-configs/qemu-vhost-user-blk.sh
source "$REPO/qemu-configs/qemu-vhost-user-blk.sh"
QARGS=(--mem "$MEM" --cpus "$CPUS" --queues "$QUEUES" --kernel "$KERNEL"
       --initrd "$TMP/initrd.cpio.gz" --append "$APPEND")
for s in "${SOCKETS[@]}"; do QARGS+=(--socket "$s"); done
[[ -n "$RECONNECT" ]] && QARGS+=(--reconnect-ms "$RECONNECT")
logdisk_qemu_cmd QEMU_CMD "${QARGS[@]}" -- "${EXTRA[@]}" || die "bad QEMU options"

log "guest $(basename "$GUEST"), kernel $(basename "$KERNEL"), ${#SOCKETS[@]} disk(s), $QUEUES queue(s), $CPUS cpu(s), $MEM, timeout ${TIMEOUT}s"
[[ -n "${LOGDISK_RUN_GUEST_DEBUG:-}" ]] && log "qemu: $(printf '%q ' "${QEMU_CMD[@]}")"

# ---------------------------------------------------------------- run + stream the console
if [[ -n "$LOGFILE" ]]; then
    mkdir -p "$(dirname "$LOGFILE")"
    : >"$LOGFILE" || die "cannot write --log file '$LOGFILE'"
fi
mkfifo "$TMP/console"
T0=$EPOCHREALTIME
# Reader: console -> stdout (+ log), notes when the guest is ready and its exit status.
(
    exec 3>"$TMP/console.log"
    ready=""
    while IFS= read -r line || [[ -n "$line" ]]; do
        line=${line//$'\r'/}
        # drop the firmware's terminal control sequences (ESC c, ESC [ ... letter)
        if [[ "$line" == *$'\e'* ]]; then
            line=${line//$'\e'\[*([0-9;?])[A-Za-z]/}
            line=${line//$'\e'c/}
        fi
        printf '%s\n' "$line"
        printf '%s\n' "$line" >&3
        [[ -n "$LOGFILE" ]] && printf '%s\n' "$line" >>"$LOGFILE"
        case "$line" in
            *LOGDISK-GUEST-READY*) [[ -n "$ready" ]] || { ready=$EPOCHREALTIME; printf '%s\n' "$ready" >"$TMP/ready"; } ;;
        esac
        if [[ "$line" =~ LOGDISK-GUEST-EXIT\ ([0-9]{1,3})([^0-9]|$) ]]; then
            printf '%s\n' "${BASH_REMATCH[1]}" >"$TMP/status"
        fi
    done
) <"$TMP/console" &
RPID=$!

# stdin from /dev/null: CI has none, and QEMU must not grab a terminal it was not given.
timeout -k 10 "$TIMEOUT" "${QEMU_CMD[@]}" </dev/null >"$TMP/console" 2>&1 &
QPID=$!
set +e
wait "$QPID"
QRC=$?
set -e
QPID=""
wait "$RPID" 2>/dev/null || true
RPID=""
T1=$EPOCHREALTIME

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }
BOOT="?"
[[ -f "$TMP/ready" ]] && BOOT=$(elapsed "$T0" "$(cat "$TMP/ready")")
TOTAL=$(elapsed "$T0" "$T1")

if [[ $QRC -eq 124 || $QRC -eq 137 ]]; then
    log "TIMEOUT: guest did not finish within ${TIMEOUT}s; QEMU killed (boot ${BOOT}s, total ${TOTAL}s)"
    exit 124
fi
if [[ ! -f "$TMP/status" ]]; then
    log "FAILED: QEMU exited ($QRC) without 'LOGDISK-GUEST-EXIT <status>' (boot ${BOOT}s, total ${TOTAL}s); last console lines:"
    tail -n 15 "$TMP/console.log" | sed 's/^/    /' >&2
    exit 126
fi
STATUS=$(cat "$TMP/status")
[[ $QRC -eq 0 ]] || log "warning: QEMU exited with $QRC after the guest finished"
log "boot ${BOOT}s (to disks ready), total ${TOTAL}s, status $STATUS"
exit "$STATUS"
