#!/bin/bash
# Build QEMU 7.2's tools (qemu-img, qemu-io, qemu-nbd) with the cowblk add-cow glue
# driver, linked against libcowblk.  Idempotent and resumable: each step leaves a
# stamp in build/ and is skipped when its stamp is present; delete build/qemu to
# start over.  Needs root (apt) on a Debian 12 machine.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
SRC=$BUILD/qemu                    # unpacked QEMU 7.2 source tree
OBJ=$SRC/build-cowblk              # QEMU build directory
# COWBLK_AS_QCOW2=1: the second configuration, in its own build directory:
# the library's qcow2 registered as "qcow2", QEMU's own qcow2 not built
# (patch 0005, meson option cowblk_qcow2), for qemu-iotests -qcow2.
AS_QCOW2=${COWBLK_AS_QCOW2:-0}
[ "$AS_QCOW2" = 1 ] && OBJ=$SRC/build-libqcow2
PREFIX=${COWBLK_PREFIX:-$BUILD/qemu-prefix}  # not build/prefix: make ctest wipes that one
JOBS=${JOBS:-2}
# QEMU_VERSION=1:7.2+dfsg-7+deb12u18 pins a Debian revision; by default the
# newest 7.2 revision the mirror offers (older ones disappear from it).
QEMU_VERSION=${QEMU_VERSION:-}

log() { printf '== qemu-build: %s\n' "$*"; }
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo

mkdir -p "$BUILD"

# 1. Debian source packages: a deb-src twin of every deb entry.
if ! grep -rqs '^Types:.*deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "enabling deb-src"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        sed 's/^Types: *deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
            $SUDO tee /etc/apt/sources.list.d/cowblk-deb-src.sources >/dev/null
    else
        sed -n 's/^deb /deb-src /p' /etc/apt/sources.list |
            $SUDO tee /etc/apt/sources.list.d/cowblk-deb-src.list >/dev/null
    fi
    rm -f "$BUILD/.apt-updated"
fi
if [ ! -e "$BUILD/.apt-updated" ]; then
    $SUDO apt-get update -q
    touch "$BUILD/.apt-updated"
fi

# 2. Build dependencies (tools-only build plus what qemu-iotests uses).
DEPS="meson ninja-build pkg-config gcc make libglib2.0-dev zlib1g-dev python3-venv flex bison dpkg-dev"
missing=
for p in $DEPS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing:$missing"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi

# 3. QEMU 7.2 source (Debian's DFSG tarball with Debian's patches applied).
if [ ! -e "$SRC/.unpacked" ]; then
    if [ -z "$QEMU_VERSION" ]; then
        QEMU_VERSION=$(apt-cache showsrc qemu | sed -n 's/^Version: \(1:7\.2[^ ]*\)$/\1/p' |
            sort -V | tail -n 1)
        [ -n "$QEMU_VERSION" ] || { echo "no QEMU 7.2 source package found" >&2; exit 1; }
    fi
    log "fetching qemu $QEMU_VERSION source"
    rm -rf "$SRC" "$BUILD/qemu-dl"
    mkdir -p "$BUILD/qemu-dl"
    (cd "$BUILD/qemu-dl" && apt-get source -q --download-only "qemu=$QEMU_VERSION")
    dpkg-source -x "$BUILD"/qemu-dl/qemu_*.dsc "$SRC"
    # dpkg-source leaves a copy of the upstream tarball beside the tree.
    rm -rf "$BUILD/qemu-dl" "$BUILD"/qemu_*.orig.tar.*
    touch "$SRC/.unpacked"
fi

# 4. The library, installed where pkg-config finds it. COWBLK_SKIP_INSTALL=1
#    with COWBLK_PREFIX=/some/prefix uses a library installed there already.
if [ "${COWBLK_SKIP_INSTALL:-0}" = 1 ]; then
    [ -f "$PREFIX/lib/pkgconfig/cowblk.pc" ] ||
        { echo "no $PREFIX/lib/pkgconfig/cowblk.pc (COWBLK_PREFIX?)" >&2; exit 1; }
else
    log "installing libcowblk into $PREFIX"
    make -C "$ROOT" install PREFIX="$PREFIX" >/dev/null
fi

# 5. The glue: the driver source (copied every run so that edits take effect)
#    and our patches to QEMU (QAPI info type, meson wiring, iotests harness),
#    each applied once.
cp "$ROOT/qemu/block/add-cow.c" "$SRC/block/add-cow.c"
for p in "$ROOT"/qemu/patches/*.patch; do
    stamp="$SRC/.patch-$(basename "$p" .patch).done"
    if [ ! -e "$stamp" ]; then
        if patch -d "$SRC" -p1 -R --dry-run --batch -s -f <"$p" >/dev/null 2>&1; then
            log "$(basename "$p") is already applied"
        else
            log "applying $(basename "$p")"
            patch -d "$SRC" -p1 --dry-run --batch -s <"$p" >/dev/null
            patch -d "$SRC" -p1 --batch -s <"$p"
        fi
        touch "$stamp"
    fi
done

# 6. Configure (tools only) and build.
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
if [ ! -e "$OBJ/build.ninja" ]; then
    log "configuring"
    mkdir -p "$OBJ"
    (cd "$OBJ" && ../configure --target-list= --disable-system --disable-user \
        --enable-tools --disable-docs --disable-werror --disable-install-blobs \
        --meson=meson --extra-ldflags="-Wl,-rpath,$PREFIX/lib")
fi
if [ "$AS_QCOW2" = 1 ] && [ ! -e "$OBJ/.cowblk-as-qcow2" ]; then
    meson configure "$OBJ" -Dcowblk_qcow2=true >/dev/null
    touch "$OBJ/.cowblk-as-qcow2"
fi
# meson keeps the pkg-config path of the first configure; keep it pointing
# at our prefix (a later PREFIX, or a tree configured before the library).
want="$PREFIX/lib/pkgconfig"
if [ "$(cat "$OBJ/.cowblk-pkgconfig" 2>/dev/null)" != "$want" ]; then
    meson configure "$OBJ" -Dpkg_config_path="$want" >/dev/null
    echo "$want" >"$OBJ/.cowblk-pkgconfig"
fi
log "building qemu-img qemu-io qemu-nbd"
ninja -C "$OBJ" -j"$JOBS" qemu-img qemu-io qemu-nbd
log "done: $OBJ/qemu-img $OBJ/qemu-io $OBJ/qemu-nbd"
