#!/bin/bash
# Installs the library (shared and static) into a temporary prefix with meson, then builds and
# runs an example using nothing but pkg-config, as an engine would: linked to the shared
# library with `pkg-config --cflags --libs duquant`, and to the static archive with
# `pkg-config --static --libs duquant`. `pkg-config --cflags duquant` must name our include
# folder only (no BLAS or LAPACK headers leak through it). Arguments after the example are
# passed to meson setup (-Dcalibration=disabled tests the inference-only library).
set -euo pipefail
src=$1
example=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
meson setup "$tmp/build" "$src" --prefix="$prefix" --libdir=lib --wrap-mode=nodownload \
    -Ddefault_library=both -Dtests=disabled -Dexamples=false -Dbenchmarks=false "$@" \
    >"$tmp/setup.log" 2>&1 || { cat "$tmp/setup.log"; exit 1; }
meson install -C "$tmp/build" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
ls "$prefix/include"

cflags=$(echo $(pkg-config --cflags duquant)) # word-split: no trailing blank
echo "pkg-config --cflags duquant: $cflags"
if [ "$cflags" != "-I$prefix/include" ]; then
    echo "FAILED: --cflags should be exactly -I$prefix/include"
    exit 1
fi
static_cflags=$(echo $(pkg-config --static --cflags duquant))
if [ "$static_cflags" != "-I$prefix/include" ]; then
    echo "FAILED: --static --cflags should be exactly -I$prefix/include, got: $static_cflags"
    exit 1
fi

flags=$(pkg-config --cflags --libs duquant)
echo "pkg-config --cflags --libs duquant: $flags"
cc -std=c99 -Wall -Wextra -Werror -o "$tmp/example" "$example" $flags -lm
LD_LIBRARY_PATH="$prefix/lib" "$tmp/example"

# The static archive alone: without the shared objects, -lduquant can only mean libduquant.a.
rm -f "$prefix"/lib/libduquant.so*
static_flags=$(pkg-config --static --cflags --libs duquant)
echo "pkg-config --static --cflags --libs duquant: $static_flags"
cc -std=c99 -Wall -Wextra -Werror -o "$tmp/example-static" "$example" $static_flags
if ldd "$tmp/example-static" | grep -q libduquant; then
    echo "FAILED: the static example still loads libduquant"
    exit 1
fi
"$tmp/example-static"

# A program that reaches the BLAS and LAPACK users (LWC, refinement) in the static archive: the
# libraries in Libs.private must resolve them.
cat >"$tmp/offline.c" <<'C'
#include <duquant.h>
#include <stdio.h>
int main(void)
{
    dq_refine_params p;
    dq_status st = dq_refine_params_init(&p, sizeof p);
    float loss = 0.0f;
    printf("libduquant %s: refine params %s, LWC %s\n", dq_version_string(), dq_status_name(st),
           dq_status_name(dq_lwc_train(NULL, &loss)));
    return dq_rotation_refine(NULL, NULL, NULL, NULL, 0, 0, 0, NULL) == DQ_OK;
}
C
cc -std=c99 -Wall -Wextra -Werror -o "$tmp/offline-static" "$tmp/offline.c" $static_flags
"$tmp/offline-static"
