#!/usr/bin/env bash
# Static checks of qemu-configs/:
#   * libvirt-domain.xml validates against libvirt's domain schema (virt-xml-validate)
#     and has the vhostuser disk + shared memfd memory that logdisk needs;
#   * qemu-vhost-user-blk.sh parses (bash -n), and its --dry-run command line has memfd
#     shared memory, a vhost-user-blk-pci device per socket with num-queues, TCG;
#     the installed QEMU knows every device property used;
#   * cloud-hypervisor.md documents the shared-memory + vhost_user disk command line.
#   tests/guest/check-configs.sh        # exit 0 when everything holds
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CFG=$(cd "$HERE/../../qemu-configs" && pwd)
FAILS=0 PASSES=0
ok()   { printf 'ok   %s\n' "$*"; PASSES=$((PASSES + 1)); }
bad()  { printf 'FAIL %s\n' "$*"; FAILS=$((FAILS + 1)); }
need() { command -v "$1" >/dev/null 2>&1 || { echo "check-configs: '$1' not found; run scripts/install-test-deps.sh" >&2; exit 2; }; }
need virt-xml-validate
need xmllint
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# ---- libvirt
XML="$CFG/libvirt-domain.xml"
if virt-xml-validate "$XML" domain >"$TMP/validate.log" 2>&1; then
    ok "virt-xml-validate $(basename "$XML")"
else
    bad "virt-xml-validate $(basename "$XML"):"; sed 's/^/     /' "$TMP/validate.log"
fi
xp() { xmllint --xpath "$1" "$XML" 2>/dev/null || true; }
[[ $(xp "count(/domain/devices/disk[@type='vhostuser'][@device='disk']/source[@type='unix'][@path])") -ge 1 ]] \
    && ok "libvirt: vhostuser disk with a unix socket source" || bad "libvirt: no <disk type='vhostuser'> with <source type='unix' path=...>"
[[ -n $(xp "/domain/devices/disk[@type='vhostuser']/driver/@queues") ]] \
    && ok "libvirt: vhostuser disk sets queues" || bad "libvirt: vhostuser disk without <driver queues=...>"
[[ $(xp "count(/domain/memoryBacking/source[@type='memfd'])") -eq 1 && $(xp "count(/domain/memoryBacking/access[@mode='shared'])") -eq 1 ]] \
    && ok "libvirt: memfd shared memory backing" || bad "libvirt: memoryBacking must be memfd with access mode='shared'"

# ---- QEMU command line
QSH="$CFG/qemu-vhost-user-blk.sh"
if bash -n "$QSH" 2>"$TMP/bashn.log"; then ok "bash -n $(basename "$QSH")"; else bad "bash -n $(basename "$QSH"):"; cat "$TMP/bashn.log"; fi
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck -S error "$QSH" >"$TMP/sc.log" 2>&1 && ok "shellcheck $(basename "$QSH")" \
        || { bad "shellcheck $(basename "$QSH")"; cat "$TMP/sc.log"; }
fi
# The same function run-guest.sh uses, called the way run-guest.sh calls it.
if DRY=$(bash "$QSH" --dry-run --socket /run/logdisk/a.sock --kernel /boot/vmlinuz 2>&1); then
    ok "qemu-vhost-user-blk.sh --dry-run"
else
    bad "qemu-vhost-user-blk.sh --dry-run failed: $DRY"
fi
# shellcheck source=../../qemu-configs/qemu-vhost-user-blk.sh
if ( source "$QSH" && logdisk_qemu_cmd CMD --socket /run/logdisk/a.sock --socket /run/logdisk/b.sock \
        --queues 4 --mem 1G --kernel /boot/vmlinuz --initrd /boot/initrd --append console=ttyS0 \
        && printf '%s\n' "${CMD[@]}" ) >"$TMP/cmd" 2>&1; then
    ok "logdisk_qemu_cmd builds a command line"
    # pairs "option value" as consecutive array elements
    has() { awk -v a="$1" -v b="$2" 'prev == a && $0 == b {f=1} {prev=$0} END {exit !f}' "$TMP/cmd"; }
    for pair in '-object|memory-backend-memfd,id=mem,size=1G,share=on' '-numa|node,memdev=mem' '-m|1G' \
                '-accel|tcg' '-chardev|socket,id=vub0,path=/run/logdisk/a.sock' \
                '-device|vhost-user-blk-pci,id=vdisk0,chardev=vub0,num-queues=4' \
                '-chardev|socket,id=vub1,path=/run/logdisk/b.sock' \
                '-device|vhost-user-blk-pci,id=vdisk1,chardev=vub1,num-queues=4'; do
        has "${pair%%|*}" "${pair#*|}" && ok "qemu: ${pair%%|*} ${pair#*|}" || bad "qemu: missing ${pair%%|*} ${pair#*|}"
    done
    for flag in -no-reboot -nographic; do
        grep -qx -- "$flag" "$TMP/cmd" && ok "qemu: $flag" || bad "qemu: missing $flag"
    done
else
    bad "logdisk_qemu_cmd failed: $(cat "$TMP/cmd")"
fi
QEMU=${LOGDISK_QEMU:-qemu-system-x86_64}
if command -v "$QEMU" >/dev/null 2>&1; then
    props=$("$QEMU" -device vhost-user-blk-pci,help 2>&1 || true)
    for p in chardev num-queues queue-size bootindex; do
        grep -q "^ *$p=" <<<"$props" && ok "$QEMU vhost-user-blk-pci has $p" || bad "$QEMU vhost-user-blk-pci lacks property $p"
    done
    "$QEMU" -object help 2>&1 | grep -qw memory-backend-memfd && ok "$QEMU has memory-backend-memfd" \
        || bad "$QEMU lacks memory-backend-memfd"
fi

# ---- Cloud Hypervisor (documented only: needs KVM)
CH="$CFG/cloud-hypervisor.md"
grep -q -- '--memory size=[^ ]*shared=on' "$CH" && ok "cloud-hypervisor.md: --memory ...,shared=on" || bad "cloud-hypervisor.md lacks --memory shared=on"
grep -q -- '--disk vhost_user=true,socket=[^ ]*num_queues=' "$CH" && ok "cloud-hypervisor.md: --disk vhost_user=true,socket=...,num_queues=" \
    || bad "cloud-hypervisor.md lacks --disk vhost_user=true,socket=...,num_queues="

echo "check-configs: $PASSES passed, $FAILS failed"
[[ $FAILS -eq 0 ]]
