#!/bin/bash
# Compares the built shared library with the committed ABI baseline. Allowed: added symbols and
# members appended to params structs (abi/libduquant.abignore). Anything else fails.
# usage: abi-check.sh LIB BASELINE SUPPRESSIONS INCLUDE_DIR GENERATED_INCLUDE_DIR
set -uo pipefail
lib=$1 baseline=$2 supp=$3 inc=$4 geninc=$5
if ! command -v abidiff >/dev/null; then
    echo "SKIP: abidiff (Debian abigail-tools) is not installed"; exit 77
fi
# grep reads all of readelf's output: with -q it could exit early, and pipefail would then
# report readelf's SIGPIPE as "no debug information".
if ! readelf -S "$lib" | grep '\.debug_info' >/dev/null; then
    echo "SKIP: $lib has no debug information (use a debug or debugoptimized build)"; exit 77
fi
[ -f "$baseline" ] || { echo "FAIL: baseline $baseline is missing"; exit 1; }
abidiff --no-added-syms --suppressions "$supp" --headers-dir2 "$inc" --headers-dir2 "$geninc" \
        --drop-private-types "$baseline" "$lib"
rc=$?
echo "abidiff exit status: $rc (0 = compatible)"
[ $rc -eq 0 ]
