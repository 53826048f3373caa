#!/bin/bash
# duquant-quantize over MPI ranks against the single process: the shards of 2 and 3 ranks hold
# the single file's tensors byte for byte (compare_shards.py), as does one process on 3 threads,
# and duquant-run reads the same perplexity from the folder as from the file; or (fail) a rank
# that fails or is killed ends the job non-zero, naming the rank, with no index left in the
# folder, and duquant-run refuses a folder whose index names a missing shard.
# usage: mpi-pipeline.sh QUANTIZE RUN MPIRUN PYTHON SHARED_DIR SYNTH_SCRIPT 656k|synth|fail
set -euo pipefail
quantize=$1
run=$2
mpirun=$3
python=$4
shared=$5
synth=$6
mode=$7
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
m656=$shared/models/tinystories-656k
if [ ! -r "$m656/config.json" ] || [ ! -r "$m656/calib.tok" ] || [ ! -r "$m656/dev.tok" ]; then
    echo "skipped: $m656 is absent (see ../shared/models/README.md)"
    exit 77
fi
# root in a container, and more ranks than this machine's cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi=("$mpirun" --oversubscribe)
calib=(--calib "$m656/calib.tok" --tokens 384 --threads 1)
fail=0

# quantize NAME MODEL METHOD [OPTIONS...]: the single file, then 2 and 3 ranks, compared.
compare() {
    local name=$1 model=$2 method=$3
    shift 3
    if ! "$quantize" --model "$model" "${calib[@]}" --method "$method" "$@" \
        --out "$tmp/$name.dq" 2>"$tmp/single.err"; then
        echo "FAILED: $name: single process:"; cat "$tmp/single.err"; fail=1; return
    fi
    # One process on 3 threads judges block candidates three at a time: the same file.
    if ! "$quantize" --model "$model" "${calib[@]}" --threads 3 --method "$method" "$@" \
        --out "$tmp/$name-t3.dq" 2>"$tmp/single.err"; then
        echo "FAILED: $name: single process, 3 threads:"; cat "$tmp/single.err"; fail=1; return
    fi
    if ! "$python" "$(dirname "$0")/compare_shards.py" "$tmp/$name.dq" "$tmp/$name-t3.dq"; then
        echo "FAILED: $name: 3 threads: tensors differ from 1 thread"; fail=1
    fi
    local want
    want=$("$run" --model "$tmp/$name.dq" --eval "$m656/dev.tok" --format tsv | tail -n 1 |
        cut -f 2)
    for np in 2 3; do
        local dir=$tmp/$name-$np
        mkdir -p "$dir"
        if ! "${mpi[@]}" -np $np "$quantize" --model "$model" "${calib[@]}" --method "$method" \
            "$@" --out "$dir/" 2>"$tmp/mpi.err"; then
            echo "FAILED: $name: $np ranks:"; cat "$tmp/mpi.err"; fail=1; continue
        fi
        grep -E "^rank [0-9]+ of $np: .* sent [0-9]+ bytes .* peak RSS" "$tmp/mpi.err" |
            sed 's/; stages.*//'
        if ! "$python" "$(dirname "$0")/compare_shards.py" "$tmp/$name.dq" "$dir"; then
            echo "FAILED: $name: $np ranks: shards differ from the single file"; fail=1
        fi
        local got
        got=$("$run" --model "$dir" --eval "$m656/dev.tok" --format tsv | tail -n 1 | cut -f 2)
        if [ -n "$got" ] && [ "$got" = "$want" ]; then
            echo "ok: $name: $np ranks: perplexity $got from the shards, $want from the file"
        else
            echo "FAILED: $name: $np ranks: perplexity '$got' from the shards, '$want' from the file"
            fail=1
        fi
    done
}

case $mode in
656k)
    # 2 blocks: with 3 ranks the last owns none.
    compare 656k-duquant "$m656" duquant
    compare 656k-rtn-seq "$m656" rtn --sequential
    ;;
synth)
    if ! "$python" -c 'import numpy' 2>/dev/null; then
        echo "skipped: numpy is absent (the synthetic checkpoint's writer needs it)"
        exit 77
    fi
    # 5 blocks of a LLaMA-shaped checkpoint in 5 BF16 shards: more blocks than ranks.
    "$python" "$synth" --out "$tmp/synth" --layers 5 --hidden 64 --intermediate 160 --heads 4 \
        --kv-heads 2 --vocab 2048 --shard-size 200KB --tokenizer-dir "$m656" >/dev/null
    compare synth-duquant "$tmp/synth" duquant
    compare synth-duquant-seq "$tmp/synth" duquant --sequential
    compare synth-each "$tmp/synth" hadamard --block-choice each
    ;;
fail)
    for how in error kill; do
        dir=$tmp/fail-$how
        mkdir -p "$dir"
        # An index left by an earlier run must go: the shards it names are being replaced.
        echo '{"weight_map": {}}' >"$dir/model.dq.index.json"
        if DUQUANT_QUANTIZE_FAIL="1:$how" "${mpi[@]}" -x DUQUANT_QUANTIZE_FAIL -np 2 \
            "$quantize" --model "$m656" "${calib[@]}" --method rtn --out "$dir/" \
            >"$tmp/fail.out" 2>&1; then
            echo "FAILED: $how: rank 1 failed, the job exited 0"; fail=1
        fi
        if [ -e "$dir/model.dq.index.json" ]; then
            echo "FAILED: $how: an index is in the folder"; fail=1
        fi
        want="rank 1 of 2 failed: injected failure"
        [ $how = kill ] && want="killing itself"
        if grep -q "$want" "$tmp/fail.out"; then
            echo "ok: $how: non-zero exit, '$want' printed, no index"
        else
            echo "FAILED: $how: no '$want' in:"; cat "$tmp/fail.out"; fail=1
        fi
    done
    # A bad input on every rank (a missing calibration file) fails before any shard.
    if "${mpi[@]}" -np 2 "$quantize" --model "$m656" --calib "$tmp/none.tok" --method rtn \
        --out "$tmp/" >"$tmp/fail.out" 2>&1; then
        echo "FAILED: missing calibration file: the job exited 0"; fail=1
    elif grep -q "rank 0 of 2 failed" "$tmp/fail.out" && ! ls "$tmp"/model-* >/dev/null 2>&1
    then
        echo "ok: missing calibration file: rank 0 named, no shard"
    else
        echo "FAILED: missing calibration file:"; cat "$tmp/fail.out"; fail=1
    fi
    # A folder whose index names a shard that is gone is not a model for duquant-run.
    mkdir -p "$tmp/gone"
    "${mpi[@]}" -np 2 "$quantize" --model "$m656" "${calib[@]}" --method rtn --out "$tmp/gone/" \
        2>/dev/null
    rm "$tmp/gone/model-00002-of-00002.dq.safetensors"
    if "$run" --model "$tmp/gone" --eval "$m656/dev.tok" >"$tmp/fail.out" 2>&1; then
        echo "FAILED: duquant-run read a folder with a shard missing"; fail=1
    elif grep -q "model-00002-of-00002.dq.safetensors" "$tmp/fail.out"; then
        echo "ok: a missing shard: duquant-run names it and exits non-zero"
    else
        echo "FAILED: a missing shard: no message naming it:"; cat "$tmp/fail.out"; fail=1
    fi
    ;;
*)
    echo "unknown mode $mode"; exit 2 ;;
esac
exit $fail
