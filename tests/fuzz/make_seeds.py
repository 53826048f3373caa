#!/usr/bin/env python3
"""Writes the starting seeds of the numeric and differential fuzz targets.

Each seed is a header naming the stages and shapes, then bytes from a fixed generator for the
choices that follow (see fuzz_numeric.c and fuzz_diff.c for the byte order). The seeds cover
every stage (rotations, rotations from matrices, plans, packing, layers and groups, files;
quantizer and products, fused transform) with every value style and small, odd and empty
shapes. The committed corpora (corpus-numeric/, corpus-diff/) are these seeds after a short fuzz
run, minimised with -merge=1 (doc/fuzzing.md).
Usage: make_seeds.py OUT_NUMERIC OUT_DIFF
"""
import os
import random
import sys

STYLES = 6


def write(folder, name, data):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(bytes(data))


def main():
    out_numeric, out_diff = sys.argv[1], sys.argv[2]
    os.makedirs(out_numeric, exist_ok=True)
    os.makedirs(out_diff, exist_ok=True)
    rng = random.Random(15)
    # numeric: seed(4) steps rows cols outs style ldx-pad, then choices
    stage_sets = [1, 2, 4, 8, 16, 4 | 8, 4 | 8 | 16, 8 | 16, 1 | 2 | 4 | 8 | 16, 1 | 16]
    dims = [(0x02, 0x0D, 0x04), (0x01, 0x09, 0x01), (0x40, 0x80, 0x60), (0x0F, 0x0F, 0x0F),
            (0x03, 0x07, 0x05)]
    n = 0
    for steps in stage_sets:
        for style in range(STYLES):
            rows, cols, outs = dims[(steps + style) % len(dims)]
            head = [rng.randrange(256) for _ in range(4)] + [steps, rows, cols, outs, style,
                                                               rng.randrange(3)]
            tail = [rng.randrange(256) for _ in range(120)]
            write(out_numeric, "seed-%03d" % n, head + tail)
            n += 1
    # diff: seed(4) what style, then dims and choices
    n = 0
    for what in (0, 1):
        for style in range(STYLES - 1):
            for k in range(4):
                head = [rng.randrange(256) for _ in range(4)] + [what, style]
                dims = [rng.choice([0x01, 0x07, 0x0A, 0x0D, 0x50, 0x90]) for _ in range(3)]
                tail = [rng.randrange(256) for _ in range(80)]
                write(out_diff, "seed-%03d" % n, head + dims + tail)
                n += 1


if __name__ == "__main__":
    main()
