#!/usr/bin/python3
"""Compares a sharded model folder (duquant-quantize over MPI ranks) with the single model file
of the same run, tensor by tensor and byte for byte, with nothing but json and struct.

    compare_shards.py SINGLE.dq DIR
    compare_shards.py SINGLE.dq OTHER.dq   (two single files: OTHER as a folder of one shard)

Checks that the index (DIR/model.dq.index.json) names every tensor of the single file and
nothing else, that each tensor is in the shard the index names, with the same dtype, shape and
data bytes, and that every metadata pair of the single file is in the shards with the same
value (a pair that more than one shard holds: the same value in each). Keys that record the run
itself are not compared: `__hash__` (each file's header checksum) and `shard.*`. Prints the
first difference and exits 1; exits 0 when everything matches.
"""
import json
import os
import struct
import sys

RUN_KEYS = ("__hash__",)
RUN_PREFIXES = ("shard.",)


def read_header(path):
    """(metadata, {name: (dtype, shape, begin, end)}, data start) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    meta = header.pop("__metadata__", {})
    tensors = {k: (v["dtype"], tuple(v["shape"]), v["data_offsets"][0], v["data_offsets"][1])
               for k, v in header.items()}
    return meta, tensors, 8 + n


def tensor_bytes(path, base, t):
    with open(path, "rb") as f:
        f.seek(base + t[2])
        return f.read(t[3] - t[2])


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def is_run_key(k):
    return k in RUN_KEYS or k.startswith(RUN_PREFIXES)


def compare(single, folder):
    smeta, stensors, sbase = read_header(single)
    if os.path.isfile(folder):
        shard = os.path.basename(folder)
        wmap = {name: shard for name in read_header(folder)[1]}
        folder = os.path.dirname(folder) or "."
    else:
        with open(os.path.join(folder, "model.dq.index.json")) as f:
            wmap = json.load(f)["weight_map"]
    missing = sorted(set(stensors) - set(wmap))
    if missing:
        return "tensor %s of %s: not in the index" % (missing[0], single)
    extra = sorted(set(wmap) - set(stensors))
    if extra:
        return "tensor %s of the index: not in %s" % (extra[0], single)
    shards = {}
    for name in sorted(set(wmap.values())):
        path = os.path.join(folder, name)
        shards[name] = (path,) + read_header(path)
    # Metadata: every pair of the single file, in the shards, with the same value.
    seen = {}
    for name, (path, meta, _, _) in sorted(shards.items()):
        for k, v in meta.items():
            if is_run_key(k):
                continue
            if k not in smeta:
                return "metadata %s of %s: not in %s" % (k, path, single)
            if v != smeta[k]:
                return "metadata %s: %r in %s, %r in %s" % (k, v[:80], path, smeta[k][:80],
                                                            single)
            seen[k] = True
    for k in smeta:
        if not is_run_key(k) and k not in seen:
            return "metadata %s of %s: in no shard" % (k, single)
    # Tensors: each where the index says, same dtype, shape and bytes.
    for name in stensors:  # the single file's order
        shard = wmap[name]
        path, _, tensors, base = shards[shard]
        if name not in tensors:
            return "tensor %s: the index names %s, which does not hold it" % (name, shard)
        st, t = stensors[name], tensors[name]
        if st[:2] != t[:2]:
            return "tensor %s: %s %s in %s, %s %s in %s" % (name, t[0], t[1], path, st[0],
                                                           st[1], single)
        a, b = tensor_bytes(single, sbase, st), tensor_bytes(path, base, t)
        if a != b:
            return "tensor %s: first different byte at %d of %d (%s vs %s)" % (
                name, first_diff(a, b), len(a), path, single)
    for name, (path, _, tensors, _) in shards.items():
        for t in tensors:
            if wmap.get(t) != name:
                return "tensor %s: in %s, the index names %s" % (t, path, wmap.get(t))
    return None


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    diff = compare(sys.argv[1], sys.argv[2])
    if diff:
        print("DIFFERENT: " + diff)
        return 1
    if os.path.isfile(sys.argv[2]):
        n = len(read_header(sys.argv[2])[1])
    else:
        n = len(json.load(open(os.path.join(sys.argv[2], "model.dq.index.json")))["weight_map"])
    print("identical: %d tensors and the metadata of %s in %s" % (n, sys.argv[1], sys.argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
