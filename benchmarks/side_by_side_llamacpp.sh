#!/bin/sh
# Prefill and decode of one model in llama.cpp (llama-bench on a Q4_0 GGUF) and in
# duquant-run --bench (a .dqm file), one run after the other on the same machine, with peak
# RSS, the load average before each run, and the ratios ours / llama.cpp.
#
#   benchmarks/side_by_side_llamacpp.sh LLAMA_BENCH MODEL.gguf DUQUANT_RUN MODEL.dqm [OUTDIR]
#
# Environment: THREADS (default "2 1"), REPS (llama-bench repetitions, default 3: duquant-run
# takes the best of 3), TIME (default /usr/bin/time, GNU time for -v), LLAMA_CPP_COMMIT
# (printed; llama-bench says "unknown" when built outside a git checkout), MATRICES
# (duquant-run --matrices: half, its default, or float). The logs of every run stay in
# OUTDIR (default: a new directory under ${TMPDIR:-/tmp}).
set -eu

if [ $# -lt 4 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
LLAMA_BENCH=$1
GGUF=$2
DUQUANT_RUN=$3
DQM=$4
OUT=${5:-$(mktemp -d "${TMPDIR:-/tmp}/side-by-side.XXXXXX")}
THREADS=${THREADS:-2 1}
REPS=${REPS:-3}
TIME=${TIME:-/usr/bin/time}
MATRICES=${MATRICES:-half}

for f in "$LLAMA_BENCH" "$DUQUANT_RUN"; do
    [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }
done
for f in "$GGUF" "$DQM"; do
    [ -r "$f" ] || { echo "not readable: $f" >&2; exit 2; }
done
"$TIME" -v true 2>&1 | grep -q 'Maximum resident' ||
    { echo "$TIME -v does not report peak RSS (GNU time needed)" >&2; exit 2; }
mkdir -p "$OUT"

cpu_field() { # the first value of a /proc/cpuinfo field
    sed -n "s/^$1[[:space:]]*: //p" /proc/cpuinfo | head -n 1
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
peak_kb() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1"; }
wall() { sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$1"; }

# llama-bench -o jsonl: one line a test; the line with n_prompt $2 and n_gen $3.
# Prints the mean and the best of the samples (tokens/s).
llama_ts() {
    grep "\"n_prompt\": $2, \"n_gen\": $3," "$1" | head -n 1 |
        sed -e 's/.*"avg_ts": \([0-9.e+-]*\).*"samples_ts": \[\([^]]*\)\].*/\1 \2/' |
        tr -d ',' |
        awk '{ best = 0; for (i = 2; i <= NF; i++) if ($i > best) best = $i;
               printf "%.2f %.2f\n", $1, best }'
}

START=$(date +%s)
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "cpu: $(cpu_field 'model name') (family $(cpu_field 'cpu family'), model $(cpu_field 'model'))," \
     "$(getconf _NPROCESSORS_ONLN) processors online"
echo "llama-bench: $LLAMA_BENCH (llama.cpp ${LLAMA_CPP_COMMIT:-commit not given})"
echo "gguf: $GGUF ($(wc -c < "$GGUF") bytes)"
echo "duquant-run: $DUQUANT_RUN"
echo "dqm: $DQM ($(wc -c < "$DQM") bytes)"
echo "threads: $THREADS; llama-bench -p 512 -n 128 -r $REPS (mean and best of the repetitions," \
     "after its warm-up run); duquant-run --bench --matrices $MATRICES (best of 3); logs in $OUT"

for t in $THREADS; do
    echo
    echo "== llama-bench, $t thread(s); load average before: $(load)"
    load > "$OUT/llama-t$t.load"
    "$TIME" -v -o "$OUT/llama-t$t.time" "$LLAMA_BENCH" -m "$GGUF" -p 512 -n 128 -t "$t" \
        -r "$REPS" -o jsonl > "$OUT/llama-t$t.jsonl" 2> "$OUT/llama-t$t.err" ||
        { cat "$OUT/llama-t$t.err" >&2; echo "llama-bench failed" >&2; exit 1; }
    echo "pp512 mean/best $(llama_ts "$OUT/llama-t$t.jsonl" 512 0) t/s," \
         "tg128 mean/best $(llama_ts "$OUT/llama-t$t.jsonl" 0 128) t/s," \
         "peak RSS $(peak_kb "$OUT/llama-t$t.time") kB, wall $(wall "$OUT/llama-t$t.time")"

    echo "== duquant-run --bench, $t thread(s); load average before: $(load)"
    load > "$OUT/duquant-t$t.load"
    "$TIME" -v -o "$OUT/duquant-t$t.time" "$DUQUANT_RUN" --model "$DQM" --bench --threads "$t" \
        --matrices "$MATRICES" \
        > "$OUT/duquant-t$t.out" 2> "$OUT/duquant-t$t.err" ||
        { cat "$OUT/duquant-t$t.err" >&2; echo "duquant-run failed" >&2; exit 1; }
    sed -n '/^model /,/^quantized /p' "$OUT/duquant-t$t.out"
    echo "peak RSS $(peak_kb "$OUT/duquant-t$t.time") kB, wall $(wall "$OUT/duquant-t$t.time")"
done

echo
echo "prefill: 512 tokens from an empty cache; decode: 128 tokens one at a time; tokens/s."
echo "ratio: duquant best / llama.cpp best (llama.cpp's mean in brackets); RSS in MB."
echo "| threads | llama.cpp pp512 best (mean) | duquant pp512 | ratio | llama.cpp tg128 best (mean) | duquant tg128 | ratio | peak RSS llama.cpp / duquant (MB) |"
echo "|---|---|---|---|---|---|---|---|"
for t in $THREADS; do
    set -- $(llama_ts "$OUT/llama-t$t.jsonl" 512 0) $(llama_ts "$OUT/llama-t$t.jsonl" 0 128) \
        $(awk '$1 == "quantized" { print $3, $4 }' "$OUT/duquant-t$t.out") \
        $(peak_kb "$OUT/llama-t$t.time") $(peak_kb "$OUT/duquant-t$t.time")
    [ $# -eq 8 ] || { echo "could not read the figures of $t thread(s) in $OUT" >&2; exit 1; }
    awk -v t="$t" -v pm="$1" -v pb="$2" -v tm="$3" -v tb="$4" -v op="$5" -v od="$6" \
        -v rl="$7" -v ro="$8" 'BEGIN {
        printf "| %s | %.2f (%.2f) | %.1f | %.2f | %.2f (%.2f) | %.1f | %.2f | %.0f / %.0f |\n",
            t, pb, pm, op, op / pb, tb, tm, od, od / tb, rl / 1024, ro / 1024 }'
done
echo "load average before each run: $(for t in $THREADS; do
    printf 'llama t%s [%s] duquant t%s [%s]; ' "$t" "$(cat "$OUT/llama-t$t.load")" \
        "$t" "$(cat "$OUT/duquant-t$t.load")"; done)"
echo "load average at the end: $(load); $(($(date +%s) - START)) s in all"
