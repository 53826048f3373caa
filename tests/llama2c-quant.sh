#!/bin/bash
# The quantized pipeline on a short slice: DuQuant+LWC must beat Hadamard and RTN in
# perplexity, and W8A8 must stay within 2 % of FP32.
# usage: llama2c-quant.sh ENGINE [EVAL_WINDOWS] [CALIB_TOKENS]
set -euo pipefail
engine=$1
windows=${2:-12}
calib=${3:-2048}
out=$("$engine" --methods fp32,w8a8_rtn,rtn,hadamard,duquant_lwc --format tsv --steps 0 \
      --max-windows "$windows" --calib-tokens "$calib")
echo "$out"
awk -F'\t' '
NR == 1 {
    if ($0 != "method\tppl\tratio_to_fp32\tquantize_s") { print "FAILED: bad header: " $0; bad = 1 }
    next
}
{ ppl[$1] = $2 + 0; ratio[$1] = $3 + 0 }
function check(ok, what) {
    printf "%s: %s\n", ok ? "ok" : "FAILED", what
    if (!ok) bad = 1
}
END {
    for (m in ppl) n++
    check(n == 5, "five methods reported")
    check(ppl["fp32"] > 1 && ratio["fp32"] == 1, sprintf("fp32 perplexity %.4f", ppl["fp32"]))
    check(ratio["w8a8_rtn"] > 0 && ratio["w8a8_rtn"] < 1.02,
          sprintf("w8a8_rtn within 2%% of fp32 (ratio %.4f)", ratio["w8a8_rtn"]))
    check(ppl["duquant_lwc"] > 0 && ppl["duquant_lwc"] < ppl["hadamard"],
          sprintf("duquant_lwc %.4f < hadamard %.4f", ppl["duquant_lwc"], ppl["hadamard"]))
    check(ppl["duquant_lwc"] > 0 && ppl["duquant_lwc"] < ppl["rtn"],
          sprintf("duquant_lwc %.4f < rtn %.4f", ppl["duquant_lwc"], ppl["rtn"]))
    exit bad
}' <<<"$out"
