#!/bin/bash
# The FP32 engine's greedy continuation of "Once upon a time" must start with the model's
# known first sentence (stories260K, llama2.c run.c at temperature 0).
set -euo pipefail
engine=$1
expected="Once upon a time, there was a little girl named Lily."
out=$("$engine" --methods fp32 --max-windows 1 --steps 40 --prompt "Once upon a time")
echo "$out"
if ! grep -qF "[fp32] $expected" <<<"$out"; then
    echo "FAILED: the FP32 sample does not start with: $expected"
    exit 1
fi
echo "ok: the FP32 sample starts with: $expected"
