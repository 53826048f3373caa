#!/bin/sh
# hf-tokenize: rejected arguments and files leave no output behind (an existing output stays
# untouched); with ../shared present, the 656k model's token files are reproduced byte for byte.
# Usage: hf-tokenize-cli.sh HF_TOKENIZE SHARED_DIR FIXTURES_DIR
set -u
tool=$1
shared=$2
fixtures=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
printf 'Once upon a time.\n<|endoftext|>\nThe end.\n' >"$tmp/text.txt"
: >"$tmp/empty.txt"
expect_fail() {
    if "$tool" "$@" >"$tmp/log" 2>&1; then
        echo "FAILED: accepted: $*"
        fail=1
    else
        echo "ok: rejected ($*): $(head -n 1 "$tmp/log")"
    fi
}
expect_fail
expect_fail --no-such-option 1
expect_fail --tokenizer "$fixtures/valid.json" --text "$tmp/text.txt"
expect_fail --tokenizer "$fixtures/valid.json" --text "$tmp/text.txt" --out
for bad in missing_model unknown_model bad_normalizer malformed truncated; do
    expect_fail --tokenizer "$fixtures/$bad.json" --text "$tmp/text.txt" --out "$tmp/bad.tok"
    if ! grep -q "$fixtures/$bad.json" "$tmp/log"; then
        echo "FAILED: the message does not name $fixtures/$bad.json"
        fail=1
    fi
done
expect_fail --tokenizer "$fixtures/valid.json" --text "$tmp/missing.txt" --out "$tmp/bad.tok"
expect_fail --tokenizer "$fixtures/valid.json" --text "$tmp/empty.txt" --out "$tmp/bad.tok"
expect_fail --tokenizer "$fixtures/valid.json" --text "$tmp/text.txt" --out "$tmp/no/such/dir.tok"
if [ -e "$tmp/bad.tok" ] || [ -n "$(ls "$tmp" | grep 'bad.tok')" ]; then
    echo "FAILED: a rejected run left an output file"
    fail=1
fi
printf 'keep' >"$tmp/keep.tok"
expect_fail --tokenizer "$fixtures/unknown_model.json" --text "$tmp/text.txt" --out "$tmp/keep.tok"
if [ "$(cat "$tmp/keep.tok")" != keep ]; then
    echo "FAILED: an existing output was changed by a rejected run"
    fail=1
fi
# Two stories of the fixture tokenizer: 4 bytes per id, BOS (1) first in each.
if "$tool" --tokenizer "$fixtures/valid.json" --text "$tmp/text.txt" --out "$tmp/ok.tok" \
        2>"$tmp/log"; then
    echo "ok: $(cat "$tmp/log")"
    first=$(od -An -tu4 -N4 "$tmp/ok.tok" | tr -d ' ')
    if [ "$first" != 1 ]; then
        echo "FAILED: the first id is $first, not BOS 1"
        fail=1
    fi
else
    echo "FAILED: $(cat "$tmp/log")"
    fail=1
fi

model=$shared/models/tinystories-656k
if [ ! -f "$model/tokenizer.json" ]; then
    echo "SKIP: $model/tokenizer.json is absent (checkpoints live in ../shared/models)"
    [ $fail -eq 0 ] && exit 77
    exit 1
fi
for name in calib dev; do
    if "$tool" --tokenizer "$model/tokenizer.json" --text "$shared/data/$name.txt" \
            --out "$tmp/$name.tok" 2>"$tmp/log" && cmp "$tmp/$name.tok" "$model/$name.tok"; then
        echo "ok: $name.tok reproduced: $(cat "$tmp/log")"
    else
        echo "FAILED: $name.tok differs: $(cat "$tmp/log")"
        fail=1
    fi
done
exit $fail
