#!/bin/bash
# A golden runner must skip (77) when the directory is absent and fail when a case is present
# but a file is malformed (truncated array, broken manifest).
set -uo pipefail
runner=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

DUQUANT_GOLDEN_DIR="$tmp/absent" "$runner" >/dev/null; rc=$?
echo "absent directory: exit $rc (want 77)"; [ $rc -eq 77 ] || fail=1

first=$(ls -d "$src"/*/ 2>/dev/null | head -n1)
if [ -z "$first" ]; then
    echo "SKIP: no golden case to corrupt in $src"; exit 77
fi
name=$(basename "$first")

mkdir -p "$tmp/trunc"; cp -r "$first" "$tmp/trunc/$name"; chmod -R u+w "$tmp/trunc"
truncate -s 100 "$tmp/trunc/$name/Xt.f32"
DUQUANT_GOLDEN_DIR="$tmp/trunc" "$runner" >/dev/null 2>&1; rc=$?
echo "truncated Xt.f32: exit $rc (want 1)"; [ $rc -eq 1 ] || fail=1

mkdir -p "$tmp/json"; cp -r "$first" "$tmp/json/$name"; chmod -R u+w "$tmp/json"
head -c 300 "$first/manifest.json" > "$tmp/json/$name/manifest.json"
DUQUANT_GOLDEN_DIR="$tmp/json" "$runner" >/dev/null 2>&1; rc=$?
echo "broken manifest.json: exit $rc (want 1)"; [ $rc -eq 1 ] || fail=1

mkdir -p "$tmp/ok"; cp -r "$first" "$tmp/ok/$name"
DUQUANT_GOLDEN_DIR="$tmp/ok" "$runner" >/dev/null 2>&1; rc=$?
echo "intact copy: exit $rc (want 0)"; [ $rc -eq 0 ] || fail=1
exit $fail
