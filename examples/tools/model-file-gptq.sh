#!/bin/bash
# The GPTQ methods on stories260K: GPTQ packing beats round-to-nearest with the same plan
# (duquant_gptq below duquant, gptq below rtn, perplexities computed by duquant-eval here), a
# duquant_gptq model file written with --sequential gives duquant-eval's in-memory perplexity
# (--sequential gptq: per layer for the GPTQ methods) to 4 decimals, one written without it gives
# duquant-eval --sequential 0's (duquant-run --matrices float, the in-memory evaluation's
# matrices), and an unknown method name is still refused.
# usage: model-file-gptq.sh QUANTIZE RUN EVAL DATA_DIR
set -euo pipefail
quantize=$1
run=$2
engine=$3
src=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
model=(--model "$src/stories260K.bin" --tokenizer "$src/tok512.bin")
calib=$src/calib.txt
eval=$src/dev.txt

"$engine" "${model[@]}" --calib "$calib" --eval "$eval" --methods rtn,duquant,gptq,duquant_gptq \
    --sequential gptq \
    --format tsv --steps 0 --settings 1 >"$tmp/eval.tsv" 2>"$tmp/eval.err"
ppl() { awk -F '\t' -v m="$1" '$1 == m { print $2 }' "$tmp/eval.tsv"; }
below() { # below A B: method A's perplexity is below method B's
    local a b
    a=$(ppl "$1")
    b=$(ppl "$2")
    if [ -n "$a" ] && [ -n "$b" ] && awk -v a="$a" -v b="$b" 'BEGIN { exit !(a < b) }'; then
        echo "ok: $1 $a < $2 $b"
    else
        echo "FAILED: $1 '$a' not below $2 '$b'"
        fail=1
    fi
}
below duquant_gptq duquant
below gptq rtn

# Round trip: the model file's perplexity is the in-memory one; GPTQ's settings are recorded.
if "$quantize" "${model[@]}" --calib "$calib" --method duquant_gptq --out "$tmp/dg.dq" \
    --block-choice each --sequential 2>"$tmp/q.err"; then
    got=$("$run" --model "$tmp/dg.dq" --tokenizer "$src/tok512.bin" --eval "$eval" \
        --format tsv --matrices float | tail -n 1 | cut -f 2)
    want=$(ppl duquant_gptq)
    if [ -n "$got" ] && [ "$(printf '%.4f' "$got")" = "$(printf '%.4f' "$want")" ]; then
        echo "ok: duquant_gptq: model file $got, in memory $want"
    else
        echo "FAILED: duquant_gptq: model file '$got', in memory '$want'"
        fail=1
    fi
    if grep -aq '"quant.gptq":"1"' "$tmp/dg.dq" && grep -aq '"quant.gptq_damp":' "$tmp/dg.dq" &&
        grep -aq '"quant.gptq_hessian":"calibration tokens"' "$tmp/dg.dq"; then
        echo "ok: GPTQ settings in the metadata"
    else
        echo "FAILED: no GPTQ settings in the metadata"
        fail=1
    fi
    # The block and clip chosen per input: in the metadata, and the ones duquant-eval chose.
    grep -ao '"quant\.layers\.[0-9]*\.[a-z0-9]*\.[a-z_]*":"[^"]*"' "$tmp/dg.dq" |
        tr -d '"' | sed 's/^quant\.layers\.\([0-9]*\)\.\([a-z0-9]*\)\.\([a-z_]*\):/\1 \2 \3 /' \
        >"$tmp/file.set"
    awk -F '\t' '$1 == "settings" && $2 == "duquant_gptq" {
        print $3, $4, "block", $5; print $3, $4, "act_clip", $6
        if (match($10, /damp [0-9.e-]+ of/))
            print $3, $4, "gptq_damp", substr($10, RSTART + 5, RLENGTH - 8) }' \
        "$tmp/eval.err" >"$tmp/eval.set"
    if [ "$(wc -l <"$tmp/file.set")" -eq 60 ] &&
        awk 'FNR == NR { v[$1 " " $2 " " $3] = $4; n++; next }
             { k = $1 " " $2 " " $3; d = v[k] - $4; if (!(k in v) || d > 1e-6 || d < -1e-6)
               exit 1 } END { exit n != 60 }' "$tmp/eval.set" "$tmp/file.set"; then
        echo "ok: per-input block, clip and GPTQ dampening in the metadata, as duquant-eval" \
             "chose them"
    else
        echo "FAILED: per-input settings in the metadata:"
        cat "$tmp/file.set"
        fail=1
    fi
else
    echo "FAILED: duquant-quantize --method duquant_gptq:"
    cat "$tmp/q.err"
    fail=1
fi

# Without --sequential: Hessians (and plans) from the float blocks' output, as duquant-eval
# --sequential 0 takes them.
want=$("$engine" "${model[@]}" --calib "$calib" --eval "$eval" --methods duquant_gptq \
    --format tsv --steps 0 --sequential 0 2>/dev/null | tail -n 1 | cut -f 2) || want=
if "$quantize" "${model[@]}" --calib "$calib" --method duquant_gptq --block-choice each \
    --out "$tmp/flt.dq" 2>"$tmp/q.err" &&
    got=$("$run" --model "$tmp/flt.dq" --tokenizer "$src/tok512.bin" --eval "$eval" \
        --format tsv --matrices float | tail -n 1 | cut -f 2) && [ -n "$want" ] &&
    [ "$(printf '%.4f' "$got")" = "$(printf '%.4f' "$want")" ] &&
    [ "$(printf '%.4f' "$got")" != "$(printf '%.4f' "$(ppl duquant_gptq)")" ]; then
    echo "ok: duquant_gptq without --sequential: model file $got, duquant-eval --sequential 0" \
         "$want"
else
    echo "FAILED: duquant_gptq without --sequential: model file '${got:-}'," \
         "duquant-eval --sequential 0 '$want'"
    cat "$tmp/q.err"
    fail=1
fi

# An unknown method: non-zero exit, a message naming it, no output file.
if ! "$quantize" "${model[@]}" --calib "$calib" --method duquant_gptqq --out "$tmp/bad.dq" \
    >"$tmp/out" 2>&1 && [ ! -e "$tmp/bad.dq" ] && grep -q duquant_gptqq "$tmp/out"; then
    echo "ok: duquant-quantize refuses an unknown method"
else
    echo "FAILED: duquant-quantize --method duquant_gptqq: $(cat "$tmp/out")"
    fail=1
fi
if ! "$engine" "${model[@]}" --calib "$calib" --eval "$eval" --methods gptq,gptqq --steps 0 \
    >"$tmp/out" 2>&1 && grep -q gptqq "$tmp/out"; then
    echo "ok: duquant-eval refuses an unknown method"
else
    echo "FAILED: duquant-eval --methods gptq,gptqq: $(cat "$tmp/out")"
    fail=1
fi
exit $fail
