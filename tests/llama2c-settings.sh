#!/bin/bash
# Settings chosen on calibration data only: every bad grid or block value is refused; the
# chosen block and clip of every linear input do not depend on the evaluation text; the
# chosen clip's layer-output error on the calibration sample is never above clip 1.0's with
# the same plan and weights, and that clip-1.0 error is the one a run fixed at clip 1.0 gets.
# usage: llama2c-settings.sh ENGINE DATA_DIR
set -euo pipefail
engine=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
quick=(--steps 0 --format tsv --max-windows 2 --calib-tokens 1024 --sample-tokens 256)
expect_fail() {
    if "$engine" "$@" >"$tmp/out" 2>&1; then
        echo "FAILED: accepted: $*"
        fail=1
    else
        echo "ok: rejected ($*): $(grep -v '^model\|^fp32\|^calibrated' "$tmp/out" | head -n 1)"
    fi
}
for v in '' , 1, ,1 1,,0.9 0 1,0 -0.5 1.5 1.0001 a 0.9x nan inf 0.9,0.9 \
         1,0.9,0.8,0.7,0.6,0.5,0.45,0.4,0.35,0.3,0.25,0.2,0.15,0.1,0.05,0.04,0.03; do
    expect_fail --act-clip-grid "$v" --methods fp32 --max-windows 1
done
for v in '' 1 0 -32 4097 x 32,x 32.5 16,,32 32,32; do
    expect_fail --block-grid "$v" --methods fp32 --max-windows 1
done
for v in 0 -1 1.5 automatic AUTO ''; do
    expect_fail --act-clip "$v" --methods fp32 --max-windows 1
done
for v in 0 1 auto1 ''; do
    expect_fail --block "$v" --methods fp32 --max-windows 1
    expect_fail --hadamard-block "$v" --methods fp32 --max-windows 1
done
expect_fail --settings 2 --methods fp32 --max-windows 1
for v in 2 -1 on ''; do
    expect_fail --full-width "$v" --methods fp32 --max-windows 1
done
for v in 2 -1 Auto ''; do
    expect_fail --dq-smooth "$v" --methods fp32 --max-windows 1
done
for v in 3 -1 on '' AUTO auto1 gptq0; do
    expect_fail --sequential "$v" --methods fp32 --max-windows 1
done
for v in '' 0 -0.01 1.5 x 0.01,,0.1 0.01,0.01 nan 0.1,; do
    expect_fail --gptq-damp-grid "$v" --methods fp32 --max-windows 1
done
for v in -1 x 1.5 ALL ''; do
    expect_fail --hessian-tokens "$v" --methods fp32 --max-windows 1
done
# A grid whose every entry is wider than every input (64 and 172 wide) fits no input.
expect_fail --block-grid 256,512 --methods duquant "${quick[@]}"
if grep -q 'no --block-grid entry fits width' "$tmp/out"; then
    echo "ok: the message names the grid and the width"
else
    echo "FAILED: no grid message: $(cat "$tmp/out")"
    fail=1
fi

# The same settings with two different evaluation texts: dev.txt, and its stories reversed
# (other windows, other tokens).
awk '/^<\|endoftext\|>$/ { n++; next } { s[n] = s[n] $0 "\n" }
     END { for (i = n; i >= 0; i--) if (s[i] != "") printf "%s<|endoftext|>\n", s[i] }' \
    "$data/dev.txt" >"$tmp/rev.txt"
settings() { # settings EVAL OUT [options]: the settings lines of a run
    local ev=$1 out=$2
    shift 2
    "$engine" --methods hadamard,duquant "${quick[@]}" --settings 1 --eval "$ev" "$@" \
        >"$out.tsv" 2>"$out.err"
    grep '^settings' "$out.err" >"$out" || true
}
settings "$data/dev.txt" "$tmp/a"
settings "$tmp/rev.txt" "$tmp/b"
n=$(wc -l <"$tmp/a")
if [ "$n" -eq 40 ] && cmp -s "$tmp/a" "$tmp/b" && ! cmp -s "$tmp/a.tsv" "$tmp/b.tsv"; then
    echo "ok: 40 inputs, the same blocks, clips and errors with both evaluation texts" \
         "(perplexities differ: $(tail -n 1 "$tmp/a.tsv" | cut -f 2) vs" \
         "$(tail -n 1 "$tmp/b.tsv" | cut -f 2))"
else
    echo "FAILED: settings differ between evaluation texts ($n lines):"
    diff "$tmp/a" "$tmp/b" || true
    fail=1
fi

# Chosen clip against clip 1.0, and clip 1.0's error against a run fixed at clip 1.0 (same
# blocks and smoothing: fixed at 32 and 64, smoothing on, so both runs build the same plans).
settings "$data/dev.txt" "$tmp/c" --block 32 --hadamard-block 64 --dq-smooth 1
settings "$data/dev.txt" "$tmp/d" --block 32 --hadamard-block 64 --dq-smooth 1 --act-clip-grid 1
awk -F'\t' '
FNR == NR { one[$2 " " $3 " " $4] = $7; next }
{
    k = $2 " " $3 " " $4
    n++
    if (!($7 + 0 > 0 && $7 + 0 <= $8 + 0)) {
        printf "FAILED: %s: clip %s error %s above clip 1.0 error %s\n", k, $6, $7, $8; bad = 1
    }
    if ($8 != one[k]) {
        printf "FAILED: %s: clip 1.0 error %s, a run at clip 1.0 gives %s\n", k, $8, one[k]
        bad = 1
    }
    if ($6 != 1) lower++
    want = $2 == "duquant" ? 32 : $4 == "w2" ? 4 : 64
    if ($5 != want) {
        printf "FAILED: %s: block %s\n", k, $5; bad = 1
    }
}
END {
    if (n != 40) { printf "FAILED: %d inputs, expected 40\n", n; bad = 1 }
    if (!bad) printf "ok: %d inputs, chosen clip never worse than 1.0 (%d below 1.0)\n", n, lower
    exit bad
}' "$tmp/d" "$tmp/c" || fail=1

# DuQuant's smoothing: fixed with --dq-smooth 1 (one setting tried, on), chosen per input
# by default (both tried on every input).
if awk -F'\t' '$2 == "duquant" && $10 !~ /, smoothing on of 1$/ { exit 1 }' "$tmp/c" &&
    awk -F'\t' '$2 == "duquant" { n++; if ($10 !~ /, smoothing (on|off) of 2$/) exit 1 }
                 $2 == "hadamard" && $10 ~ /smoothing/ { exit 1 } END { exit n != 20 }' \
        "$tmp/a"; then
    echo "ok: smoothing fixed with --dq-smooth 1, chosen per input by default (off on" \
         "$(grep -c 'smoothing off' "$tmp/a") of 20 duquant inputs)"
else
    echo "FAILED: smoothing settings:"
    cat "$tmp/a" "$tmp/c"
    fail=1
fi

# A grid without 1.0: only its values are chosen; blocks only from the block grid, and for
# duquant the full width (-64, -172) as the one other candidate; none with --full-width 0.
settings "$data/dev.txt" "$tmp/e" --act-clip-grid 0.8,0.7 --block-grid 16,64
settings "$data/dev.txt" "$tmp/e0" --act-clip-grid 0.8,0.7 --block-grid 16,64 --full-width 0
if awk -F'\t' '($6 != 0.8 && $6 != 0.7) || ($5 != 16 && $5 != 64 && $5 != 4 &&
                !($2 == "duquant" && ($5 == -64 && $4 != "w2" || $5 == -172 && $4 == "w2"))) ||
                ($2 == "duquant" && $10 !~ /^3 blocks/) { exit 1 }
               END { exit NR != 40 }' "$tmp/e" &&
    awk -F'\t' '$5 < 0 || ($2 == "duquant" && $10 !~ /^2 blocks/) { exit 1 }
                 END { exit NR != 40 }' "$tmp/e0"; then
    echo "ok: clips only from 0.8,0.7 and blocks only from 16,64 (duquant also the full" \
         "width: $(awk -F'\t' '$5 < 0' "$tmp/e" | wc -l) inputs; none with --full-width 0)"
else
    echo "FAILED: choices outside the grids:"
    cat "$tmp/e" "$tmp/e0"
    fail=1
fi

# Sequential calibration per layer or none (--sequential auto, the default) and GPTQ's
# dampening
# (--gptq-damp-grid) chosen on the held-out calibration tokens: the same choices and
# held-out figures with both evaluation texts, the lower held-out perplexity kept, the
# dampening from the grid and the first one where only it is given.
seqchoice() { # seqchoice EVAL OUT [options]
    local ev=$1 out=$2
    shift 2
    "$engine" --methods w4a16_gptq,hadamard_gptq "${quick[@]}" --settings 1 --eval "$ev" \
        "$@" >"$out.tsv" 2>"$out.err"
    grep '^settings\|held-out calibration perplexity' "$out.err" >"$out" || true
}
seqchoice "$data/dev.txt" "$tmp/s1" --gptq-damp-grid 0.01,0.1
seqchoice "$tmp/rev.txt" "$tmp/s2" --gptq-damp-grid 0.01,0.1
seqchoice "$data/dev.txt" "$tmp/s3" --gptq-damp-grid 0.03
if [ "$(grep -c 'held-out calibration perplexity' "$tmp/s1")" -eq 2 ] &&
    cmp -s "$tmp/s1" "$tmp/s2" && ! cmp -s "$tmp/s1.tsv" "$tmp/s2.tsv" &&
    awk '/held-out calibration perplexity/ {
             if (!match($0, /: per layer [0-9.]+, not sequential [0-9.]+: /)) exit 1
             split(substr($0, RSTART, RLENGTH), f, " ")
             s = f[4] + 0; ns = f[7] + 0
             want = ns < s ? "not sequential" : "per layer"
             if (!(s > 1 && ns > 1) || substr($0, RSTART + RLENGTH) != want) exit 1
             n++ }
         END { exit n != 2 }' "$tmp/s1" &&
    awk -F'\t' '/^settings/ { n++; if ($10 !~ /, damp (0.01|0.1) of 2/) exit 1 }
                END { exit n != 40 }' "$tmp/s1" &&
    awk -F'\t' '/^settings/ { n++; if ($10 !~ /, damp 0.03 of 1/) exit 1 }
                END { exit n != 40 }' "$tmp/s3"; then
    echo "ok: sequential or not and the dampenings chosen alike with both evaluation texts:" \
         "$(grep -h 'held-out' "$tmp/s1" | sed 's/ *held-out calibration perplexity//' |
            paste -sd ';'); damp 0.1 on $(grep -c 'damp 0.1 of' "$tmp/s1") of 40 inputs"
else
    echo "FAILED: sequential or dampening choice:"
    diff "$tmp/s1" "$tmp/s2" || true
    cat "$tmp/s1" "$tmp/s3"
    fail=1
fi

# Fewer calibration tokens than sample + held-out: blocks are judged on the sample, and the
# GPTQ method kept sequential per layer, each said so.
"$engine" --methods duquant,w4a16_gptq --steps 0 --max-windows 1 --calib-tokens 200 \
    --sample-tokens 256 >/dev/null 2>"$tmp/f.err" || { echo "FAILED: short calibration"; fail=1; }
if grep -q 'no held-out calibration tokens.*: block sizes judged on the calibration sample' \
        "$tmp/f.err" &&
    grep -q '^w4a16_gptq *no held-out calibration tokens.*: per layer$' "$tmp/f.err"; then
    echo "ok: without held-out tokens the program says so"
else
    echo "FAILED: no message about missing held-out tokens"
    fail=1
fi
exit $fail
