#!/bin/bash
# The comparison program on a Hugging Face folder: --model DIR, no --tokenizer; text files
# through the folder's tokenizer.json give the figures of the token files made from them; the
# FP32 greedy sample, encoded and decoded with tokenizer.json, begins as MODELS/README.md says;
# bad folders and misuse exit non-zero with a message naming the file and the field.
# usage: hf-cli.sh ENGINE MODELS_DIR TOKENIZER_FIXTURES_DIR
set -euo pipefail
engine=$1
models=$2
fixtures=$3
dir=$models/tinystories-656k
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
expect_fail() { # expect_fail WORD... -- ARGS: rejected, and the message names every WORD
    local words=()
    while [ "$1" != "--" ]; do words+=("$1"); shift; done
    shift
    if "$engine" "$@" >"$tmp/out" 2>&1; then
        echo "FAILED: accepted: $*"
        fail=1
        return
    fi
    for w in "${words[@]}"; do
        if ! grep -qF -- "$w" "$tmp/out"; then
            echo "FAILED: message does not name '$w': $(tail -n 1 "$tmp/out")"
            fail=1
            return
        fi
    done
    echo "ok: rejected: $(tail -n 1 "$tmp/out")"
}
mkdir "$tmp/gpt2"
printf '{"model_type": "gpt2", "hidden_size": 8}\n' >"$tmp/gpt2/config.json"
expect_fail "$tmp/gpt2/config.json" model_type -- --model "$tmp/gpt2" --methods fp32 --steps 0
if [ ! -r "$dir/config.json" ] || [ ! -r "$dir/dev.tok" ]; then
    echo "skipped: $dir is absent"
    exit 77
fi
expect_fail "--tokenizer" -- --model "$dir" --tokenizer "$dir/tokenizer.json" \
    --eval "$dir/dev.tok" --methods fp32
printf 'abc' >"$tmp/odd.tok"
expect_fail "$tmp/odd.tok" -- --model "$dir" --eval "$tmp/odd.tok" --methods fp32

out=$("$engine" --model "$dir" --eval "$dir/dev.tok" --methods fp32 --format tsv 2>"$tmp/err")
if [ "$(tail -n 1 <<<"$out" | cut -f 1,2)" = "$(printf 'fp32\t16.995805')" ]; then
    echo "ok: $(tail -n 1 <<<"$out")"
else
    echo "FAILED: FP32 perplexity of $dir on dev.tok, expected 16.995805:"
    echo "$out"
    cat "$tmp/err"
    fail=1
fi

# dev.tok and calib.tok are dev.txt and calib.txt as tokenizer.json encodes them (the models
# README): the same perplexities from either, smoothing calibrated on each.
texts=$models/../data
if [ -r "$texts/dev.txt" ] && [ -r "$texts/calib.txt" ] && [ -r "$dir/calib.tok" ]; then
    same=(--methods fp32,smoothquant --max-windows 8 --calib-tokens 2048 --format tsv --steps 0)
    from_tok=$("$engine" --model "$dir" --eval "$dir/dev.tok" --calib "$dir/calib.tok" \
        "${same[@]}" 2>"$tmp/err" | cut -f 1,2) || true
    if [ -z "$from_tok" ] && grep -q DQ_ERR_UNSUPPORTED "$tmp/err"; then
        # A library built without calibration (-Dcalibration=disabled): FP32 only.
        echo "note: calibration is not built in; text and token files compared on fp32 only"
        same=(--methods fp32 --max-windows 8 --format tsv --steps 0)
        from_tok=$("$engine" --model "$dir" --eval "$dir/dev.tok" "${same[@]}" 2>"$tmp/err" |
            cut -f 1,2) || true
    fi
    from_txt=$("$engine" --model "$dir" --eval "$texts/dev.txt" --calib "$texts/calib.txt" \
        "${same[@]}" 2>>"$tmp/err" | cut -f 1,2) || true
    if [ -n "$from_tok" ] && [ "$from_tok" = "$from_txt" ]; then
        echo "ok: text files and token files agree: $(tr '\n\t' '  ' <<<"$from_txt")"
    else
        echo "FAILED: text files give '$from_txt', token files '$from_tok'"
        cat "$tmp/err"
        fail=1
    fi
else
    echo "skipped: the texts of $texts are absent"
fi

# The samples and text files need tokenizer.json: missing or of an unsupported kind, it is
# named; without samples (--steps 0) perplexity on token files needs no tokenizer.
printf 'Once upon a time.\n' >"$tmp/story.txt"
for kind in missing unsupported; do
    mkdir "$tmp/$kind"
    ln -s "$dir/config.json" "$dir/model.safetensors" "$tmp/$kind/"
done
cp "$fixtures/unknown_model.json" "$tmp/unsupported/tokenizer.json"
expect_fail "$tmp/missing/tokenizer.json" "--steps 0" -- --model "$tmp/missing" \
    --eval "$dir/dev.tok" --methods fp32 --max-windows 1
expect_fail "$tmp/missing/tokenizer.json" -- --model "$tmp/missing" --eval "$tmp/story.txt" \
    --methods fp32 --steps 0
expect_fail "$tmp/unsupported/tokenizer.json" "model.type" -- --model "$tmp/unsupported" \
    --eval "$dir/dev.tok" --methods fp32 --max-windows 1
if "$engine" --model "$tmp/missing" --eval "$dir/dev.tok" --methods fp32 --max-windows 1 \
    --steps 0 >"$tmp/out" 2>&1; then
    echo "ok: no tokenizer.json needed with --steps 0"
else
    echo "FAILED: --steps 0 without tokenizer.json: $(tail -n 1 "$tmp/out")"
    fail=1
fi

# The greedy continuation the models README gives: its prompt after BOS, its opening text.
readme=$models/README.md
para=$(awk '/^Greedy continuation/ { p = 1 } p && /^$/ { exit } p' "$readme" | tr '\n' ' ')
prompt=$(sed -n 's/.*BOS + "\([^"]*\)".*/\1/p' <<<"$para")
expected=$(sed -n 's/.*begins: "\([^"]*\)".*/\1/p' <<<"$para")
if [ -z "$prompt" ] || [ -z "$expected" ]; then
    echo "FAILED: no greedy continuation found in $readme"
    fail=1
elif out=$("$engine" --model "$dir" --eval "$dir/dev.tok" --methods fp32 --max-windows 1 \
    --prompt "$prompt" 2>"$tmp/err") && grep -qF "[fp32] $expected" <<<"$out"; then
    echo "ok: $(grep -F '[fp32]' <<<"$out")"
else
    echo "FAILED: the FP32 sample of \"$prompt\" does not begin with: $expected"
    echo "$out"
    cat "$tmp/err"
    fail=1
fi
exit $fail
