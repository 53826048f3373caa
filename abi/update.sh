#!/bin/bash
# Writes the ABI baseline of a release, abi/libduquant-<major>.<minor>.abi, from a debug build of
# the shared library. Run only when a release deliberately fixes a new baseline (then point the
# abi-baseline test in tests/meson.build at it): usage abi/update.sh BUILD_DIR [RELEASE]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
release=${2:-1.0}
abidw --no-corpus-path --drop-private-types --headers-dir include \
      --headers-dir "$build/include" --out-file "abi/libduquant-$release.abi" \
      "$build/lib/libduquant.so"
echo "wrote abi/libduquant-$release.abi"
