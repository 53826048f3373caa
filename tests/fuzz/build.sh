#!/bin/sh
# Builds the libFuzzer target for the file reader with clang (ASan + UBSan) in build-fuzz/.
# Usage: tests/fuzz/build.sh [build-dir]; then run, e.g.
#   build-fuzz/fuzz_reader -max_total_time=900 -jobs=2 -workers=2 build-fuzz/corpus tests/fuzz/corpus
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/build-fuzz}
CC=${CC:-clang}
if [ ! -f "$out/build.ninja" ]; then
    CC=$CC meson setup "$out" "$src" --wrap-mode=nodownload -Ddefault_library=static \
        -Dtests=disabled -Dexamples=false -Dbenchmarks=false -Db_sanitize=address,undefined \
        -Db_lundef=false -Dc_args=-fsanitize=fuzzer-no-link
fi
ninja -C "$out" -j2 lib/libduquant.a
libs=$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
$CC -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$src/include" -I"$out/include" "$src/tests/fuzz/fuzz_reader.c" "$out/lib/libduquant.a" \
    $libs -llapacke -llapack -lm -lpthread -o "$out/fuzz_reader"
mkdir -p "$out/corpus"
echo "built $out/fuzz_reader"
