#!/bin/bash
# The comparison program on a Hugging Face folder: --model DIR with token files, no tokenizer;
# bad folders and misuse exit non-zero with a message naming the file and the field.
set -euo pipefail
engine=$1
models=$2
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
expect_fail "dev.txt" "FILE.tok" -- --model "$dir" --methods fp32 --max-windows 1
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
exit $fail
