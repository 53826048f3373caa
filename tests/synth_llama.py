#!/usr/bin/python3
"""Checks benchmarks/make_synthetic_llama.py on a tiny shape with an independent numpy reader.

Usage: synth_llama.py SCRIPT TOKENIZER_DIR
Writes a 2-layer checkpoint (hidden 64, intermediate 160, 4 heads, vocab 2048) in two BF16
shards and the same seed as one F32 file into a temporary folder, then checks the safetensors
containers (header, offsets, dtype, shapes against config.json), the index (weight_map covering
every tensor, total_size), that the BF16 tensors are the F32 ones rounded to nearest even, the
planted norm outlier channels, and, by a float64 forward pass of the two layers over the start
of a story, that BOS's down_proj input at layer 1 is massive next to the other tokens'.
Exits 77 when numpy or the tokenizer folder is absent.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

try:
    import numpy as np
except ImportError:
    print("numpy not available: skipped")
    sys.exit(77)

FAILS = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILS.append(what)
    return cond


def read_safetensors(path):
    """Returns {name: (dtype, shape, raw bytes)}, checking the container as it goes."""
    with open(path, "rb") as f:
        raw = f.read()
    if not check(len(raw) >= 8, "%s: has a length prefix" % os.path.basename(path)):
        return {}
    (n,) = struct.unpack("<Q", raw[:8])
    if not check(8 + n <= len(raw), "%s: header within the file" % os.path.basename(path)):
        return {}
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    header.pop("__metadata__", None)
    spans = sorted((v["data_offsets"][0], v["data_offsets"][1], k) for k, v in header.items())
    pos, ok = 0, True
    for b, e, name in spans:
        ok &= b == pos and e >= b
        pos = e
    check(ok and pos == len(data), "%s: %d tensors, offsets contiguous and ending at the end "
          "of the file (%d bytes)" % (os.path.basename(path), len(spans), len(data)))
    out = {}
    for name, v in header.items():
        b, e = v["data_offsets"]
        out[name] = (v["dtype"], tuple(v["shape"]), data[b:e])
    return out


def to_f32(dtype, shape, buf):
    if dtype == "BF16":
        u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32).reshape(shape)
    if dtype == "F32":
        return np.frombuffer(buf, dtype="<f4").reshape(shape)
    raise ValueError(dtype)


def bf16_round(x):
    """Nearest even, written independently of the script: through float64 and integer math."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    hi, lo = u >> 16, u & 0xFFFF
    up = (lo > 0x8000) | ((lo == 0x8000) & ((hi & 1) == 1))
    return (hi + up).astype(np.uint16)


def expected_shapes(cfg):
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    v = cfg["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,),
              "lm_head.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % n
        shapes.update({p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h),
                       p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h),
                       p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (i, h),
                       p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i)})
    return shapes


def load_folder(folder, want_dtype):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(folder, "model.safetensors.index.json")
    tensors, files = {}, {}
    if os.path.exists(index):
        with open(index) as f:
            idx = json.load(f)
        for fname in sorted(set(idx["weight_map"].values())):
            files[fname] = read_safetensors(os.path.join(folder, fname))
        covered = all(name in files[fname] for name, fname in idx["weight_map"].items())
        every = sum(len(t) for t in files.values()) == len(idx["weight_map"])
        check(covered and every, "index: weight_map names every tensor, each in its file")
        total = sum(len(v[2]) for t in files.values() for v in t.values())
        check(idx["metadata"]["total_size"] == total,
              "index: total_size %d = bytes of all tensors %d" % (idx["metadata"]["total_size"],
                                                                 total))
    else:
        files["model.safetensors"] = read_safetensors(os.path.join(folder, "model.safetensors"))
    for t in files.values():
        tensors.update(t)
    shapes = expected_shapes(cfg)
    check(set(tensors) == set(shapes), "%d tensors, exactly the Hugging Face LLaMA names"
          % len(tensors))
    check(all(tensors[k][1] == s for k, s in shapes.items() if k in tensors),
          "every shape matches config.json")
    check(all(v[0] == want_dtype for v in tensors.values()), "every tensor is %s" % want_dtype)
    return cfg, tensors, sorted(files)


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):
    """x: [T, heads, hd]; rotate_half pairs (first and second half of each head)."""
    t, _, hd = x.shape
    inv = theta ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rot * sin


def down_inputs(cfg, w, ids):
    """Float64 forward pass; returns the down_proj input of every layer ([T, intermediate])."""
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg["hidden_size"] // nh
    x = w["model.embed_tokens.weight"][ids]
    t = len(ids)
    mask = np.triu(np.full((t, t), -np.inf), 1)
    outs = []
    for n in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % n
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = rope((h @ w[p + "self_attn.q_proj.weight"].T).reshape(t, nh, hd), theta)
        k = rope((h @ w[p + "self_attn.k_proj.weight"].T).reshape(t, nkv, hd), theta)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(t, nkv, hd)
        att = np.empty((t, nh, hd))
        for head in range(nh):
            kvh = head // (nh // nkv)
            s = q[:, head] @ k[:, kvh].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            att[:, head] = (s / s.sum(-1, keepdims=True)) @ v[:, kvh]
        x = x + att.reshape(t, -1) @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        a = g / (1.0 + np.exp(-g)) * u
        outs.append(a)
        x = x + a @ w[p + "mlp.down_proj.weight"].T
    return outs, x


def run(script, args):
    r = subprocess.run([sys.executable, script] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True)
    return r.returncode, r.stderr


def main(script, tok_dir):
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        print("%s/tokenizer.json absent: skipped" % tok_dir)
        return 77
    tmp = tempfile.mkdtemp(prefix="synth_llama_")
    try:
        shape = ["--layers", "2", "--hidden", "64", "--intermediate", "160", "--heads", "4",
                 "--vocab", "2048", "--seed", "7", "--tokenizer-dir", tok_dir, "--quiet"]
        bf = os.path.join(tmp, "bf16")
        rc, err = run(script, shape + ["--out", bf, "--shard-size", "400KB"])
        check(rc == 0, "bf16 run exits 0" + ("" if rc == 0 else ": " + err))
        if rc != 0:
            return 1
        f32 = os.path.join(tmp, "f32")
        rc, err = run(script, shape + ["--out", f32, "--dtype", "f32", "--shard-size", "1GB"])
        check(rc == 0, "f32 run exits 0" + ("" if rc == 0 else ": " + err))
        if rc != 0:
            return 1
        check(not any(f.endswith(".tmp") for d in (bf, f32) for f in os.listdir(d)),
              "no temporary file left")
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            with open(os.path.join(tok_dir, f), "rb") as a, open(os.path.join(bf, f), "rb") as b:
                check(a.read() == b.read(), "%s copied unchanged" % f)

        cfg, tb, files = load_folder(bf, "BF16")
        check(len(files) == 2, "bf16: two shards %s" % files)
        check(cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama" and
              cfg["tie_word_embeddings"] is False and cfg["torch_dtype"] == "bfloat16" and
              cfg["bos_token_id"] == 1 and cfg["eos_token_id"] == 2 and
              cfg["rms_norm_eps"] == 1e-5 and cfg["rope_theta"] == 10000.0,
              "config.json: LlamaForCausalLM, llama, untied, bfloat16, bos 1, eos 2, eps 1e-5, "
              "rope_theta 10000")
        _, t32, files32 = load_folder(f32, "F32")
        check(files32 == ["model.safetensors"] and
              not os.path.exists(os.path.join(f32, "model.safetensors.index.json")),
              "f32: one model.safetensors, no index")
        same = all(np.array_equal(bf16_round(to_f32(*t32[k])).view("<u2").reshape(-1),
                                  np.frombuffer(tb[k][2], dtype="<u2")) for k in tb)
        check(same, "every BF16 tensor is the F32 one of the same seed rounded to nearest even")

        h16 = os.path.join(tmp, "f16")
        rc, err = run(script, shape + ["--out", h16, "--dtype", "f16", "--shard-size", "400KB"])
        check(rc == 0, "f16 run exits 0" + ("" if rc == 0 else ": " + err))
        if rc == 0:
            _, t16, _ = load_folder(h16, "F16")
            check(all(np.array_equal(np.frombuffer(t16[k][2], dtype="<f2").reshape(t16[k][1]),
                                     to_f32(*t32[k]).astype(np.float16)) for k in t16),
                  "every F16 tensor is the F32 one cast to float16")
            # The same folder again as one file: the shards and the index of the first run go.
            rc, err = run(script, shape + ["--out", h16, "--shard-size", "1GB"])
            left = sorted(f for f in os.listdir(h16) if f.startswith("model"))
            check(rc == 0 and left == ["model.safetensors"],
                  "rewritten as one file, the earlier shards and index are removed: %s" % left)

        w = {k: to_f32(*v).astype(np.float64) for k, v in tb.items()}
        for n in range(cfg["num_hidden_layers"]):
            for norm in ("input_layernorm", "post_attention_layernorm"):
                g = w["model.layers.%d.%s.weight" % (n, norm)]
                big = np.flatnonzero(g > 15 * np.median(g))
                ratio = g[big].min() / np.median(g) if big.size else 0
                check(4 <= big.size <= 8 and ratio >= 19,
                      "layer %d %s: %d outlier channels %s, smallest %.1fx the median"
                      % (n, norm, big.size, big.tolist(), ratio))
        g = w["model.norm.weight"]
        check(g.max() < 3 * np.median(g), "final norm: no outlier channel")

        ids = np.fromfile(os.path.join(tok_dir, "dev.tok"), dtype="<i4")[:48] \
            if os.path.exists(os.path.join(tok_dir, "dev.tok")) else \
            np.r_[1, np.random.default_rng(3).integers(3, 2048, 47)]
        check(ids[0] == 1, "token sequence starts with BOS")
        acts, final = down_inputs(cfg, w, ids)
        for n, a in enumerate(acts):
            peak = np.abs(a).max(-1)
            print("     layer %d down_proj input max|x| per token: BOS %.1f, median %.2f, "
                  "largest other %.2f" % (n, peak[0], np.median(peak[1:]), peak[1:].max()))
        peak = np.abs(acts[1]).max(-1)
        check(peak[0] > 100 and peak[0] > 20 * np.median(peak),
              "layer 1 down_proj input: BOS %.1f > 20x the median token's %.2f"
              % (peak[0], np.median(peak)))
        check(np.abs(final[0]).max() > 500 and np.isfinite(final).all(),
              "BOS residual after layer 1 carries a massive value (%.1f)" % np.abs(final[0]).max())

        rc, err = run(script, shape + ["--out", os.path.join(tmp, "bad"),
                                       "--tokenizer-dir", os.path.join(tmp, "absent")])
        check(rc != 0 and "tokenizer.json" in err and not os.path.exists(os.path.join(tmp, "bad")),
              "a missing tokenizer folder: non-zero exit naming the file, no output folder")
        rc, err = run(script, shape + ["--out", os.path.join(tmp, "bad"), "--heads", "5"])
        check(rc != 0 and "--heads" in err and not os.path.exists(os.path.join(tmp, "bad")),
              "hidden not a multiple of heads: non-zero exit naming --heads")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print("%d check(s) failed" % len(FAILS))
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.stderr.write("usage: synth_llama.py SCRIPT TOKENIZER_DIR\n")
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
