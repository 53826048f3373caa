#!/bin/bash
# The method ranking doc/results.md claims for stories260K with every setting chosen on
# calibration data (the defaults), perplexities computed here on the whole dev text with a
# half-precision key/value cache: duquant_gptq < hadamard_full_gptq (the full-width baseline)
# < gptq < rtn, and GPTQ with Hessians from every calibration token below GPTQ with Hessians
# from the 512-token sample (W4A16 without --sequential, where nothing else differs).
# usage: llama2c-ranking.sh ENGINE
set -euo pipefail
engine=$1
common=(--steps 0 --format tsv --kv-bits 16)
out=$("$engine" "${common[@]}" --methods rtn,gptq,hadamard_full_gptq,duquant_gptq)
all=$("$engine" "${common[@]}" --methods w4a16_gptq --sequential 0 | tail -n 1)
sample=$("$engine" "${common[@]}" --methods w4a16_gptq --sequential 0 --hessian-tokens 0 |
    tail -n 1 | sed 's/^w4a16_gptq/w4a16_gptq_sample/')
{
    echo "$out"
    echo "$all"
    echo "$sample"
} | tee /dev/stderr | awk -F'\t' '
$1 == "method" { next }
{ ppl[$1] = $2 + 0 }
function below(a, b) {
    ok = (a in ppl) && (b in ppl) && ppl[a] > 1 && ppl[a] < ppl[b]
    printf "%s: %s %.4f < %s %.4f\n", ok ? "ok" : "FAILED", a, ppl[a], b, ppl[b]
    if (!ok) bad = 1
}
END {
    below("duquant_gptq", "hadamard_full_gptq")
    below("hadamard_full_gptq", "gptq")
    below("gptq", "rtn")
    below("w4a16_gptq", "w4a16_gptq_sample")
    exit bad
}'
