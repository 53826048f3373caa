#!/usr/bin/python3
"""Reads the golden files with nothing but json and numpy, as any Python tool would."""
import json
import struct
import sys

try:
    import numpy as np
except ImportError:
    print("numpy not available: skipped")
    sys.exit(77)

DTYPES = {"F32": "<f4", "I64": "<i8", "U8": "u1"}


def read(path):
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
    return meta, tensors


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
    print("all checks passed" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
