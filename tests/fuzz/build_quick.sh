#!/bin/sh
# The fuzz targets without meson, for long runs on a busy machine: clang compiles the library
# straight into objects with coverage (-fsanitize=fuzzer-no-link), ASan and UBSan, except the
# AVX2 / AVX-512 kernel files, which get coverage and UBSan only (clang -O2 spends tens of
# minutes per file instrumenting their unrolled intrinsics for ASan). Their memory accesses are
# checked by the corpus replays of the ASan stage of .ci/run (gcc, full ASan). Needs a meson
# build folder for the generated version header (default build/). SAN=undefined drops ASan from
# every file and SAN=none every sanitizer (throughput builds for long runs: the targets' own checks
# still run; replay the corpus they grow with an ASan + UBSan build).
# TRACE_CMP=io keeps libFuzzer's comparison tracing in lib/io and lib/runtime only (where the
# inputs' bytes meet parsers and argument checks): in the kernels' loops and the targets' own
# checking loops it takes two thirds of the time. Usage:
# EXTRA_CFLAGS is added to every compile (for example "-O3 -march=native").
#   [SAN=undefined|none] [TRACE_CMP=io] [EXTRA_CFLAGS=...] tests/fuzz/build_quick.sh [out-dir] [meson-build-dir]
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$src/build-fuzz-quick}
gen=${2:-$src/build}
CC=${CC:-clang}
SAN=${SAN:-address,undefined}
TRACE_CMP=${TRACE_CMP:-all}
nocmp=""
[ "$TRACE_CMP" = io ] && nocmp="-fno-sanitize-coverage=trace-cmp"
mkdir -p "$out/obj"
inc="-I$src/include -I$gen/include -I$src/lib/runtime -I$src/lib/kernels -I$src/lib/layer"
inc="$inc -I$src/lib/offline -I$src/lib/io $(pkg-config --cflags openblas 2>/dev/null || true)"
common="-std=c11 -g -O2 -fno-omit-frame-pointer -ffp-contract=off -fno-math-errno -pthread"
common="$common -D_FILE_OFFSET_BITS=64 -DDQ_BUILDING_DLL -fsanitize=fuzzer-no-link ${EXTRA_CFLAGS:-}"
objs=""
todo=""
for f in "$src"/lib/runtime/*.c "$src"/lib/kernels/*.c "$src"/lib/layer/*.c \
         "$src"/lib/offline/*.c "$src"/lib/io/*.c; do
    case $f in
    */dq_offline_stubs.c) continue ;;
    esac
    o="$out/obj/$(basename "$(dirname "$f")")_$(basename "$f" .c).o"
    if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ -n "$(find "$src/lib" "$src/include" -name '*.h' -newer "$o")" ]; then
        todo="$todo $f:$o"
    fi
    objs="$objs $o"
done
# ${JOBS:-2} compilers at a time.
export CC common inc SAN nocmp
printf '%s\n' $todo | xargs -r -P "${JOBS:-2}" -I{} sh -c '
    f=${1%%:*}; o=${1#*:}
    case $f in
    *_avx2.c | *_avx512.c) san="-fsanitize=undefined" ;;
    *) san="-fsanitize=$SAN" ;;
    esac
    [ "$SAN" = none ] && san=""
    case $f in
    */lib/io/* | */lib/runtime/*) ;;
    *) san="$san $nocmp" ;;
    esac
    echo "cc $f"
    $CC $common $san -fno-sanitize-recover=undefined $inc -c "$f" -o "$o"' sh {}
link_san="fuzzer,$SAN"
[ "$SAN" = none ] && link_san=fuzzer
libs=$(pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
for t in fuzz_numeric fuzz_diff fuzz_reader; do
    $CC $common -O1 -fsanitize=$link_san $nocmp -fno-sanitize-recover=undefined $inc \
        "$src/tests/fuzz/$t.c" $objs $libs -llapacke -llapack -lm -lpthread -o "$out/$t"
    echo "built $out/$t"
done
