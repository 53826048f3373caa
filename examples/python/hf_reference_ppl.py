#!/usr/bin/python3
"""Independent float64 perplexity of a Hugging Face LLaMA folder, FP32 and RTN-quantized.

A reference checker for the example engine (examples/llama2c on a Hugging Face folder): it
reads config.json and model.safetensors with its own small reader, runs a float64 forward pass
(RMSNorm, rotate_half rotary embedding, grouped key/value heads, SwiGLU, tied or separate
head) and measures perplexity with the protocol of the data README: each story of a token file
(little-endian int32, every story starting with BOS) is cut into windows of at most 256 tokens
from its start, each window runs from position 0, a window of n tokens predicts its last n - 1,
and the mean negative log-likelihood over all predicted tokens gives exp(mean).

Quantization (asymmetric min-max, weights per output row, activations per token, the inputs of
all seven linear layers of each block; the head is never quantized):
  scale = (max - min) / (2^bits - 1), zero = R(-min / scale),
  q = clamp(R(x / scale) + zero, 0, 2^bits - 1), x' = (q - zero) * scale
with R chosen by --round:
  floor-half  R(v) = floor(v + 0.5), in float64          (the data README's rule)
  half-even   R(v) = round half to even, in float64
  library     the library's rule (lib/runtime/dq_quant_rule.h): scale, -min / scale and
              x / scale each computed in float32 (true division), then round half to even
--arith engine-f32 replaces the float64 forward pass by one that repeats the example engine's
float32 arithmetic operation by operation (examples/llama2c/forward.c: sequential sums, four
partial sums in the float products, the library's integer product y = (s_x s_w) * sum of code
products); it implies --round library. W4A4 perplexity on a small model is chaotic in the
activations' rounding (a relative change of 3e-7, float32's own error, moves it by 0.2%), so
only this mode can agree with the engine to many digits. The Hadamard rotation follows the
library's block products (index order; weights rounded per product and sum, activations with
fused multiply-adds).
--hadamard-block N rotates every linear input (and its weights) by a block Walsh-Hadamard
matrix: per input, the largest power of two <= N dividing its width.

Methods (--methods, comma-separated): fp32, rtn (W4A4), hadamard (W4A4 after the rotation),
w8a8, w4a16. Prints one line per method: name, perplexity, predicted tokens (and the
comparisons asked for). --expect NAME=PPL,... compares with given figures, --engine PATH with
the example engine run on the same windows (with --act-clip 1); either fails (exit 1) when a
figure is off by more than --tolerance.

usage: hf_reference_ppl.py MODEL_DIR TOKENS.tok [--methods LIST] [--round RULE]
                           [--arith float64|engine-f32] [--hadamard-block N]
                           [--window N] [--max-windows N] [--expect NAME=PPL,...]
                           [--engine PATH] [--tolerance T]
Exit status 0, 1 when a comparison fails, 2 on bad usage, 77 when numpy or the model is
missing.
"""
import argparse
import json
import math
import os
import struct
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not available to %s: skipped" % sys.executable)
    sys.exit(77)

METHODS = {
    # name: (weight bits, activation bits, Hadamard rotation)
    "fp32": (0, 0, False),
    "rtn": (4, 4, False),
    "hadamard": (4, 4, True),
    "w8a8": (8, 8, False),
    "w4a16": (4, 0, False),
}
ROUNDING = ("floor-half", "half-even", "library")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_safetensors(path):
    """{name: float64 array} of the F32/F16/BF16 tensors of one safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = blob[base + a:base + b]
        dt = info["dtype"]
        if dt == "F32":
            v = np.frombuffer(raw, dtype="<f4")
        elif dt == "F16":
            v = np.frombuffer(raw, dtype="<f2")
        elif dt == "BF16":
            v = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError("%s: tensor %s has dtype %s" % (path, name, dt))
        out[name] = v.astype(np.float64).reshape(info["shape"])
    return out


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    t = read_safetensors(os.path.join(folder, "model.safetensors"))
    m = dict(
        dim=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"],
        kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        eps=cfg.get("rms_norm_eps", 1e-6),
        theta=cfg.get("rope_theta", 10000.0),
        bos=cfg.get("bos_token_id", 1),
    )
    m["head_dim"] = cfg.get("head_dim") or m["dim"] // m["heads"]
    # Tied embeddings: a file may hold either name only.
    m["emb"] = t.get("model.embed_tokens.weight", t.get("lm_head.weight"))
    m["head"] = t.get("lm_head.weight", m["emb"])
    m["norm"] = t["model.norm.weight"]
    m["blocks"] = []
    for l in range(m["layers"]):
        p = "model.layers.%d." % l
        blk = {"in_norm": t[p + "input_layernorm.weight"],
               "post_norm": t[p + "post_attention_layernorm.weight"]}
        for k in LINEARS:
            sub = "mlp." if k in ("gate_proj", "up_proj", "down_proj") else "self_attn."
            blk[k] = t[p + sub + k + ".weight"]
        m["blocks"].append(blk)
    return m


def f32_div(a, b):
    return (np.asarray(a, np.float32) / np.asarray(b, np.float32)).astype(np.float32)


def quantize_rows(x, bits, rule):
    """Fake-quantized copy of x (float64, 2-D), each row on its own min-max grid."""
    top = float((1 << bits) - 1)
    if rule == "library":
        xf = x.astype(np.float32)
        mn = xf.min(axis=1, keepdims=True)
        mx = xf.max(axis=1, keepdims=True)
        scale = f32_div(mx - mn, np.float32(top))
        scale = np.where(scale == 0, np.float32(1e-5), scale)  # constant rows stay exact
        zero = np.rint(f32_div(-mn, scale))
        q = np.clip(np.rint(f32_div(xf, scale)) + zero, 0, top)
        return (q.astype(np.float64) - zero) * scale.astype(np.float64)
    rnd = np.rint if rule == "half-even" else (lambda v: np.floor(v + 0.5))
    mn = x.min(axis=1, keepdims=True)
    mx = x.max(axis=1, keepdims=True)
    scale = (mx - mn) / top
    scale = np.where(scale == 0, 1e-5, scale)
    zero = rnd(-mn / scale)
    q = np.clip(rnd(x / scale) + zero, 0, top)
    return (q - zero) * scale


def hadamard_size(width, limit):
    """The largest power of two <= limit dividing width (the engine's choice)."""
    b = 1
    while b * 2 <= limit and width % (b * 2) == 0:
        b *= 2
    return b


def hadamard_blocks(width, limit):
    """blockdiag(H_b, ..., H_b) / sqrt(b), b = hadamard_size(width, limit) (Sylvester order:
    H[i, j] = (-1)^popcount(i & j))."""
    b = hadamard_size(width, limit)
    i = np.arange(b)
    bits = np.bitwise_and.outer(i, i)
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    h = np.where(parity == 1, -1.0, 1.0) / np.sqrt(b)
    return np.kron(np.eye(width // b), h)


class Linear:
    """y = Q_a(x R) Q_w(W R)^T with R a rotation (or none)."""

    def __init__(self, w, w_bits, a_bits, rot, rule):
        self.rot, self.a_bits, self.rule = rot, a_bits, rule
        if rot is not None:
            w = w @ rot
        self.wt = (quantize_rows(w, w_bits, rule) if w_bits else w).T.copy()

    def __call__(self, x):
        if self.rot is not None:
            x = x @ self.rot
        if self.a_bits:
            x = quantize_rows(x, self.a_bits, self.rule)
        return x @ self.wt


def build(m, method, rule, hadamard_limit):
    w_bits, a_bits, rotate = METHODS[method]
    rots = {}
    layers = []
    for blk in m["blocks"]:
        lin = {}
        for k in LINEARS:
            w = blk[k]
            rot = None
            if rotate:
                width = w.shape[1]
                if width not in rots:
                    rots[width] = hadamard_blocks(width, hadamard_limit)
                rot = rots[width]
            lin[k] = Linear(w, w_bits, a_bits, rot, rule)
        layers.append(lin)
    return layers


def rmsnorm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + eps) * w


def rope(v, n_heads, hd, cos, sin):
    t = v.shape[0]
    v = v.reshape(t, n_heads, hd)
    half = hd // 2
    a, b = v[:, :, :half], v[:, :, half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, b * c + a * s], axis=2)


def forward(m, layers, tokens):
    """Logits [n, vocab] of one window run from position 0."""
    n = len(tokens)
    hd, nh, nkv = m["head_dim"], m["heads"], m["kv_heads"]
    half = hd // 2
    freq = m["theta"] ** (-np.arange(half) * 2.0 / hd)
    ang = np.arange(n)[:, None] * freq[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    x = m["emb"][tokens]
    for blk, lin in zip(m["blocks"], layers):
        h = rmsnorm(x, blk["in_norm"], m["eps"])
        q = rope(lin["q_proj"](h), nh, hd, cos, sin)
        k = rope(lin["k_proj"](h), nkv, hd, cos, sin)
        v = lin["v_proj"](h).reshape(n, nkv, hd)
        group = nh // nkv
        att = np.empty((n, nh, hd))
        for i in range(nh):
            s = q[:, i, :] @ k[:, i // group, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            att[:, i, :] = (s / s.sum(axis=1, keepdims=True)) @ v[:, i // group, :]
        x = x + lin["o_proj"](att.reshape(n, nh * hd))
        h = rmsnorm(x, blk["post_norm"], m["eps"])
        g = lin["gate_proj"](h)
        x = x + lin["down_proj"](g / (1.0 + np.exp(-g)) * lin["up_proj"](h))
    return rmsnorm(x, m["norm"], m["eps"]) @ m["head"].T


# ---- the engine's float32 arithmetic (--arith engine-f32) ----
F32 = np.float32


def expf(x):
    """float32 exp, correctly rounded (glibc's expf is, but for rare halfway cases)."""
    return np.exp(x.astype(np.float64)).astype(F32)


def dot4_f32(x, w):
    """y[t, o] = sum_i x[t, i] w[o, i] with four partial sums over i = 4k + r, then
    (s0 + s1) + (s2 + s3), as the engine's float product; float32 throughout."""
    n = x.shape[1]
    assert n % 4 == 0
    s = [np.zeros((x.shape[0], w.shape[0]), F32) for _ in range(4)]
    for i in range(0, n, 4):
        for r in range(4):
            s[r] += x[:, i + r, None] * w[None, :, i + r]
    return (s[0] + s[1]) + (s[2] + s[3])


def quant_codes_f32(x, bits):
    """Codes, scales and zero points of the library's rule on float32 rows (all ordinary
    rows: a constant row is not expected here)."""
    top = F32((1 << bits) - 1)
    mn = x.min(axis=1, keepdims=True)
    mx = x.max(axis=1, keepdims=True)
    scale = (mx - mn) / top
    assert (scale > F32(1e-5)).all(), "a row outside the rule's ordinary range"
    zero = np.rint(-mn / scale)
    q = np.clip(np.rint(x / scale) + zero, 0, top)
    return q.astype(np.int64) - zero.astype(np.int64), scale


def block_product_f32(x, rot, b, fused):
    """x @ rot block by block (rot block-diagonal, float32), each element 0 + x_0 r_0 + x_1 r_1
    + ... in index order: products and sums rounded separately (the library's block product,
    used on weights) or one fused multiply-add per term (its online activation path; emulated
    in double, exact but for double rounding, which is rare). b: the block size."""
    n = x.shape[1]
    out = np.empty_like(x)
    for j0 in range(0, n, b):
        r = rot[j0:j0 + b, j0:j0 + b]
        acc = np.zeros((x.shape[0], b), F32)
        for i in range(b):
            if fused:
                acc = (acc.astype(np.float64) + x[:, j0 + i, None].astype(np.float64) *
                       r[i].astype(np.float64)).astype(F32)
            else:
                acc = acc + x[:, j0 + i, None] * r[i]
        out[:, j0:j0 + b] = acc
    return out


class LinearF32:
    """The library's quantized layer in float32: per-token codes, exact integer products,
    y = (s_x * s_w) * float(sum); the float product of the engine when nothing is quantized."""

    def __init__(self, w, w_bits, a_bits, rot, block):
        w = w.astype(F32)
        self.rot = None if rot is None else rot.astype(F32)
        self.block = block
        if self.rot is not None:
            w = block_product_f32(w, self.rot, block, fused=False)
        self.w, self.w_bits, self.a_bits = w, w_bits, a_bits
        if w_bits:
            self.wq, self.ws = quant_codes_f32(w, w_bits)

    def __call__(self, x):
        if self.rot is not None:
            x = block_product_f32(x, self.rot, self.block, fused=True)
        if not self.w_bits:
            return dot4_f32(x, self.w)
        if not self.a_bits:
            # Weight-only: the library's float kernel decodes c - zw, sums in float32 and
            # scales once; its order is not emulated (float64 sum rounded).
            return ((x.astype(np.float64) @ self.wq.T.astype(np.float64)).astype(F32) *
                    self.ws.T)
        xq, xs = quant_codes_f32(x, self.a_bits)
        acc = (xq @ self.wq.T).astype(F32)
        return (xs * self.ws.T) * acc


def build_f32(m, method, hadamard_limit):
    w_bits, a_bits, rotate = METHODS[method]
    rots, layers = {}, []
    for blk in m["blocks"]:
        lin = {}
        for k in LINEARS:
            rot, width = None, blk[k].shape[1]
            if rotate:
                rots.setdefault(width, hadamard_blocks(width, hadamard_limit))
                rot = rots[width]
            lin[k] = LinearF32(blk[k], w_bits, a_bits, rot, hadamard_size(width, hadamard_limit))
        layers.append(lin)
    return layers


def rmsnorm_f32(x, w, eps):
    ss = np.zeros(x.shape[0], F32)
    for i in range(x.shape[1]):
        ss += x[:, i] * x[:, i]
    ss = F32(1) / np.sqrt(ss / F32(x.shape[1]) + F32(eps))
    return w.astype(F32)[None, :] * (ss[:, None] * x)


def rope_f32(v, n_heads, hd, cos, sin):
    v = v.reshape(v.shape[0], n_heads, hd)
    half = hd // 2
    a, b = v[:, :, :half], v[:, :, half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=2)


def forward_f32(m, layers, tokens):
    n = len(tokens)
    hd, nh, nkv = m["head_dim"], m["heads"], m["kv_heads"]
    half, group = hd // 2, nh // nkv
    cos = np.empty((n, half), F32)
    sin = np.empty((n, half), F32)
    for t in range(n):  # angles in double through libm, as the engine
        for i in range(half):
            ang = t * math.pow(m["theta"], -(2.0 * i) / hd)
            cos[t, i], sin[t, i] = math.cos(ang), math.sin(ang)
    scale = F32(1) / np.sqrt(F32(hd))
    causal = np.tril(np.ones((n, n), bool))
    x = m["emb"][tokens].astype(F32)
    for blk, lin in zip(m["blocks"], layers):
        h = rmsnorm_f32(x, blk["in_norm"], m["eps"])
        q = rope_f32(lin["q_proj"](h), nh, hd, cos, sin).transpose(1, 0, 2)
        k = rope_f32(lin["k_proj"](h), nkv, hd, cos, sin).transpose(1, 0, 2)
        v = lin["v_proj"](h).reshape(n, nkv, hd).transpose(1, 0, 2)
        k, v = np.repeat(k, group, axis=0), np.repeat(v, group, axis=0)
        dot = np.zeros((nh, n, n), F32)
        for i in range(hd):
            dot += q[:, :, i, None] * k[:, None, :, i]
        att = np.where(causal, dot * scale, F32(-np.inf))
        att = np.where(causal, expf(att - att.max(axis=2, keepdims=True)), F32(0))
        total = np.add.accumulate(att, axis=2)[:, np.arange(n), np.arange(n)]
        a = att / total[:, :, None]
        o = np.zeros((nh, n, hd), F32)
        for s in range(n):
            o += a[:, :, s, None] * v[:, None, s, :]
        x = x + lin["o_proj"](o.transpose(1, 0, 2).reshape(n, nh * hd))
        h = rmsnorm_f32(x, blk["post_norm"], m["eps"])
        g = lin["gate_proj"](h)
        x = x + lin["down_proj"](g / (F32(1) + expf(-g)) * lin["up_proj"](h))
    h = rmsnorm_f32(x, m["norm"], m["eps"])
    return dot4_f32(h, m["head"].astype(F32)).astype(np.float64)


def windows(tokens, bos, window, max_windows):
    starts = list(np.flatnonzero(tokens == bos)) + [len(tokens)]
    out = []
    for s, e in zip(starts[:-1], starts[1:]):
        for at in range(s, e, window):
            if e - at >= 2 and (max_windows <= 0 or len(out) < max_windows):
                out.append((at, min(window, e - at)))
    return out


def perplexity(m, layers, tokens, wins, fwd=None):
    fwd = fwd or forward
    total, count = 0.0, 0
    for at, n in wins:
        tok = tokens[at:at + n]
        z = fwd(m, layers, tok)[:-1]
        mx = z.max(axis=1)
        lse = mx + np.log(np.exp(z - mx[:, None]).sum(axis=1))
        total += float((lse - z[np.arange(n - 1), tok[1:]]).sum())
        count += n - 1
    return float(np.exp(total / count)), count


ENGINE_NAMES = {"fp32": "fp32", "rtn": "rtn", "hadamard": "hadamard", "w8a8": "w8a8_rtn",
                "w4a16": "w4a16_rtn"}


def run_engine(engine, a, methods):
    """{method: perplexity} of the example engine on the same folder, windows and options."""
    calib = os.path.join(os.path.dirname(os.path.abspath(a.tokens)), "calib.tok")
    cmd = [engine, "--model", a.model, "--eval", a.tokens, "--calib", calib,
           "--calib-tokens", "256", "--steps", "0", "--act-clip", "1", "--format", "tsv",
           "--hadamard-block", str(a.hadamard_block), "--window", str(a.window),
           "--max-windows", str(a.max_windows),
           "--methods", ",".join(ENGINE_NAMES[n] for n in methods)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True)
    if out.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), out.returncode, out.stderr))
    got = {}
    for line in out.stdout.splitlines()[1:]:
        f = line.split("\t")
        got[f[0]] = float(f[1])
    return {n: got[ENGINE_NAMES[n]] for n in methods}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("--methods", default="fp32,rtn,hadamard,w8a8,w4a16")
    ap.add_argument("--round", default="floor-half", choices=ROUNDING)
    ap.add_argument("--arith", default="float64", choices=("float64", "engine-f32"))
    ap.add_argument("--hadamard-block", type=int, default=128)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--expect", default="",
                    help="NAME=PPL,... : fail unless each figure agrees to --tolerance")
    ap.add_argument("--engine", help="also run this duquant-eval and fail unless it "
                    "agrees with every figure to --tolerance")
    ap.add_argument("--tolerance", type=float, default=5e-5, help="absolute (default 5e-5)")
    a = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(a.model, "model.safetensors")):
        print("%s: no model.safetensors: skipped" % a.model)
        return 77
    methods = a.methods.split(",")
    for name in methods:
        if name not in METHODS:
            ap.error("unknown method %s (known: %s)" % (name, ", ".join(METHODS)))
    m = load_model(a.model)
    tokens = np.fromfile(a.tokens, dtype="<i4").astype(np.int64)
    if tokens.size == 0 or tokens[0] != m["bos"]:
        ap.error("%s: expected token ids starting with BOS %d" % (a.tokens, m["bos"]))
    wins = windows(tokens, m["bos"], a.window, a.max_windows)
    expect = {}
    for item in filter(None, a.expect.split(",")):
        name, value = item.split("=")
        expect[name] = float(value)
    engine = run_engine(a.engine, a, methods) if a.engine else {}
    bad = 0
    for name in methods:
        if a.arith == "engine-f32":
            layers, fwd = build_f32(m, name, a.hadamard_block), forward_f32
        else:
            layers, fwd = build(m, name, a.round, a.hadamard_block), forward
        ppl, count = perplexity(m, layers, tokens, wins, fwd)
        line = "%s\t%.6f\t%d" % (name, ppl, count)
        for what, ref in (("expected", expect.get(name)), ("engine", engine.get(name))):
            if ref is not None:
                ok = abs(ppl - ref) <= a.tolerance
                bad += not ok
                line += "\t%s %.6f %s" % (what, ref, "ok" if ok else "DIFFERS")
        print(line)
        sys.stdout.flush()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
