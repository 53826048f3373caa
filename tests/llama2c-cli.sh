#!/bin/bash
# Command-line contract of the llama2c engine: tsv header, rejected arguments, and the
# calibration dump (float32 .npy per layer and input, checked with numpy when present).
set -euo pipefail
engine=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
expect_fail() {
    if "$engine" "$@" >"$tmp/out" 2>&1; then
        echo "FAILED: accepted: $*"
        fail=1
    else
        echo "ok: rejected ($*): $(head -n 1 "$tmp/out")"
    fi
}
expect_fail --methods nosuch --max-windows 1
expect_fail --methods fp32,fp32 --max-windows 1
expect_fail --format json
expect_fail --block
expect_fail --act-clip 1.5
expect_fail --no-such-option 1
expect_fail --model "$tmp/missing.bin"
expect_fail --eval "$tmp/missing.txt"
printf 'not a model' >"$tmp/bad.bin"
expect_fail --model "$tmp/bad.bin"
expect_fail --groups -1
expect_fail --groups x
expect_fail --methods duquant_lwc --groups 32 --max-windows 1 --steps 0

# --groups: weights and activations per group (w2's 172-wide input ends in a group of 12,
# which GPTQ packs too; test_gptq checks such short groups against its oracle).
rows=$("$engine" --methods rtn --format tsv --max-windows 2 --steps 0 | tail -n 1)
grouped=$("$engine" --methods rtn,gptq --groups 32 --format tsv --max-windows 2 --steps 0)
if [ "$(wc -l <<<"$grouped")" -eq 3 ] && grep -q '^gptq	' <<<"$grouped" &&
   [ "$(cut -f2 <<<"$rows")" != "$(sed -n 2p <<<"$grouped" | cut -f2)" ]; then
    echo "ok: --groups 32: $(sed -n 2p <<<"$grouped" | cut -f1,2), whole rows $(cut -f2 <<<"$rows")"
else
    echo "FAILED: --groups 32:"
    echo "$grouped"
    fail=1
fi

out=$("$engine" --methods fp32 --format tsv --max-windows 2 --steps 0 --sample-tokens 40 \
      --calib-tokens 100 --dump-calib "$tmp")
header=$(head -n 1 <<<"$out")
if [ "$header" = "$(printf 'method\tppl\tratio_to_fp32\tquantize_s')" ] &&
   [ "$(wc -l <<<"$out")" -eq 2 ] && grep -q '^fp32	' <<<"$out"; then
    echo "ok: tsv output: $(tail -n 1 <<<"$out")"
else
    echo "FAILED: tsv output:"
    echo "$out"
    fail=1
fi
n=$(ls "$tmp"/layer*_*.npy | wc -l)
if [ "$n" -eq 20 ]; then
    echo "ok: 20 calibration samples written"
else
    echo "FAILED: $n calibration samples written, expected 20 (5 layers x 4 inputs)"
    fail=1
fi
if /usr/bin/python3 -c 'import numpy' 2>/dev/null; then
    /usr/bin/python3 - "$tmp" <<'PY' || fail=1
import sys, numpy as np
d = sys.argv[1]
bad = 0
for l in range(5):
    for name, cols in (("qkv", 64), ("wo", 64), ("w13", 64), ("w2", 172)):
        x = np.load(f"{d}/layer{l}_{name}.npy")
        if x.dtype != np.float32 or x.shape != (40, cols) or not np.isfinite(x).all():
            print(f"FAILED: layer{l}_{name}.npy: {x.dtype} {x.shape}")
            bad = 1
print("ok: every sample is float32 40 x width" if not bad else "FAILED: npy check")
sys.exit(bad)
PY
fi
exit $fail
