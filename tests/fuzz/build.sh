#!/bin/sh
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/: fuzz_reader (the file
# reader), fuzz_numeric (the numeric public API) and fuzz_diff (fast kernels against the
# portable oracle; links the library's private entry points). Usage:
#   tests/fuzz/build.sh [build-dir]; then run, e.g. (doc/fuzzing.md)
#   build-fuzz/fuzz_reader -max_total_time=900 build-fuzz/corpus tests/fuzz/corpus
#   build-fuzz/fuzz_numeric -max_len=512 -runs=10000000 build-fuzz/corpus-numeric \
#       tests/fuzz/corpus-numeric
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
private="-I$src/lib/runtime -I$src/lib/kernels -I$src/lib/layer -I$src/lib/offline -I$src/lib/io"
for t in fuzz_reader fuzz_numeric fuzz_diff; do
    $CC -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
        -I"$src/include" -I"$out/include" $private "$src/tests/fuzz/$t.c" \
        "$out/lib/libduquant.a" $libs -llapacke -llapack -lm -lpthread -o "$out/$t"
    case $t in
    fuzz_reader) mkdir -p "$out/corpus" ;;
    *) mkdir -p "$out/corpus-${t#fuzz_}" ;;
    esac
    echo "built $out/$t"
done
