#!/bin/bash
# duquant-quantize then duquant-run: the model file's perplexity equals the in-memory
# evaluation's (duquant-eval's, same settings) to 4 decimals with float rotation matrices
# (--matrices float) and a float32 key/value cache, and (rtn) with a 4-bit cache whose clip
# ratios both choose on the calibration text; duquant-run's default, half matrices, stays
# within 2 %; bad inputs exit non-zero with a message and leave no output file (an existing
# one untouched).
# usage: model-file-cli.sh QUANTIZE RUN EVAL llama2c DATA_DIR | hf MODELS_DIR
set -euo pipefail
quantize=$1
run=$2
engine=$3
mode=$4
src=$5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
if [ "$mode" = llama2c ]; then
    model=(--model "$src/stories260K.bin" --tokenizer "$src/tok512.bin")
    calib=$src/calib.txt
    eval=$src/dev.txt
    methods="rtn duquant"
else
    dir=$src/tinystories-656k
    if [ ! -r "$dir/config.json" ] || [ ! -r "$dir/calib.tok" ] || [ ! -r "$dir/dev.tok" ]; then
        echo "skipped: $dir is absent (see ../shared/models/README.md)"
        exit 77
    fi
    model=(--model "$dir")
    calib=$dir/calib.tok
    eval=$dir/dev.tok
    methods="rtn duquant"
fi

# Round trips.
for m in $methods; do
    # Blocks chosen in every block, as duquant-eval chooses them.
    if ! "$quantize" "${model[@]}" --calib "$calib" --method "$m" --out "$tmp/$m.dq" \
        --block-choice each 2>"$tmp/q.err"; then
        echo "FAILED: duquant-quantize --method $m:"
        cat "$tmp/q.err"
        fail=1
        continue
    fi
    grep -q "peak RSS" "$tmp/q.err" || { echo "FAILED: no stage times"; fail=1; }
    run_model=(--model "$tmp/$m.dq")
    [ "$mode" = llama2c ] && run_model+=(--tokenizer "$src/tok512.bin")
    got=$("$run" "${run_model[@]}" --eval "$eval" --format tsv --matrices float |
        tail -n 1 | cut -f 2)
    want=$("$engine" "${model[@]}" --calib "$calib" --eval "$eval" --methods "$m" \
        --format tsv --steps 0 2>/dev/null | tail -n 1 | cut -f 2)
    if [ -n "$got" ] && [ "$(printf '%.4f' "$got")" = "$(printf '%.4f' "$want")" ]; then
        echo "ok: $m: model file $got, in memory $want"
    else
        echo "FAILED: $m: model file '$got', in memory '$want'"
        fail=1
    fi
    if [ "$m" = duquant ]; then
        # Half-precision rotation matrices, the default: the rounding moves the perplexity a
        # little (both ways), never far, and does move it (the flag reaches the layers).
        half=$("$run" "${run_model[@]}" --eval "$eval" --format tsv | tail -n 1 | cut -f 2)
        asked=$("$run" "${run_model[@]}" --eval "$eval" --format tsv --matrices half |
            tail -n 1 | cut -f 2)
        if [ -n "$half" ] && [ "$half" = "$asked" ] && awk -v h="$half" -v f="$got" \
            'BEGIN { d = h / f - 1; exit !(h == h + 0 && h != f && d < 0.02 && d > -0.02) }'; then
            echo "ok: $m default (--matrices half): $half (float $got)"
        else
            echo "FAILED: $m default '$half', --matrices half '$asked', float '$got'"
            fail=1
        fi
    fi
    [ "$m" = rtn ] || continue
    got=$("$run" "${run_model[@]}" --eval "$eval" --format tsv --kv-bits 4 --calib "$calib"         2>/dev/null | tail -n 1 | cut -f 2)
    want=$("$engine" "${model[@]}" --calib "$calib" --eval "$eval" --methods "$m"         --format tsv --steps 0 --kv-bits 4 2>/dev/null | tail -n 1 | cut -f 2)
    if [ -n "$got" ] && [ "$(printf '%.4f' "$got")" = "$(printf '%.4f' "$want")" ]; then
        echo "ok: $m --kv-bits 4: model file $got, in memory $want"
    else
        echo "FAILED: $m --kv-bits 4: model file '$got', in memory '$want'"
        fail=1
    fi
done
# --sequential: each block calibrated on the quantized blocks' output; a finite perplexity.
if "$quantize" "${model[@]}" --calib "$calib" --method smoothquant --sequential \
    --out "$tmp/seq.dq" \
    2>"$tmp/q.err" && seq_model=("${run_model[@]}") && seq_model[1]=$tmp/seq.dq &&
    got=$("$run" "${seq_model[@]}" --eval "$eval" --format tsv | tail -n 1 | cut -f 2) &&
    awk -v p="$got" 'BEGIN { exit !(p > 1 && p < 1e6) }'; then
    echo "ok: smoothquant --sequential: $got"
else
    echo "FAILED: smoothquant --sequential"
    cat "$tmp/q.err"
    fail=1
fi
out=$("$run" "${run_model[@]}" --prompt "Once upon a time" --steps 8)
case "$out" in
"Once upon a time"?*) echo "ok: generation: $out" ;;
*) echo "FAILED: generation: '$out'"; fail=1 ;;
esac
# The float folder's greedy continuation is the one the models README gives.
if [ "$mode" = hf ]; then
    para=$(awk '/^Greedy continuation/ { p = 1 } p && /^$/ { exit } p' "$src/README.md" |
        tr '\n' ' ')
    prompt=$(sed -n 's/.*BOS + "\([^"]*\)".*/\1/p' <<<"$para")
    expected=$(sed -n 's/.*begins: "\([^"]*\)".*/\1/p' <<<"$para")
    out=$("$run" "${model[@]}" --prompt "${prompt:-?}" --steps 48 | tr '\n' ' ')
    if [ -n "$expected" ] && [ "${out#"$expected"}" != "$out" ]; then
        echo "ok: generation from the folder: $out"
    else
        echo "FAILED: generation from the folder: '$out', expected to begin with '$expected'"
        fail=1
    fi
fi

# numpy alone reads it (examples/python/model_file.py; Debian's python3 has numpy).
py=/usr/bin/python3
reader=$(dirname "$0")/../python/model_file.py
if [ -x "$py" ] && "$py" -c 'import numpy' 2>/dev/null; then
    for m in $methods; do
        if "$py" "$reader" "$tmp/$m.dq" --check >"$tmp/py.out" 2>&1; then
            echo "ok: numpy: $(tail -n 1 "$tmp/py.out")"
        else
            echo "FAILED: numpy reader on $m.dq:"
            tail -n 5 "$tmp/py.out"
            fail=1
        fi
    done
fi

# The tokenizer in the file: the stories of dev.txt as the Hugging Face tokenizer splits them.
if [ "$mode" = hf ] && [ -r "$src/../data/dev.txt" ]; then
    if "$run" --model "$tmp/rtn.dq" --tokenize "$src/../data/dev.txt" --out "$tmp/dev.tok" \
        2>/dev/null && cmp -s "$tmp/dev.tok" "$eval"; then
        echo "ok: --tokenize dev.txt gives dev.tok"
    else
        echo "FAILED: --tokenize dev.txt differs from $eval"
        fail=1
    fi
fi

# Bad inputs: non-zero exit, a message naming WORD, no output left, an existing one untouched.
printf 'old' >"$tmp/keep.dq"
: >"$tmp/empty.txt"
: >"$tmp/empty.tok"
expect_fail() { # expect_fail WORD PROGRAM ARGS...
    local word=$1
    shift
    rm -f "$tmp/new.dq"
    if "$@" >"$tmp/out" 2>&1; then
        echo "FAILED: accepted: $*"
        fail=1
        return
    fi
    if ! grep -qF -- "$word" "$tmp/out"; then
        echo "FAILED: message does not name '$word': $(cat "$tmp/out")"
        fail=1
    elif [ -e "$tmp/new.dq" ] || [ "$(cat "$tmp/keep.dq")" != old ] ||
        ls -A "$tmp" | grep -q '\.tmp$'; then
        echo "FAILED: an output file was left or changed: $*"
        fail=1
    else
        echo "ok: rejected: $(tail -n 1 "$tmp/out")"
    fi
}
q_args=(--calib "$calib" --method rtn)
expect_fail "$tmp/nope" "$quantize" --model "$tmp/nope" "${q_args[@]}" --out "$tmp/new.dq"
expect_fail "$tmp/nope" "$quantize" --model "$tmp/nope" "${q_args[@]}" --out "$tmp/keep.dq"
expect_fail "empty.txt" "$quantize" "${model[@]}" --calib "$tmp/empty.txt" --method rtn \
    --out "$tmp/keep.dq"
expect_fail "empty.tok" "$quantize" "${model[@]}" --calib "$tmp/empty.tok" --method rtn \
    --out "$tmp/new.dq"
expect_fail "nosuch" "$quantize" "${model[@]}" --calib "$calib" --method nosuch \
    --out "$tmp/keep.dq"
expect_fail "fp32" "$quantize" "${model[@]}" --calib "$calib" --method fp32 --out "$tmp/new.dq"
expect_fail "--groups 32" "$quantize" "${model[@]}" --calib "$calib" --method rtn --groups 32 \
    --out "$tmp/new.dq"
for v in 0 1.5 0.01,0.01 x; do
    expect_fail "--gptq-damp-grid: bad value '$v'" "$quantize" "${model[@]}" --calib "$calib" \
        --method gptq --gptq-damp-grid "$v" --out "$tmp/new.dq"
done
expect_fail "$tmp/no/dir" "$quantize" "${model[@]}" "${q_args[@]}" --out "$tmp/no/dir/x.dq"
expect_fail "--out" "$quantize" "${model[@]}" "${q_args[@]}"
# duquant-run: a missing or truncated model file, an empty evaluation text.
head -c 2000 "$tmp/rtn.dq" >"$tmp/cut.dq"
expect_fail "$tmp/nope.dq" "$run" --model "$tmp/nope.dq" --eval "$eval"
expect_fail "$tmp/cut.dq" "$run" --model "$tmp/cut.dq" --eval "$eval"
expect_fail "empty.tok" "$run" "${run_model[@]}" --eval "$tmp/empty.tok"
expect_fail "--eval" "$run" "${run_model[@]}"
expect_fail "--kv-bits: bad value '3'" "$run" "${run_model[@]}" --eval "$eval" --kv-bits 3
expect_fail "--kv-bits: bad value '32'" "$run" "${run_model[@]}" --eval "$eval" --kv-bits 32
expect_fail "--kv-bits: bad value 'four'" "$run" "${run_model[@]}" --eval "$eval" --kv-bits four
expect_fail "--qk-bits: bad value '8'" "$run" "${run_model[@]}" --eval "$eval" --qk-bits 8
expect_fail "--matrices: bad value 'double'" "$run" "${run_model[@]}" --eval "$eval" \
    --matrices double
expect_fail "--calib" "$run" "${run_model[@]}" --eval "$eval" --calib "$calib" --kv-bits 16
exit $fail
