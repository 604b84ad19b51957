#!/usr/bin/env bash
# Build (or reuse) the small Linux test guest used by the logdisk guest tests.
#
#   tests/guest/build-guest.sh            # prints the guest directory as the LAST line of stdout
#   GUEST=$(tests/guest/build-guest.sh | tail -n1)
#   ls "$GUEST"   # vmlinuz  vmlinux  initramfs.cpio.gz  manifest.txt
#
# vmlinux is the same kernel uncompressed (an ELF with a PVH entry point); QEMU boots it
# directly, skipping the bzImage self-decompression that costs ~4 s under TCG.
#
# The guest is a Debian kernel (linux-image-<abi>-amd64[-unsigned], fetched with
# `apt-get download` and unpacked with `dpkg -x`) plus an initramfs holding busybox-static,
# fio, e2fsprogs (mkfs.ext4/e2fsck/tune2fs/dumpe2fs), util-linux (blkdiscard/fstrim/lsblk),
# the shared libraries they need, the modules for virtio-pci, virtio-blk and ext4, and for
# the power-loss and device-fault tests (tests/guest/powerloss-e2e.sh) the device-mapper
# modules dm-mod, dm-log-writes and dm-flakey with dmsetup and libdevmapper, and the xfs
# module with xfsprogs' mkfs.xfs alone (POWERLOSS_FS=xfs; the module is in the image but
# loaded only by the test that needs it: /etc/logdisk/modules.xfs lists it and what it needs).
# Its /init mounts proc/sys/dev, loads the modules, waits for the virtio disks, runs
# /test.sh if present, prints `LOGDISK-GUEST-EXIT <status>` and powers off.
#
# fio: Debian's /usr/bin/fio links ceph, gluster, rdma, pmem... (84 MB of shared libraries,
# which would triple the boot time under TCG), so by default the same Debian fio version is
# rebuilt from its source package (`apt-get source fio`) as a small static binary with only
# the engines the tests use (psync, libaio, io_uring, ...). This needs a deb-src entry,
# gcc/make and libaio-dev (scripts/install-test-deps.sh sets them up). Without them the
# host fio and its whole library closure are copied instead (slower boots).
#
# Cached in ${LOGDISK_CACHE:-${HOME:-/tmp}/.cache/logdisk}/guest-<hash>, where <hash> covers this
# script, the kernel package and version, the versions of the host packages copied in and
# the contents of every host file copied in; a second run is a cache hit (well under 1 s).
#
# Environment:
#   LOGDISK_CACHE                cache root (default $HOME/.cache/logdisk)
#   LOGDISK_GUEST_KERNEL_FLAVOUR kernel flavour (default amd64; e.g. cloud-amd64)
#   LOGDISK_GUEST_KERNEL_PKG     exact kernel package (default: what linux-image-<flavour>
#                                depends on in the current apt candidate, -unsigned if available)
#   LOGDISK_GUEST_EXTRA_MODULES  extra module names to load (space separated)
#   LOGDISK_GUEST_FIO            auto (default: source if possible, else host), source, host
#   LOGDISK_GUEST_REBUILD=1      ignore the cache and rebuild
#
# Progress goes to stderr; only the directory goes to stdout.
set -euo pipefail
export LC_ALL=C

SELF=$(readlink -f "${BASH_SOURCE[0]}")
CACHE_ROOT=${LOGDISK_CACHE:-${HOME:-/tmp}/.cache/logdisk}
FLAVOUR=${LOGDISK_GUEST_KERNEL_FLAVOUR:-amd64}
# Modules loaded in the guest (dependencies, including softdeps, are resolved from the
# kernel's modules.dep/modules.softdep/modules.alias; crc32c_generic backs ext4's
# metadata_csum and jbd2 checksums without needing modprobe in the guest).
read -r -a EXTRA_MODULES <<<"${LOGDISK_GUEST_EXTRA_MODULES:-}"
MODULES=(crc32c_generic virtio_pci virtio_blk ext4 dm_mod dm_log_writes dm_flakey "${EXTRA_MODULES[@]}")
# In the image but not loaded at boot (xfs.ko alone would add ~1 s to every boot under TCG).
ONDEMAND_MODULES=(xfs)
# Host binaries copied (with their shared libraries, found by ldd) into the guest's /usr/bin;
# the guest has a merged /usr: /bin, /sbin and /usr/sbin all point at /usr/bin.
BINARIES=(
    /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/tune2fs /usr/sbin/dumpe2fs
    /usr/sbin/blkdiscard /usr/sbin/fstrim /usr/bin/lsblk /usr/sbin/dmsetup /usr/sbin/mkfs.xfs
)
HOST_PKGS=(busybox-static fio e2fsprogs util-linux libc6 libgcc-s1 dmsetup libdevmapper1.02.1
           xfsprogs libinih1 liburcu8)

log() { printf '[build-guest] %s\n' "$*" >&2; }
die() { printf '[build-guest] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg dpkg-query depmod cpio gzip ldd sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found; run scripts/install-test-deps.sh"
done
[[ -x /bin/busybox ]] && /bin/busybox --list >/dev/null 2>&1 \
    || die "/bin/busybox (busybox-static) missing; run scripts/install-test-deps.sh"
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static /bin/busybox || die "/bin/busybox is not static; install busybox-static"
for b in "${BINARIES[@]}"; do
    [[ -x "$b" ]] || die "$b missing; run scripts/install-test-deps.sh"
done

# ------------------------------------------------------------------ kernel selection
apt_updated=0
apt_update_once() {
    [[ $apt_updated -eq 0 ]] || return 1
    apt_updated=1
    [[ $(id -u) -eq 0 ]] || return 1
    log "apt lists look stale or empty: apt-get update"
    apt-get update -qq >/dev/null 2>&1 || return 1
}

pick_kernel() {
    if [[ -n ${LOGDISK_GUEST_KERNEL_PKG:-} ]]; then
        printf '%s\n' "$LOGDISK_GUEST_KERNEL_PKG"
        return
    fi
    local dep
    dep=$(apt-cache depends "linux-image-$FLAVOUR" 2>/dev/null \
        | awk '$1=="Depends:" && $2 ~ /^linux-image-/ {print $2; exit}') || true
    [[ -n "$dep" ]] || return 1
    if apt-cache show --no-all-versions "$dep-unsigned" >/dev/null 2>&1; then
        printf '%s-unsigned\n' "$dep"
    else
        printf '%s\n' "$dep"
    fi
}
candidate_version() {
    apt-cache policy "$1" 2>/dev/null | awk '$1=="Candidate:" {print $2; exit}'
}

# apt-cache takes ~0.6 s per call here, so the choice is remembered per state of the apt
# lists (and pinning); a cache hit then costs no apt-cache call at all.
mkdir -p "$CACHE_ROOT"
LISTS_FP=$( { stat -c '%n %s %Y' /var/lib/apt/lists/*Packages* /etc/apt/preferences \
                  /etc/apt/preferences.d/* 2>/dev/null || true
              echo "$FLAVOUR ${LOGDISK_GUEST_KERNEL_PKG:-}"; } | sha256sum | cut -c1-16 )
PICK_MEMO="$CACHE_ROOT/kernel-pick-$LISTS_FP"
KPKG="" KVERSION=""
[[ -s "$PICK_MEMO" ]] && read -r KPKG KVERSION <"$PICK_MEMO" || true
if [[ -z "$KPKG" || -z "$KVERSION" ]]; then
    KPKG=$(pick_kernel) || { apt_update_once && KPKG=$(pick_kernel); } \
        || die "cannot find linux-image-$FLAVOUR with apt-cache (run apt-get update / scripts/install-test-deps.sh)"
    KVERSION=$(candidate_version "$KPKG")
    if [[ -z "$KVERSION" || "$KVERSION" == "(none)" ]]; then
        apt_update_once || true
        KVERSION=$(candidate_version "$KPKG")
    fi
    [[ -n "$KVERSION" && "$KVERSION" != "(none)" ]] || die "no installable version of $KPKG"
    if [[ $apt_updated -eq 0 ]]; then
        rm -f "$CACHE_ROOT"/kernel-pick-*
        printf '%s %s\n' "$KPKG" "$KVERSION" >"$PICK_MEMO"
    fi
fi

# ------------------------------------------------------------------ fio: static from source, or host
FIO_VERSION=$(dpkg-query -W -f='${Version}' fio 2>/dev/null) || die "fio not installed; run scripts/install-test-deps.sh"
FIO_MODE=${LOGDISK_GUEST_FIO:-auto}
fio_source_possible() {
    command -v gcc >/dev/null && command -v make >/dev/null && command -v dpkg-source >/dev/null \
        && [[ -f /usr/lib/x86_64-linux-gnu/libaio.a && -f /usr/lib/x86_64-linux-gnu/libc.a ]] \
        && apt-cache showsrc fio 2>/dev/null | grep -qx "Version: $FIO_VERSION"
}
case "$FIO_MODE" in
    auto)   if fio_source_possible; then FIO_MODE=source; else
                FIO_MODE=host
                log "note: cannot rebuild fio $FIO_VERSION from source (needs deb-src, gcc, make, libaio-dev:"
                log "      run scripts/install-test-deps.sh); copying the host fio and its 84 MB of libraries"
            fi ;;
    source) fio_source_possible || die "LOGDISK_GUEST_FIO=source but fio $FIO_VERSION source/toolchain unavailable; run scripts/install-test-deps.sh" ;;
    host)   ;;
    *)      die "LOGDISK_GUEST_FIO must be auto, source or host (got '$FIO_MODE')" ;;
esac
[[ "$FIO_MODE" == host ]] && BINARIES+=(/usr/bin/fio)

# ------------------------------------------------------------------ host file closure
# Every host file that goes into the initramfs: the binaries and their shared libraries.
declare -A HOSTFILES=()
add_with_libs() {
    local bin=$1 lib
    HOSTFILES[$bin]=1
    while read -r lib; do
        [[ -n "$lib" ]] && HOSTFILES[$lib]=1
    done < <(ldd "$bin" | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
for b in "${BINARIES[@]}"; do add_with_libs "$b"; done
HOSTFILES[/bin/busybox]=1
# Rust binaries of this host (logdisk, logdisk-loadgen, given with run-guest.sh --file)
# need libgcc_s besides libc/libm, which the tools above already bring.
LIBGCC=$(readlink -f /lib/x86_64-linux-gnu/libgcc_s.so.1 2>/dev/null || true)
[[ -f "$LIBGCC" ]] && HOSTFILES[$LIBGCC]=1
[[ -f /etc/mke2fs.conf ]] && HOSTFILES[/etc/mke2fs.conf]=1
mapfile -t HOSTLIST < <(printf '%s\n' "${!HOSTFILES[@]}" | sort)

# ------------------------------------------------------------------ cache key
KEY=$( {
    printf 'script %s\n' "$(sha256sum <"$SELF" | cut -d' ' -f1)"
    printf 'kernel %s=%s\n' "$KPKG" "$KVERSION"
    printf 'modules %s; on demand %s\n' "${MODULES[*]}" "${ONDEMAND_MODULES[*]}"
    printf 'fio %s %s\n' "$FIO_MODE" "$FIO_VERSION"
    [[ "$FIO_MODE" == source ]] && printf 'toolchain %s\n' "$(gcc -dumpfullversion) $(dpkg-query -W -f='${Version}' libc6-dev libaio-dev 2>/dev/null | tr '\n' ' ')"
    dpkg-query -W -f='pkg ${Package}=${Version}\n' "${HOST_PKGS[@]}"
    for f in "${HOSTLIST[@]}"; do printf 'file %s %s\n' "$f" "$(sha256sum <"$f" | cut -d' ' -f1)"; done
} | sha256sum | cut -c1-16 )
OUT="$CACHE_ROOT/guest-$KEY"

if [[ -f "$OUT/.complete" && ${LOGDISK_GUEST_REBUILD:-0} != 1 ]]; then
    touch "$OUT/.complete" 2>/dev/null || true   # mark as recently used (see pruning below)
    log "cache hit: $OUT ($KPKG $KVERSION)"
    printf '%s\n' "$OUT"
    exit 0
fi

# ------------------------------------------------------------------ build
# One builder at a time per cache root; others wait and then find the result.
exec 9>"$CACHE_ROOT/.build-guest.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    if [[ -f "$OUT/.complete" && ${LOGDISK_GUEST_REBUILD:-0} != 1 ]]; then
        log "built by a concurrent run: $OUT"
        printf '%s\n' "$OUT"
        exit 0
    fi
fi

START=$SECONDS
WORK=$(mktemp -d "$CACHE_ROOT/.build-XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building guest $KEY: kernel $KPKG $KVERSION"
download_kernel() {
    # root's apt downloads as the _apt user, which cannot write into our private dir
    (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVERSION") >"$WORK/download.log" 2>&1
}
if ! download_kernel; then
    # Stale apt lists name a version the mirror no longer has: refresh them and start over
    # (the kernel choice, and so the cache key, may change).
    if [[ -z ${LOGDISK_GUEST_RETRIED:-} ]] && apt_update_once; then
        log "apt-get download $KPKG=$KVERSION failed; retrying with fresh apt lists"
        rm -rf "$WORK" "$CACHE_ROOT"/kernel-pick-*
        exec 9>&-
        LOGDISK_GUEST_RETRIED=1 exec "$SELF"
    fi
    cat "$WORK/download.log" >&2
    die "apt-get download $KPKG=$KVERSION failed"
fi
DEB=$(ls "$WORK"/*.deb)
log "unpacking $(basename "$DEB")"
dpkg -x "$DEB" "$WORK/kernel"
rm -f "$DEB"

if [[ "$FIO_MODE" == source ]]; then
    log "building static fio $FIO_VERSION from the Debian source package"
    mkdir "$WORK/fio-src"
    (
        cd "$WORK/fio-src"
        apt-get source -q -o APT::Sandbox::User=root "fio=$FIO_VERSION"
        cd fio-*/
        # only local engines; everything that would pull a shared library is off
        ./configure --build-static --disable-native --disable-numa --disable-rdma \
            --disable-rados --disable-rbd --disable-http --disable-gfapi --disable-libnfs \
            --disable-lex --disable-pmem --disable-xnvme --disable-libzbc --disable-tcmalloc \
            --disable-dfs
        make -j"$(nproc)" fio
        strip -o "$WORK/fio" fio
    ) >"$WORK/fio-build.log" 2>&1 || { tail -n 40 "$WORK/fio-build.log" >&2; die "building fio from source failed (LOGDISK_GUEST_FIO=host copies the host fio instead)"; }
    grep -q 'Linux AIO support *yes' "$WORK/fio-build.log" || log "warning: the fio build has no libaio support"
    rm -rf "$WORK/fio-src"
fi

KREL=$(ls "$WORK/kernel/lib/modules" | head -n1)
[[ -n "$KREL" && -f "$WORK/kernel/boot/vmlinuz-$KREL" ]] || die "unexpected layout in $KPKG (no boot/vmlinuz-*)"
MODROOT="$WORK/kernel/lib/modules/$KREL"
depmod -b "$WORK/kernel" "$KREL" || die "depmod failed"

# ---- module resolution: post-order DFS over softdeps (pre:) and modules.dep
norm() { local n=${1##*/}; n=${n%%.ko*}; printf '%s\n' "${n//-/_}"; }
declare -A MODPATH=() SEEN=()
while IFS= read -r line; do
    p=${line%%:*}
    MODPATH[$(norm "$p")]=$p
done <"$MODROOT/modules.dep"
ORDER=()
is_builtin() { grep -q "/$1\.ko\$" <(sed 's/-/_/g' "$MODROOT/modules.builtin"); }
resolve_alias() {   # alias -> module name (prefer *generic* implementations)
    awk -v a="$1" '$1=="alias" && $2==a {print $3}' "$MODROOT/modules.alias" \
        | sed 's/-/_/g' | awk '/generic/ {print; found=1; exit} {first = first ? first : $0} END {if (!found && first) print first}'
}
add_module() {
    local name; name=$(norm "$1")
    [[ -n ${SEEN[$name]:-} ]] && return 0
    SEEN[$name]=1
    if [[ -z ${MODPATH[$name]:-} ]]; then
        local target; target=$(resolve_alias "$1")
        if [[ -n "$target" && -n ${MODPATH[$target]:-} ]]; then add_module "$target"; return 0; fi
        is_builtin "$name" && { log "module $name is built in"; return 0; }
        die "kernel module '$1' not found in $KPKG"
    fi
    local sd i deps=()
    # softdep pre: modules first
    for sd in $(awk -v m="$name" '$1=="softdep" {gsub(/-/,"_",$2)} $1=="softdep" && $2==m {
                    pre=0; for (i=3;i<=NF;i++) { if ($i=="pre:") {pre=1; continue} if ($i=="post:") {pre=0; continue} if (pre) print $i } }' \
                "$MODROOT/modules.softdep"); do
        add_module "$sd"
    done
    # hard deps: modules.dep lists them so that loading from last to first works
    read -r -a deps <<<"$(awk -v p="${MODPATH[$name]}:" '$1==p { $1=""; print; exit }' "$MODROOT/modules.dep")"
    for ((i=${#deps[@]}-1; i>=0; i--)); do add_module "${deps[i]}"; done
    ORDER+=("${MODPATH[$name]}")
}
for m in "${MODULES[@]}"; do add_module "$m"; done
NBOOT=${#ORDER[@]}
for m in "${ONDEMAND_MODULES[@]}"; do add_module "$m"; done
ONDEMAND=("${ORDER[@]:NBOOT}")
ORDER=("${ORDER[@]:0:NBOOT}")
log "modules (load order): $(for p in "${ORDER[@]}"; do norm "$p"; done | tr '\n' ' ')"
log "modules on demand (/etc/logdisk/modules.xfs): $(for p in "${ONDEMAND[@]}"; do norm "$p"; done | tr '\n' ' ')"

# ---- root filesystem (merged /usr)
R="$WORK/root"
mkdir -p "$R"/{usr/bin,usr/lib,usr/lib64,proc,sys,dev,tmp,run,mnt,root,etc/logdisk,var}
ln -s usr/bin "$R/bin"; ln -s usr/bin "$R/sbin"; ln -s bin "$R/usr/sbin"
ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
ln -s /proc/mounts "$R/etc/mtab"
chmod 1777 "$R/tmp"

cp /bin/busybox "$R/usr/bin/busybox"
for applet in $(/bin/busybox --list); do
    [[ "$applet" == busybox ]] || ln -sf busybox "$R/usr/bin/$applet"
done
for f in "${HOSTLIST[@]}"; do
    [[ "$f" == /bin/busybox ]] && continue
    case "$f" in
        /usr/bin/*|/usr/sbin/*|/bin/*|/sbin/*) dest="$R/usr/bin/${f##*/}" ;;
        *) dest="$R$f" ;;
    esac
    mkdir -p "$(dirname "$dest")"
    rm -f "$dest"
    cp -L "$f" "$dest"
done
[[ "$FIO_MODE" == source ]] && install -m 755 "$WORK/fio" "$R/usr/bin/fio"
for alias in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -sf mke2fs "$R/usr/bin/$alias"; done
# Debian's busybox sh runs its own applets before searching PATH (FEATURE_SH_STANDALONE),
# so `blkdiscard` would be busybox's, not util-linux's. /test.sh is run with functions that
# point such names at the real binaries.
for applet in $(/bin/busybox --list); do
    if [[ -f "$R/usr/bin/$applet" && ! -L "$R/usr/bin/$applet" ]] && [[ $applet != busybox ]]; then
        printf '%s() { /usr/bin/%s "$@"; }\n' "$applet" "$applet"
    fi
done >"$R/etc/logdisk/real-tools.sh"
for alias in fsck.ext4 fsck.ext3 fsck.ext2; do ln -sf e2fsck "$R/usr/bin/$alias"; done
ln -sf tune2fs "$R/usr/bin/e2label"

mkdir -p "$R/lib/modules/$KREL"
for p in "${ORDER[@]}" "${ONDEMAND[@]}"; do
    mkdir -p "$R/lib/modules/$KREL/$(dirname "$p")"
    cp "$MODROOT/$p" "$R/lib/modules/$KREL/$p"
done
printf '%s\n' "${ORDER[@]}" >"$R/etc/logdisk/modules"
printf '%s\n' "${ONDEMAND[@]}" >"$R/etc/logdisk/modules.xfs"
printf '%s\n' "$KREL" >"$R/etc/logdisk/kernel-release"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
printf 'logdisk-guest\n' >"$R/etc/hostname"

cat >"$R/init" <<'INIT'
#!/bin/sh
# logdisk test guest /init (busybox sh). Kernel command line options:
#   logdisk.disks=N   number of virtio disks to wait for (vda, vdb, ...; default 1, 0 = none)
#   logdisk.wait=S    seconds to wait for them (default 60)
export PATH=/usr/bin HOME=/root TERM=dumb
mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd; ln -sf fd/0 /dev/stdin; ln -sf fd/1 /dev/stdout; ln -sf fd/2 /dev/stderr
hostname logdisk-guest
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "logdisk-guest: init at $(uptime_s)s, kernel $(uname -r), $(nproc) cpu(s), $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"

KREL=$(cat /etc/logdisk/kernel-release)
for m in $(cat /etc/logdisk/modules); do
    insmod "/lib/modules/$KREL/$m" || echo "logdisk-guest: insmod $m FAILED"
done

disks=1; wait_s=60
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        logdisk.disks=*) disks=${arg#*=} ;;
        logdisk.wait=*)  wait_s=${arg#*=} ;;
    esac
done
status=0
names="a b c d e f g h i j k l m n o p"
i=0; want=""
for l in $names; do [ "$i" -lt "$disks" ] || break; want="$want /dev/vd$l"; i=$((i+1)); done
deadline=$(( $(cut -d. -f1 /proc/uptime) + wait_s ))
for d in $want; do
    while [ ! -b "$d" ]; do
        if [ "$(cut -d. -f1 /proc/uptime)" -ge "$deadline" ]; then
            echo "logdisk-guest: ERROR: $d did not appear within ${wait_s}s"
            ls -l /dev/vd* 2>/dev/null; dmesg | tail -n 30
            status=97; break 2
        fi
        sleep 0.1
    done
done
if [ "$status" -eq 0 ]; then
    for d in $want; do
        b=${d#/dev/}
        echo "logdisk-guest: $d $(( $(cat /sys/block/$b/size) / 2048 )) MiB, $(ls /sys/block/$b/mq | wc -l) queue(s), cache $(cat /sys/block/$b/cache_type 2>/dev/null), ro=$(cat /sys/block/$b/ro)"
    done
    echo "LOGDISK-GUEST-READY $(uptime_s)"
    if [ -f /test.sh ]; then
        [ -f /etc/logdisk/test.env ] && { set -a; . /etc/logdisk/test.env; set +a; }
        echo "logdisk-guest: running /test.sh"
        t0=$(uptime_s)
        # real-tools.sh: util-linux/e2fsprogs instead of same-named busybox applets
        (cd /root && exec sh -c '. /etc/logdisk/real-tools.sh; . /test.sh')
        status=$?
        echo "logdisk-guest: /test.sh exited $status after $(awk -v a="$t0" -v b="$(uptime_s)" 'BEGIN {printf "%.1f", b-a}')s"
    else
        echo "logdisk-guest: no /test.sh"
    fi
fi
sync
echo "LOGDISK-GUEST-EXIT $status"
poweroff -f
sleep 5
echo o >/proc/sysrq-trigger
INIT
chmod 755 "$R/init"

# ---- pack
(
    cd "$R"
    find . -mindepth 1 | sort | cpio -o -H newc -R 0:0 --quiet
) | gzip -n -6 >"$WORK/initramfs.cpio.gz"
cp "$WORK/kernel/boot/vmlinuz-$KREL" "$WORK/vmlinuz"

# The uncompressed ELF kernel boots through its PVH entry point (QEMU loads it directly),
# which skips the bzImage self-decompression: ~4 s less per boot under TCG.
extract_vmlinux() {   # like the kernel's scripts/extract-vmlinux
    local img=$1 out=$2 i off
    local -a magics=($'\xfd7zXZ' $'\x1f\x8b\x08' $'\x28\xb5\x2f\xfd') cmds=('xz -dqc' 'gzip -dqc' 'zstd -dqc')
    for i in "${!magics[@]}"; do
        command -v "${cmds[i]%% *}" >/dev/null 2>&1 || continue
        for off in $(grep -abo "${magics[i]}" "$img" 2>/dev/null | cut -d: -f1 | head -n 3); do
            tail -c +$((off + 1)) "$img" | ${cmds[i]} >"$out" 2>/dev/null || true
            if [[ $(head -c 4 "$out" | od -An -c | tr -d ' ') == '177ELF' ]] \
                && readelf -n "$out" 2>/dev/null | grep -q 'Xen'; then
                return 0
            fi
        done
    done
    rm -f "$out"
    return 1
}
if command -v readelf >/dev/null 2>&1 && extract_vmlinux "$WORK/vmlinuz" "$WORK/vmlinux"; then
    log "extracted PVH-bootable vmlinux ($(stat -c %s "$WORK/vmlinux") bytes)"
else
    log "note: no PVH-bootable vmlinux could be extracted; run-guest.sh will boot vmlinuz (slower)"
fi

{
    echo "key $KEY"
    echo "kernel $KPKG $KVERSION ($KREL)"
    echo "modules $(for p in "${ORDER[@]}"; do norm "$p"; done | tr '\n' ' ')"
    echo "modules on demand $(for p in "${ONDEMAND[@]}"; do norm "$p"; done | tr '\n' ' ')"
    echo "fio $FIO_VERSION ($FIO_MODE)"
    dpkg-query -W -f='package ${Package} ${Version}\n' "${HOST_PKGS[@]}"
    echo "initramfs $(stat -c %s "$WORK/initramfs.cpio.gz") bytes gzip, $(du -sb "$R" | cut -f1) bytes unpacked"
    echo "built $(date -u +%FT%TZ) in $((SECONDS - START))s"
} >"$WORK/manifest.txt"

STAGE="$WORK/out"
mkdir "$STAGE"
mv "$WORK/vmlinuz" "$WORK/initramfs.cpio.gz" "$WORK/manifest.txt" "$STAGE/"
[[ -f "$WORK/vmlinux" ]] && mv "$WORK/vmlinux" "$STAGE/"
touch "$STAGE/.complete"
rm -rf "$OUT"
mv "$STAGE" "$OUT"
# keep the three most recently used guests, drop older ones (stale kernels/scripts)
for old in $(ls -1dt "$CACHE_ROOT"/guest-*/.complete 2>/dev/null | tail -n +4); do
    rm -rf "$(dirname "$old")"
done
log "built $OUT in $((SECONDS - START))s: $(sed -n 's/^initramfs //p' "$OUT/manifest.txt")"
printf '%s\n' "$OUT"
