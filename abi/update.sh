#!/bin/bash
# Writes the ABI baseline abi/libduquant.abi from a debug build of the shared library.
# Run only when a release deliberately fixes a new baseline: usage abi/update.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
abidw --no-corpus-path --drop-private-types --headers-dir include \
      --headers-dir "$build/include" --out-file abi/libduquant.abi "$build/lib/libduquant.so"
echo "wrote abi/libduquant.abi"
