#!/bin/bash
# --block-choice on stories260K: with "first" (duquant-quantize's default) every block's
# recorded block equals block 0's per input, and block 0's equals what "each" chose there;
# duquant-eval --block-choice first chooses the same blocks; the choice is in the metadata;
# bad values are refused by both programs with a message naming the flag.
# usage: block-choice.sh QUANTIZE EVAL DATA_DIR
set -euo pipefail
quantize=$1
engine=$2
src=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
model=(--model "$src/stories260K.bin" --tokenizer "$src/tok512.bin")
calib=$src/calib.txt

blocks() { # blocks FILE: "layer input block" per line from the metadata
    grep -ao '"quant\.layers\.[0-9]*\.[a-z0-9]*\.block":"[^"]*"' "$1" | tr -d '"' |
        sed 's/^quant\.layers\.\([0-9]*\)\.\([a-z0-9]*\)\.block:/\1 \2 /' | sort -n -k1,1 -k2
}
for c in default each; do
    args=()
    [ "$c" = each ] && args=(--block-choice each)
    if ! "$quantize" "${model[@]}" --calib "$calib" --method duquant --out "$tmp/$c.dq" \
        "${args[@]}" 2>"$tmp/$c.err"; then
        echo "FAILED: duquant-quantize ${args[*]}:"
        cat "$tmp/$c.err"
        exit 1
    fi
    blocks "$tmp/$c.dq" >"$tmp/$c.blocks"
done
want=first
for c in default each; do
    if grep -aq "\"quant.block_choice\":\"$want\"" "$tmp/$c.dq"; then
        echo "ok: quant.block_choice $want in the metadata ($c)"
    else
        echo "FAILED: no quant.block_choice $want in the metadata ($c)"
        fail=1
    fi
    want=each
done
n=$(wc -l <"$tmp/default.blocks")
if [ "$n" -eq 20 ] &&
    awk '$1 == 0 { b[$2] = $3; next } { if (!($2 in b) || b[$2] != $3) exit 1 }' \
        "$tmp/default.blocks"; then
    echo "ok: first: all $((n / 4)) layers read layer 0's blocks:" \
         "$(awk '$1 == 0 { printf "%s %s ", $2, $3 }' "$tmp/default.blocks")"
else
    echo "FAILED: first: blocks differ from layer 0's ($n lines):"
    cat "$tmp/default.blocks"
    fail=1
fi
if [ "$(awk '$1 == 0' "$tmp/default.blocks")" = "$(awk '$1 == 0' "$tmp/each.blocks")" ]; then
    echo "ok: layer 0: first and each choose the same blocks;" \
         "each: $(awk '{ print $3 }' "$tmp/each.blocks" | sort -u | tr '\n' ' ')in the layers"
else
    echo "FAILED: layer 0 blocks differ between first and each:"
    diff "$tmp/default.blocks" "$tmp/each.blocks" || true
    fail=1
fi
# duquant-eval with the same choice: the blocks the model file records, later layers with one
# candidate each.
"$engine" "${model[@]}" --calib "$calib" --eval "$src/dev.txt" --methods duquant --steps 0 \
    --max-windows 1 --format tsv --settings 1 --block-choice first >/dev/null 2>"$tmp/eval.err" ||
    true
awk -F '\t' '$1 == "settings" { print $3, $4, $5 }' "$tmp/eval.err" |
    sort -n -k1,1 -k2 >"$tmp/eval.blocks"
if cmp -s "$tmp/eval.blocks" "$tmp/default.blocks" &&
    [ "$(awk -F '\t' '$1 == "settings" && $3 > 0 && $10 !~ /^1 blocks/' "$tmp/eval.err" |
        wc -l)" -eq 0 ]; then
    echo "ok: duquant-eval --block-choice first: the same blocks, one candidate after layer 0"
else
    echo "FAILED: duquant-eval --block-choice first:"
    grep '^settings' "$tmp/eval.err" || cat "$tmp/eval.err"
    fail=1
fi
for v in '' x FIRST 1 first,each; do
    for p in quantize engine; do
        if [ "$p" = quantize ]; then
            cmd=("$quantize" "${model[@]}" --calib "$calib" --method duquant --out "$tmp/bad.dq")
        else
            cmd=("$engine" "${model[@]}" --calib "$calib" --methods fp32 --max-windows 1)
        fi
        if ! "${cmd[@]}" --block-choice "$v" >"$tmp/out" 2>&1 &&
            grep -q -- '--block-choice' "$tmp/out" && [ ! -e "$tmp/bad.dq" ]; then
            echo "ok: $p refuses --block-choice '$v': $(head -n 1 "$tmp/out")"
        else
            echo "FAILED: $p accepted --block-choice '$v': $(head -n 3 "$tmp/out")"
            fail=1
        fi
    done
done
exit $fail
