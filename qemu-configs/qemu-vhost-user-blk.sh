#!/usr/bin/env bash
# QEMU command line for a guest whose disks are served by logdisk over vhost-user-blk.
#
# What vhost-user-blk needs from QEMU, and why:
#   * Guest RAM must be shareable with the backend process (logdisk maps it and reads/writes
#     guest buffers in place): a memfd memory backend with share=on, attached as the
#     memory of the (single) NUMA node:
#         -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
#     (hugepages: add hugetlb=on,hugetlbsize=2M to the memfd backend.)
#   * One unix-socket chardev per disk (QEMU is the client, logdisk listens):
#         -chardev socket,id=c0,path=/run/logdisk/vol1.sock
#     Add reconnect-ms=1000 to let QEMU reconnect when logdisk restarts.
#   * The device, with one virtqueue per vCPU (multiqueue) — logdisk runs one worker per queue:
#         -device vhost-user-blk-pci,chardev=c0,num-queues=2[,queue-size=256][,bootindex=1]
#     Disk size, block size, discard/write-zeroes limits and the serial come from the backend
#     (config space over the socket), not from the QEMU command line.
#   * No KVM here: this machine's /dev/kvm cannot boot a stock kernel, so the default is TCG
#     (-accel tcg, -cpu max). Set LOGDISK_QEMU_ACCEL=kvm (or --accel kvm) where KVM works.
#
# Two ways to use this file:
#   1. Sourced, as tests/guest/run-guest.sh does; it fills a bash array with the command:
#        source qemu-configs/qemu-vhost-user-blk.sh
#        logdisk_qemu_cmd CMD --socket /tmp/vol1.sock --kernel vmlinuz --initrd initrd.gz \
#            --append "console=ttyS0"
#        "${CMD[@]}"
#   2. Run directly; it execs QEMU (or prints the command with --dry-run):
#        qemu-configs/qemu-vhost-user-blk.sh --socket /tmp/vol1.sock --disk-boot   # boot from the volume (SeaBIOS)
#        qemu-configs/qemu-vhost-user-blk.sh --dry-run --socket a.sock --socket b.sock --queues 4
#
# Options (both ways):
#   --socket PATH     vhost-user-blk socket; repeat for more disks (vda, vdb, ... in the guest)
#   --queues N        virtqueues per disk (default 2)
#   --queue-size N    descriptors per virtqueue (default: QEMU's, 128)
#   --mem SIZE        guest RAM, e.g. 512M or 2G (default 512M)
#   --cpus N          vCPUs (default 2)
#   --accel A         tcg (default, or $LOGDISK_QEMU_ACCEL) or kvm
#   --machine M       machine type (default q35)
#   --kernel FILE / --initrd FILE / --append STR   direct kernel boot
#   --disk-boot       no --kernel: boot from the first vhost-user disk (bootindex=1)
#   --reconnect-ms N  chardev reconnect interval (QEMU reconnects when the backend restarts)
#   --qemu BIN        QEMU binary (default qemu-system-x86_64, or $LOGDISK_QEMU)
#   -- ARGS...        extra arguments appended verbatim
#
# Serial console and QEMU monitor share stdio (-nographic; Ctrl-A x quits, Ctrl-A c monitor).
# -no-reboot turns a guest reboot or kernel panic (panic=-1) into QEMU exiting.

# logdisk_qemu_cmd ARRAY_NAME [options] [-- extra args]
logdisk_qemu_cmd() {
    local -n _out=$1
    shift
    local qemu=${LOGDISK_QEMU:-qemu-system-x86_64} accel=${LOGDISK_QEMU_ACCEL:-tcg}
    local mem=512M cpus=2 queues=2 queue_size="" machine=q35 reconnect=""
    local kernel="" initrd="" append="" disk_boot=0
    local -a sockets=() extra=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --socket)       sockets+=("$2"); shift 2 ;;
            --queues)       queues=$2; shift 2 ;;
            --queue-size)   queue_size=$2; shift 2 ;;
            --mem)          mem=$2; shift 2 ;;
            --cpus)         cpus=$2; shift 2 ;;
            --accel)        accel=$2; shift 2 ;;
            --machine)      machine=$2; shift 2 ;;
            --kernel)       kernel=$2; shift 2 ;;
            --initrd)       initrd=$2; shift 2 ;;
            --append)       append=$2; shift 2 ;;
            --disk-boot)    disk_boot=1; shift ;;
            --reconnect-ms) reconnect=$2; shift 2 ;;
            --qemu)         qemu=$2; shift 2 ;;
            --)             shift; extra=("$@"); break ;;
            *) printf 'logdisk_qemu_cmd: unknown option %s\n' "$1" >&2; return 2 ;;
        esac
    done
    [[ "$queues" =~ ^[1-9][0-9]*$ ]] || { echo "logdisk_qemu_cmd: bad --queues '$queues'" >&2; return 2; }
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || { echo "logdisk_qemu_cmd: bad --cpus '$cpus'" >&2; return 2; }

    local cpu=max
    [[ "$accel" == kvm ]] && cpu=host

    # shellcheck disable=SC2054  # commas are QEMU option syntax
    _out=(
        "$qemu"
        -name logdisk-guest
        -machine "$machine"
        -accel "$accel"
        -cpu "$cpu"
        -smp "$cpus"
        # guest RAM: memfd, shared with the vhost-user backend
        -m "$mem"
        -object "memory-backend-memfd,id=mem,size=$mem,share=on"
        -numa node,memdev=mem
        # no default NIC/VGA/etc.; serial console + monitor multiplexed on stdio
        -nodefaults
        -nographic
        -chardev stdio,id=console,mux=on
        -serial chardev:console
        -mon chardev=console,mode=readline
        -no-reboot
    )

    local i dev
    for i in "${!sockets[@]}"; do
        local chr="socket,id=vub$i,path=${sockets[i]}"
        [[ -n "$reconnect" ]] && chr+=",reconnect-ms=$reconnect"
        dev="vhost-user-blk-pci,id=vdisk$i,chardev=vub$i,num-queues=$queues"
        [[ -n "$queue_size" ]] && dev+=",queue-size=$queue_size"
        [[ $disk_boot -eq 1 && $i -eq 0 ]] && dev+=",bootindex=1"
        _out+=(-chardev "$chr" -device "$dev")
    done

    if [[ -n "$kernel" ]]; then
        _out+=(-kernel "$kernel")
        [[ -n "$initrd" ]] && _out+=(-initrd "$initrd")
        [[ -n "$append" ]] && _out+=(-append "$append")
    elif [[ $disk_boot -ne 1 ]]; then
        echo "logdisk_qemu_cmd: give --kernel (direct boot) or --disk-boot" >&2
        return 2
    fi
    _out+=("${extra[@]}")
}

# Run directly: build the command and exec it.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    dry_run=0
    args=()
    for a in "$@"; do
        if [[ "$a" == --dry-run ]]; then dry_run=1; else args+=("$a"); fi
    done
    logdisk_qemu_cmd QEMU_CMD "${args[@]}"
    if [[ $dry_run -eq 1 ]]; then
        # one option (with its value) per line, quoted only where the shell needs it
        out=""
        for a in "${QEMU_CMD[@]}"; do
            [[ "$a" =~ ^[A-Za-z0-9_,.=:/@+%-]+$ ]] || a=$(printf '%q' "$a")
            if [[ "$a" == -* && -n "$out" ]]; then out+=$' \\\n    '"$a"; else out+="${out:+ }$a"; fi
        done
        printf '%s\n' "$out"
        exit 0
    fi
    exec "${QEMU_CMD[@]}"
fi
