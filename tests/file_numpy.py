#!/usr/bin/python3
"""Reads the golden files with nothing but json and numpy, as any Python tool would, and
recomputes the checksums of the version-3 files from their definition in doc/formats.md."""
import json
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("numpy not available: skipped")
    sys.exit(77)

DTYPES = {"F32": "<f4", "I64": "<i8", "U8": "u1"}


def read(path, with_header=False):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    meta = header.pop("__metadata__")
    tensors = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        tensors[name] = arr
    if with_header:
        return meta, tensors, header, data
    return meta, tensors


# The checksums of format version 3, from their definition in doc/formats.md alone.
MASK = (1 << 64) - 1
M, A, B = 0x9c2b9d9f2ae75e2f, 0x82ff349d4f876aa3, 0xe06c85afbaec4ef7
F0, F1 = 0xe7158a8021f64545, 0xbc95ad20819ed6b7
LANES = (0xbc7ba9e38be9794d, 0xcd317c68022dd18d, 0x8eca73657965c0ff, 0x5a1f3c2b9d0e4871)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & MASK


def fin(x):
    x ^= x >> 31
    x = x * F0 & MASK
    x ^= x >> 29
    x = x * F1 & MASK
    return x ^ (x >> 32)


def dq_hash(seed, b):
    word = lambda o: int.from_bytes(b[o:o + 8], "little")
    v = [(seed + l) & MASK for l in LANES]
    full = len(b) // 32 * 32
    for o in range(0, full, 32):
        for i in range(4):
            v[i] = rotl(v[i] ^ (word(o + 8 * i) * M & MASK), 29) * A & MASK
    h = seed ^ (len(b) * B & MASK)
    for i in range(4):
        h = rotl(h ^ fin(v[i]), 27) * B & MASK
    o = full
    while len(b) - o >= 8:
        h = rotl(h ^ (word(o) * M & MASK), 31) * A & MASK
        o += 8
    if o < len(b):
        h = rotl(h ^ (word(o) * M & MASK), 23) * B & MASK
    return fin(h)


def s0(text):
    return text.encode("utf-8") + b"\0"


def u64(v):
    return struct.pack("<Q", v)


def tensor_head(name, info):
    out = s0(name) + s0(info["dtype"]) + u64(len(info["shape"]))
    return out + b"".join(u64(d) for d in info["shape"])


def check_checksums(meta, header, data):
    ok = True
    for name, info in header.items():
        b, e = info["data_offsets"]
        got = dq_hash(0x4451544e53523031, tensor_head(name, info) + data[b:e])
        ok &= got == int(meta["__hash__." + name], 16)
    keys = sorted((k for k in meta if k != "__hash__"), key=lambda k: k.encode("utf-8"))
    h = b"".join(s0(k) + s0(meta[k]) for k in keys) + u64(len(keys))
    for name in sorted(header, key=lambda k: k.encode("utf-8")):
        h += tensor_head(name, header[name]) + u64(header[name]["data_offsets"][0])
        h += u64(header[name]["data_offsets"][1])
    h += u64(len(header))
    return ok and dq_hash(0x4451484541443031, h) == int(meta["__hash__"], 16)


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    return cond


def main(data_dir):
    ok = True
    meta, t = read(data_dir + "/plan_v1.safetensors")
    ok &= check(meta["format"] == "duquant" and meta["format_version"] == "1", "format metadata")
    p = "layers.0.attn_in"
    ok &= check(meta[p + ".type"] == "plan" and meta[p + ".cols"] == "12", "plan metadata")
    smooth = t[p + ".smooth"]
    ok &= check(np.array_equal(smooth, 1 + np.arange(12, dtype=np.float32) / 8), "smooth scales")
    perm = t[p + ".perm0"]
    ok &= check(sorted(perm.tolist()) == list(range(12)) and perm[0] == 3, "permutation")
    h4 = t[p + ".rot0.m0"]
    ok &= check(h4.shape == (4, 4) and np.allclose(h4 @ h4.T, np.eye(4), atol=1e-6),
                "rotation block is orthogonal")
    ok &= check(np.allclose(np.abs(t[p + ".rot1.m0"]), 1 / np.sqrt(8)), "Hadamard 8 entries")

    meta, t = read(data_dir + "/layer_v1.safetensors")
    ok &= check(meta["model"] == "golden" and meta["l0.w.bits"] == "4", "layer metadata")
    ok &= check(np.array_equal(t["l0.bias"], np.array([0.5, -0.25, 2.0], np.float32)), "bias")
    packed, scales, zeros = t["l0.w.packed"], t["l0.w.scales"], t["l0.w.zeros"]
    ok &= check(packed.shape == (3, 3) and scales.shape == (3, 3), "packed and scale shapes")
    # Dequantize with numpy: element 2k in the low nibble of byte k, groups of 2.
    codes = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(3, 6)[:, :5].astype(np.float32)
    g = np.arange(5) // 2
    deq = (codes - zeros[:, g]) * scales[:, g]
    ok &= check(np.array_equal(deq.astype(np.float32), t["check.l0.w.dequantized"]),
                "numpy dequantization equals the library's")
    for name in ("plan_v3.safetensors", "layer_v3.safetensors"):
        meta, t, header, data = read(data_dir + "/" + name, with_header=True)
        ok &= check(meta["format_version"] == "3" and check_checksums(meta, header, data),
                    name + ": checksums recomputed from doc/formats.md")
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 0x10
        ok &= check(not check_checksums(meta, header, bytes(changed)),
                    name + ": a flipped data bit fails them")
    print("all checks passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
