#!/bin/bash
# Installs what `make nbdkit` and `make nbdkit-test` need, from Debian, when
# missing: nbdkit, its plugin headers, libnbd's tools (nbdinfo, nbdcopy) and
# its Python binding (the many-clients test).
set -euo pipefail
need=()
[ -e /usr/include/nbdkit-plugin.h ] || need+=(nbdkit-plugin-dev)
command -v nbdkit >/dev/null || need+=(nbdkit)
command -v nbdinfo >/dev/null && command -v nbdcopy >/dev/null || need+=(libnbd-bin)
/usr/bin/python3 -c "import nbd" 2>/dev/null || need+=(python3-libnbd)
# `nbdkit-deps.sh bench`: also fio (its nbd engine) for make bench-nbd.
[ "${1:-}" != bench ] || command -v fio >/dev/null || need+=(fio)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
echo "== nbdkit-deps: installing ${need[*]}"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
