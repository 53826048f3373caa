#!/bin/bash
# The full-width randomised Hadamard rotation end to end: it must run, report a finite
# perplexity above FP32's, and beat round-to-nearest and the block Hadamard rotation it
# replaces as the baseline (blocks of at most 64; w2's 172-wide input gets blocks of 4).
# usage: llama2c-hadfull.sh ENGINE [EVAL_WINDOWS] [CALIB_TOKENS]
set -euo pipefail
engine=$1
windows=${2:-12}
calib=${3:-2048}
out=$("$engine" --methods fp32,rtn,hadamard,hadamard_full --format tsv --steps 0 \
      --max-windows "$windows" --calib-tokens "$calib")
echo "$out"
awk -F'\t' '
NR == 1 { next }
{ ppl[$1] = $2 + 0 }
function check(ok, what) {
    printf "%s: %s\n", ok ? "ok" : "FAILED", what
    if (!ok) bad = 1
}
END {
    check(ppl["fp32"] > 1, sprintf("fp32 perplexity %.4f", ppl["fp32"]))
    check(ppl["hadamard_full"] > ppl["fp32"] && ppl["hadamard_full"] < 1e6,
          sprintf("hadamard_full %.4f finite, above fp32", ppl["hadamard_full"]))
    check(ppl["hadamard_full"] < ppl["rtn"],
          sprintf("hadamard_full %.4f < rtn %.4f", ppl["hadamard_full"], ppl["rtn"]))
    check(ppl["hadamard_full"] < ppl["hadamard"],
          sprintf("hadamard_full %.4f < hadamard %.4f", ppl["hadamard_full"], ppl["hadamard"]))
    exit bad
}' <<<"$out"
