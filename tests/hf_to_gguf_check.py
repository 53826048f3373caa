#!/usr/bin/python3
"""Checks benchmarks/hf_to_gguf.py on a tiny checkpoint with an independent GGUF reader.

Usage: hf_to_gguf_check.py CONVERTER SYNTH_SCRIPT TOKENIZER_DIR
Writes a 2-layer checkpoint with benchmarks/make_synthetic_llama.py (hidden 64, 4 heads, 2
key/value heads, vocab 2048, BF16), converts it to BF16 and F16 GGUF files, and reads them back
with the parser below (not gguf-py's): the LLaMA metadata against config.json, every tensor's
name, type and dimensions, the bits of the unpermuted matrices and norms, and the rotary
reordering of q and k through what it must preserve: the attention score of a rotated query and
key, computed with the Hugging Face rotation on the checkpoint's weights and with llama.cpp's
adjacent-pair rotation on the file's weights. Then the vocabulary: tokens by id, control types
for the special tokens, scores ordered as the merges, the special ids of tokenizer_config.json.
Needs llama.cpp's gguf-py directory in LLAMA_CPP_GGUF_PY; exits 77 without it or numpy.
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


class Reader:
    """GGUF v2/v3, little-endian: {key: value}, [(name, dims, type, bytes)]."""

    SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
               10: "<Q", 11: "<q", 12: "<d"}
    SIZES = {0: 4, 1: 2, 30: 2}  # F32, F16, BF16: bytes a value

    def __init__(self, path):
        with open(path, "rb") as f:
            self.b = f.read()
        self.pos = 0
        assert self.b[:4] == b"GGUF", "magic"
        self.pos = 4
        self.version = self.take("<I")
        n_tensors, n_kv = self.take("<Q"), self.take("<Q")
        self.kv = {}
        for _ in range(n_kv):
            key = self.string().decode("utf-8")
            self.kv[key] = self.value(self.take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self.string()
            dims = [self.take("<Q") for _ in range(self.take("<I"))]
            infos.append((name, dims, self.take("<I"), self.take("<Q")))
        align = self.kv.get("general.alignment", 32)
        base = (self.pos + align - 1) // align * align
        self.tensors = []
        for name, dims, typ, off in infos:
            n = int(np.prod(dims)) * self.SIZES[typ]
            self.tensors.append((name, dims, typ, self.b[base + off:base + off + n]))

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.b, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.b[self.pos:self.pos + n]
        self.pos += n
        return s

    def value(self, typ):
        if typ == 8:
            return self.string()
        if typ == 9:
            inner, n = self.take("<I"), self.take("<Q")
            return [self.value(inner) for _ in range(n)]
        return self.take(self.SCALARS[typ])


def safetensors(path):
    """{name: (dtype, shape, bytes)} of one file."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return {k: (v["dtype"], tuple(v["shape"]), raw[8 + n + v["data_offsets"][0]:
                                                    8 + n + v["data_offsets"][1]])
            for k, v in header.items()}


def widen(bf16_bytes, shape):
    u = np.frombuffer(bf16_bytes, dtype="<u2").astype(np.uint32) << 16
    return u.view(np.float32).reshape(shape).astype(np.float64)


def angles(pos, d, theta):
    return pos * theta ** (-np.arange(0, d, 2) / d)  # one angle a pair


def rope_hf(x, pos, theta):
    """Hugging Face LLaMA: pair (i, i + d/2)."""
    d = x.shape[-1]
    a = angles(pos, d, theta)
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)


def rope_adjacent(x, pos, theta):
    """llama.cpp's normal rope: pair (2i, 2i + 1)."""
    d = x.shape[-1]
    a = angles(pos, d, theta)
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * np.cos(a) - x[..., 1::2] * np.sin(a)
    out[..., 1::2] = x[..., 1::2] * np.cos(a) + x[..., 0::2] * np.sin(a)
    return out


def scores(wq, wk, x, n_head, n_kv, rope, theta):
    """Scores of every head's query at position 7 against its key at position 3."""
    d = wq.shape[0] // n_head
    q = (wq @ x).reshape(n_head, d)
    k = (wk @ x).reshape(n_kv, d)
    q, k = rope(q, 7, theta), rope(k, 3, theta)
    return np.array([q[h] @ k[h // (n_head // n_kv)] for h in range(n_head)])


def run(args, env=None):
    r = subprocess.run([sys.executable] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, env=env)
    if r.returncode:
        sys.stderr.write(r.stdout + r.stderr)
    return r.returncode, r.stderr


def check_file(path, ck, cfg, tj, tcfg, outtype):
    g = Reader(path)
    kv = g.kv
    tag = "%s: " % outtype
    n_layer, n_head, n_kv = cfg["num_hidden_layers"], cfg["num_attention_heads"], \
        cfg["num_key_value_heads"]
    check(g.version == 3 and kv.get("general.architecture") == b"llama", tag + "GGUF v3, llama")
    want = {"llama.block_count": n_layer, "llama.embedding_length": cfg["hidden_size"],
            "llama.feed_forward_length": cfg["intermediate_size"],
            "llama.attention.head_count": n_head, "llama.attention.head_count_kv": n_kv,
            "llama.rope.dimension_count": cfg["hidden_size"] // n_head,
            "llama.context_length": cfg["max_position_embeddings"],
            "llama.vocab_size": cfg["vocab_size"],
            "general.file_type": {"bf16": 32, "f16": 1}[outtype]}
    bad = {k: (kv.get(k), v) for k, v in want.items() if kv.get(k) != v}
    check(not bad, tag + "integer metadata as config.json %s" % (bad or ""))
    check(abs(kv.get("llama.attention.layer_norm_rms_epsilon", 0) - cfg["rms_norm_eps"]) < 1e-6 * cfg["rms_norm_eps"]
          and kv.get("llama.rope.freq_base") == cfg["rope_theta"], tag + "rms eps, rope base")

    names = {t[0].decode(): t for t in g.tensors}
    check(len(g.tensors) == 3 + 9 * n_layer, tag + "%d tensors" % len(g.tensors))
    mat_type = {"bf16": 30, "f16": 1}[outtype]
    pairs = [("model.embed_tokens.weight", "token_embd.weight"),
             ("model.norm.weight", "output_norm.weight"), ("lm_head.weight", "output.weight")]
    for i in range(n_layer):
        for hf, gg in (("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"),
                       ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                       ("self_attn.o_proj", "attn_output"),
                       ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"),
                       ("mlp.up_proj", "ffn_up"), ("mlp.down_proj", "ffn_down")):
            pairs.append(("model.layers.%d.%s.weight" % (i, hf), "blk.%d.%s.weight" % (i, gg)))
    shapes_ok, bits_ok = True, True
    for hf, gg in pairs:
        if gg not in names:
            shapes_ok = False
            continue
        _, shape, raw = ck[hf]
        _, dims, typ, data = names[gg]
        shapes_ok &= dims == list(reversed(shape)) and typ == (0 if len(shape) == 1 else mat_type)
        if gg.endswith(("attn_q.weight", "attn_k.weight")):
            continue
        src = widen(raw, shape)
        if typ == 0:
            got = np.frombuffer(data, dtype="<f4").reshape(shape)
        elif typ == 1:
            got = np.frombuffer(data, dtype="<f2").reshape(shape)
            src = src.astype(np.float16)
        else:
            got = widen(data, shape)
        bits_ok &= np.array_equal(got.astype(np.float64), src.astype(np.float64))
    check(shapes_ok, tag + "every tensor present with llama.cpp's name, reversed dimensions, "
          "F32 norms and %s matrices" % outtype.upper())
    check(bits_ok, tag + "matrices other than q/k and the norms: the checkpoint's values")

    rng = np.random.default_rng(3)
    theta = cfg["rope_theta"]
    for i in range(n_layer):
        wq = {}
        for src_name, gg, store in (("q_proj", "attn_q", "q"), ("k_proj", "attn_k", "k")):
            _, shape, raw = ck["model.layers.%d.self_attn.%s.weight" % (i, src_name)]
            data = names["blk.%d.%s.weight" % (i, gg)][3]
            got = widen(data, shape) if mat_type == 30 else \
                np.frombuffer(data, dtype="<f2").reshape(shape).astype(np.float64)
            wq[store] = (widen(raw, shape), got)
        x = rng.standard_normal(cfg["hidden_size"])
        s_hf = scores(wq["q"][0], wq["k"][0], x, n_head, n_kv, rope_hf, theta)
        s_gg = scores(wq["q"][1], wq["k"][1], x, n_head, n_kv, rope_adjacent, theta)
        tol = 1e-9 if mat_type == 30 else 2e-2
        rel = np.abs(s_hf - s_gg).max() / np.abs(s_hf).max()
        check(rel < tol, tag + "layer %d: rotated q.k scores of the %d heads as Hugging Face's "
              "(largest relative difference %.2g)" % (i, n_head, rel))
        # the same rows, reordered: the plain scores would agree without any permutation
        plain = np.abs(scores(wq["q"][1], wq["k"][1], x, n_head, n_kv, rope_hf, theta)
                       - s_hf).max() / np.abs(s_hf).max()
        check(plain > 1e-3, tag + "layer %d: the file's q/k rows are reordered (Hugging Face "
              "rotation on them differs by %.2g)" % (i, plain))

    model = tj["model"]
    by_id = {v: k for k, v in model["vocab"].items()}
    for a in tj["added_tokens"]:
        by_id[a["id"]] = a["content"]
    toks = kv.get("tokenizer.ggml.tokens", [])
    check(kv.get("tokenizer.ggml.model") == b"llama" and len(toks) == cfg["vocab_size"] and
          all(toks[i] == by_id[i].encode() for i in range(len(toks))),
          tag + "tokenizer 'llama', %d tokens as tokenizer.json's ids" % len(toks))
    types = kv.get("tokenizer.ggml.token_type", [])
    special = {a["id"] for a in tj["added_tokens"] if a.get("special")}
    check(len(types) == cfg["vocab_size"] and special and
          all(types[i] == (3 if i in special else 1) for i in range(len(types))),
          tag + "special tokens %s control (3), the others normal (1)" % sorted(special))
    sc = kv.get("tokenizer.ggml.scores", [])
    ids = [model["vocab"][m.replace(" ", "")] for m in model["merges"]]
    check(len(sc) == cfg["vocab_size"] and len(ids) > 100 and
          all(sc[a] > sc[b] for a, b in zip(ids, ids[1:])),
          tag + "scores decrease in merge order (%d merges)" % len(ids))
    want_ids = {"bos": tcfg["bos_token"], "eos": tcfg["eos_token"], "unk": tcfg["unk_token"]}
    got_ok = all(toks[kv.get("tokenizer.ggml.%s_token_id" % ("unknown" if k == "unk" else k),
                             -1)] == v.encode() for k, v in want_ids.items())
    check(got_ok and kv.get("tokenizer.ggml.add_bos_token") == tcfg["add_bos_token"],
          tag + "bos/eos/unk ids and add_bos as tokenizer_config.json")


def main(conv, synth, tok_dir):
    gguf_py = os.environ.get("LLAMA_CPP_GGUF_PY", "")
    if not os.path.isfile(os.path.join(gguf_py, "gguf", "gguf_writer.py")):
        print("LLAMA_CPP_GGUF_PY does not name llama.cpp's gguf-py directory: skipped")
        return 77
    if not os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        print("no tokenizer folder %s: skipped" % tok_dir)
        return 77
    tmp = tempfile.mkdtemp(prefix="hf_to_gguf_")
    try:
        ck_dir = os.path.join(tmp, "ck")
        rc, _ = run([synth, "--out", ck_dir, "--layers", "2", "--hidden", "64",
                     "--intermediate", "160", "--heads", "4", "--kv-heads", "2",
                     "--tokenizer-dir", tok_dir, "--quiet"])
        if not check(rc == 0, "synthetic checkpoint written"):
            return 1
        ck = {}
        for name in os.listdir(ck_dir):
            if name.endswith(".safetensors"):
                ck.update(safetensors(os.path.join(ck_dir, name)))
        with open(os.path.join(ck_dir, "config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(ck_dir, "tokenizer.json"), encoding="utf-8") as f:
            tj = json.load(f)
        with open(os.path.join(ck_dir, "tokenizer_config.json"), encoding="utf-8") as f:
            tcfg = json.load(f)
        env = dict(os.environ, PYTHONPATH=gguf_py)
        for outtype in ("bf16", "f16"):
            out = os.path.join(tmp, "m-%s.gguf" % outtype)
            rc, _ = run([conv, ck_dir, out, "--outtype", outtype], env)
            if check(rc == 0 and os.path.isfile(out), "%s: converted" % outtype):
                check_file(out, ck, cfg, tj, tcfg, outtype)
        os.remove(os.path.join(ck_dir, "config.json"))
        rc, err = run([conv, ck_dir, os.path.join(tmp, "bad.gguf")], env)
        check(rc != 0 and "config.json" in err, "no config.json: non-zero exit naming it")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILS:
        print("%d check(s) failed" % len(FAILS))
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.stderr.write("usage: hf_to_gguf_check.py CONVERTER SYNTH_SCRIPT TOKENIZER_DIR\n")
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[3]))
