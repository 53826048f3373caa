#!/bin/bash
# Installs the library into a temporary prefix with meson, then builds and runs an example using
# nothing but `pkg-config --cflags --libs duquant`, as an engine would.
set -euo pipefail
src=$1
example=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
meson setup "$tmp/build" "$src" --prefix="$prefix" --libdir=lib --wrap-mode=nodownload \
    -Dtests=disabled -Dexamples=false -Dbenchmarks=false >"$tmp/setup.log" 2>&1 ||
    { cat "$tmp/setup.log"; exit 1; }
meson install -C "$tmp/build" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
flags=$(pkg-config --cflags --libs duquant)
echo "pkg-config --cflags --libs duquant: $flags"
cc -std=c99 -Wall -Wextra -Werror -o "$tmp/example" "$example" $flags -lm
ls "$prefix/include"
LD_LIBRARY_PATH="$prefix/lib" "$tmp/example"
