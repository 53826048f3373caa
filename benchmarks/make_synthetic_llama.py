#!/usr/bin/python3
"""Writes a seeded synthetic LLaMA checkpoint in Hugging Face format (numpy only).

The output folder holds what a Hugging Face user has for a LlamaForCausalLM model:
`config.json`, the weights as safetensors shards `model-0000i-of-0000n.safetensors` with
`model.safetensors.index.json` (or a single `model.safetensors` without an index when everything
fits in one shard, as `save_pretrained` does), and the tokenizer files `tokenizer.json`,
`tokenizer_config.json` and `special_tokens_map.json` copied at run time from --tokenizer-dir.
By default the blocks have the LLaMA-2-7B shapes (hidden 4096, intermediate 11008, 32 layers,
32 heads, 32 key/value heads, rms_norm_eps 1e-5, rope_theta 10000, untied head) and the
vocabulary is the 2048-token one of the tokenizer, so the float model is 12.99 GB in BF16
(6.48 G parameters in the blocks, 33.6 MB for the two 2048-row tables; LLaMA-2-7B's
32000-token tables make its 13.5 GB).

Values depend only on --seed and the shapes: every tensor has its own generator seeded from
(seed, tensor kind, layer), filled in fixed chunks, so the shard size and the dtype do not
change them (an F32 checkpoint rounds to the BF16 one bit for bit, to nearest even).

Planted structure (what a trained LLaMA-2 shows and what DuQuant is made for):

* Weights: linear layers N(0, 1/fan_in) (standard deviation 1/sqrt(fan_in): 0.0156 for a
  4096-wide input, 0.0095 for 11008, the order of a trained LLaMA-2-7B's), the token embedding
  N(0, 0.02^2) (initializer_range), the head N(0, 1/hidden).
* Normal outlier channels: a model-wide pool of 10 hidden channels; every input_layernorm and
  post_attention_layernorm takes 4-8 of them with gains 20-60x the median gain (the others are
  1 + 0.1 N(0, 1)). Every token then enters q/k/v and gate/up with a few channels 20-60 times
  larger than the rest, always the same channels, as the activation outliers of trained LLaMA
  models are; smoothing and rotation have to spread them. Each gain vector is then scaled to
  RMS 1 (the ordinary gains end near 0.55 at hidden 4096), so a normalised token keeps RMS
  about 1 whatever the width. The final norm has no outliers.
* Massive activations on the first token: two "marker" channels M (disjoint from the pool).
  The BOS row of the embedding holds +-8 sqrt(hidden) there, so BOS is nearly a two-hot vector
  after every RMSNorm (about sqrt(hidden / 2) in each marker channel, 45 at hidden 4096); all
  other embedding rows are 20 times smaller in M, and the o_proj of layers <= L and the
  down_proj of layers < L write 20 times less into M, so M stays quiet for ordinary tokens.
  Layer L (1, or 0 for a one-layer model; LLaMA-2-7B's massive activations appear at layer 1)
  has two planted MLP neurons whose gate_proj and up_proj rows read M with weight
  24 / (sqrt(hidden / 2) * g), g the post_attention_layernorm gain of M: on BOS both
  projections are about 48, so the down_proj input is about silu(48) * 48 = 2300 in those
  neurons (ordinary tokens: a few units), and the down_proj columns of those neurons write 0.4
  of it into M: BOS's residual stream carries about +-2300 in the two marker channels from
  layer L on (512 from the embedding at hidden 4096, 1800 from layer L), as LLaMA-2-7B's
  carries about 2500 in two fixed channels. These are the massive outliers of the down_proj
  input that DuQuant's rotation and permutation are designed for, and they make BOS a
  two-hot vector of about 45 at every later block's inputs.
* Not planted: attention sinks (BOS is not made to attract attention), outlier output
  channels of the weights, heavy tails beyond these. The model generates nonsense; it is for
  measuring memory, time and quantization behaviour on real shapes, not for its text.

Files are written under a temporary name (`NAME.tmp`) and renamed when complete; the index is
written last, and weight files of an earlier run in the same folder that this run did not
write are removed at the end. Memory stays bounded: one chunk of about a million values of one
tensor at a time (well under 1 GB resident for the 7B shape); each shard's header is computed
from the shapes before its data is written.

Usage: make_synthetic_llama.py --out DIR [--seed 1] [--layers 32] [--hidden 4096]
       [--intermediate 11008] [--heads 32] [--kv-heads 32] [--vocab 2048] [--shard-size 4GB]
       [--dtype bf16|f16|f32] [--tokenizer-dir ../shared/models/tinystories-656k]
"""
import argparse
import json
import os
import re
import struct
import sys
import time

try:
    import numpy as np
except ImportError:
    sys.stderr.write("make_synthetic_llama.py: numpy is required (Debian: python3-numpy)\n")
    sys.exit(2)

PROG = "make_synthetic_llama.py"
CHUNK = 1 << 20                 # values generated and converted at a time
DTYPES = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# Tensor kinds (part of each tensor's seed: never renumber).
K_EMBED, K_HEAD, K_NORM, K_STRUCT = 1, 2, 3, 4
K_LAYER = {"self_attn.q_proj": 10, "self_attn.k_proj": 11, "self_attn.v_proj": 12,
           "self_attn.o_proj": 13, "mlp.gate_proj": 14, "mlp.up_proj": 15,
           "mlp.down_proj": 16, "input_layernorm": 17, "post_attention_layernorm": 18}

OUTLIER_POOL = 10               # hidden channels that may carry normal outliers
MARKERS = 2                     # hidden channels carrying BOS's massive activation
MASSIVE_NEURONS = 2             # planted MLP neurons of the massive layer
BOS_SCALE = 8.0                 # BOS embedding in the markers: BOS_SCALE * sqrt(hidden)
QUIET = 0.05                    # markers in other embeddings and early output rows
GATE_TARGET = 24.0              # planted gate/up weight * sqrt(hidden / MARKERS)
DOWN_WEIGHT = 0.4               # planted down_proj weight from a massive neuron to a marker
EMBED_STD = 0.02


class Fail(Exception):
    pass


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError("expected a size such as 4GB, 500MB or 123456, got %r"
                                         % text)
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    value = int(float(m.group(1)) * mult)
    if value <= 0:
        raise argparse.ArgumentTypeError("the shard size must be positive, got %r" % text)
    return value


def positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % text)
    if v <= 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got %r" % text)
    return v


def parse_args(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    default_tok = os.path.normpath(os.path.join(here, "..", "..", "shared", "models",
                                                "tinystories-656k"))
    p = argparse.ArgumentParser(prog=PROG, description="Write a seeded synthetic LLaMA "
                                "checkpoint in Hugging Face format (see the module docstring).")
    p.add_argument("--out", required=True, help="output folder (created if absent)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--layers", type=positive, default=32)
    p.add_argument("--hidden", type=positive, default=4096)
    p.add_argument("--intermediate", type=positive, default=11008)
    p.add_argument("--heads", type=positive, default=32)
    p.add_argument("--kv-heads", type=positive, default=None,
                   help="key/value heads (default: --heads)")
    p.add_argument("--vocab", type=positive, default=2048)
    p.add_argument("--shard-size", type=parse_size, default=parse_size("4GB"),
                   help="largest shard before a new one starts (default 4GB; 1GB = 10^9 B)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tokenizer-dir", default=default_tok,
                   help="folder with tokenizer.json, tokenizer_config.json, "
                        "special_tokens_map.json (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    if a.kv_heads is None:
        a.kv_heads = a.heads
    if a.hidden % a.heads:
        p.error("--hidden %d is not a multiple of --heads %d" % (a.hidden, a.heads))
    if (a.hidden // a.heads) % 2:
        p.error("head size %d (hidden / heads) must be even for the rotary embedding"
                % (a.hidden // a.heads))
    if a.heads % a.kv_heads:
        p.error("--heads %d is not a multiple of --kv-heads %d" % (a.heads, a.kv_heads))
    if a.hidden < OUTLIER_POOL + MARKERS + 4:
        p.error("--hidden %d is too small: at least %d" % (a.hidden, OUTLIER_POOL + MARKERS + 4))
    if a.intermediate < MASSIVE_NEURONS:
        p.error("--intermediate %d is too small: at least %d" % (a.intermediate, MASSIVE_NEURONS))
    return a


def read_tokenizer(tok_dir, vocab):
    """Checks the tokenizer files and returns (bos_id, eos_id)."""
    for f in TOKENIZER_FILES:
        path = os.path.join(tok_dir, f)
        if not os.path.isfile(path):
            raise Fail("%s: missing (--tokenizer-dir %s)" % (path, tok_dir))
    path = os.path.join(tok_dir, "tokenizer.json")
    try:
        with open(path, encoding="utf-8") as fh:
            tok = json.load(fh)
        ids = dict(tok["model"]["vocab"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Fail("%s: not a tokenizer.json with model.vocab (%s)" % (path, e))
    for t in tok.get("added_tokens") or []:
        ids[t["content"]] = t["id"]
    n = max(ids.values()) + 1
    if vocab < n:
        raise Fail("--vocab %d is smaller than the tokenizer's %d ids (%s)" % (vocab, n, path))
    cpath = os.path.join(tok_dir, "tokenizer_config.json")
    try:
        with open(cpath, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as e:
        raise Fail("%s: unreadable (%s)" % (cpath, e))

    def special(key):
        v = cfg.get(key)
        if isinstance(v, dict):
            v = v.get("content")
        if not isinstance(v, str) or v not in ids:
            raise Fail("%s: %s %r is not a token of %s" % (cpath, key, v, path))
        return ids[v]
    return special("bos_token"), special("eos_token")


def make_config(a, bos, eos, dtype):
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": EMBED_STD,
        "intermediate_size": a.intermediate,
        "max_position_embeddings": 4096,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype],
        "use_cache": True,
        "vocab_size": a.vocab,
    }


class Structure:
    """The planted channels and neurons, drawn from the seed alone."""

    def __init__(self, a, bos):
        rng = np.random.default_rng([a.seed, K_STRUCT, 0])
        ch = rng.permutation(a.hidden)
        self.pool = np.sort(ch[:OUTLIER_POOL])
        self.markers = ch[OUTLIER_POOL:OUTLIER_POOL + MARKERS]
        self.signs = np.where(rng.random(MARKERS) < 0.5, -1.0, 1.0).astype(np.float32)
        self.neurons = np.sort(rng.choice(a.intermediate, MASSIVE_NEURONS, replace=False))
        self.massive_layer = min(1, a.layers - 1)
        self.bos = bos
        self.hidden = a.hidden


def tensor_list(a):
    """(name, shape, kind, layer) in file order."""
    hd = a.hidden // a.heads
    h, i, kv = a.hidden, a.intermediate, a.kv_heads * hd
    out = [("model.embed_tokens.weight", (a.vocab, h), K_EMBED, 0)]
    for n in range(a.layers):
        p = "model.layers.%d." % n
        for suffix, shape in (("input_layernorm", (h,)),
                              ("self_attn.q_proj", (h, h)),
                              ("self_attn.k_proj", (kv, h)),
                              ("self_attn.v_proj", (kv, h)),
                              ("self_attn.o_proj", (h, h)),
                              ("post_attention_layernorm", (h,)),
                              ("mlp.gate_proj", (i, h)),
                              ("mlp.up_proj", (i, h)),
                              ("mlp.down_proj", (h, i))):
            out.append((p + suffix + ".weight", shape, K_LAYER[suffix], n + 1))
    out.append(("model.norm.weight", (h,), K_NORM, 0))
    out.append(("lm_head.weight", (a.vocab, h), K_HEAD, 0))
    return out


def norm_weight(st, seed, kind, layer, outliers):
    rng = np.random.default_rng([seed, kind, layer])
    w = (1.0 + 0.1 * rng.standard_normal(st.hidden, dtype=np.float32)).astype(np.float32)
    if outliers:
        count = int(rng.integers(4, 9))
        chans = rng.choice(st.pool, count, replace=False)
        w[chans] = np.float32(np.median(w)) * rng.uniform(20.0, 60.0, count).astype(np.float32)
    w[st.markers] = np.float32(np.median(w))
    w *= np.float32(1.0 / np.sqrt(np.mean(w.astype(np.float64) ** 2)))
    return w


def fill_chunk(buf, st, seed, kind, layer, rows, r0, cols, rng):
    """Fills buf (rows x cols, float32) with rows r0.. of a tensor, structure included."""
    rng.standard_normal(out=buf.reshape(-1), dtype=np.float32)
    n = layer - 1                               # block index for layer tensors
    if kind == K_EMBED:
        buf *= np.float32(EMBED_STD)
        buf[:, st.markers] *= np.float32(QUIET)
        if r0 <= st.bos < r0 + rows:
            buf[st.bos - r0, st.markers] = st.signs * np.float32(BOS_SCALE * np.sqrt(st.hidden))
        return
    buf *= np.float32(1.0 / np.sqrt(cols))
    if kind == K_HEAD:
        return
    if (kind == K_LAYER["self_attn.o_proj"] and n <= st.massive_layer) or \
       (kind == K_LAYER["mlp.down_proj"] and n < st.massive_layer):
        for m in st.markers:
            if r0 <= m < r0 + rows:
                buf[m - r0, :] *= np.float32(QUIET)
    if n != st.massive_layer:
        return
    if kind in (K_LAYER["mlp.gate_proj"], K_LAYER["mlp.up_proj"]):
        gain = norm_weight(st, seed, K_LAYER["post_attention_layernorm"], layer, True)
        g = np.float32(GATE_TARGET / (np.sqrt(st.hidden / MARKERS) * gain[st.markers[0]]))
        for nr in st.neurons:
            if r0 <= nr < r0 + rows:
                buf[nr - r0, st.markers] = st.signs * g
    elif kind == K_LAYER["mlp.down_proj"]:
        for m, s in zip(st.markers, st.signs):
            if r0 <= m < r0 + rows:
                buf[m - r0, st.neurons] = s * np.float32(DOWN_WEIGHT)


class Converter:
    """float32 -> stored bytes with reused buffers (BF16 by rounding to nearest even)."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.tmp = np.empty(CHUNK, dtype=np.uint32)
        self.out16 = np.empty(CHUNK, dtype=np.uint16)

    def __call__(self, x):
        flat = x.reshape(-1)
        k = flat.size
        if self.dtype == "f32":
            return flat.astype("<f4", copy=False)
        out = self.out16[:k]
        if self.dtype == "f16":
            np.copyto(out.view(np.float16), flat, casting="same_kind")
            return out
        u = flat.view(np.uint32)                # rounds in place: x is not used again
        t = self.tmp[:k]
        np.right_shift(u, 16, out=t)
        np.bitwise_and(t, 1, out=t)
        np.add(u, t, out=u)
        np.add(u, 0x7FFF, out=u)
        np.right_shift(u, 16, out=u)
        np.copyto(out, u, casting="unsafe")
        return out


def write_tensor(fh, st, seed, spec, conv):
    _, shape, kind, layer = spec
    if kind == K_NORM or kind in (K_LAYER["input_layernorm"], K_LAYER["post_attention_layernorm"]):
        w = norm_weight(st, seed, kind, layer, kind != K_NORM)
        fh.write(conv(w).tobytes())
        return
    rows, cols = shape
    rng = np.random.default_rng([seed, kind, layer])
    step = max(1, CHUNK // cols)
    base = np.empty(step * cols, dtype=np.float32)
    for r0 in range(0, rows, step):
        k = min(step, rows - r0)
        buf = base[:k * cols].reshape(k, cols)
        fill_chunk(buf, st, seed, kind, layer, k, r0, cols, rng)
        fh.write(conv(buf).data)


def plan_shards(specs, itemsize, limit):
    shards, cur, size = [], [], 0
    for s in specs:
        nbytes = int(np.prod(s[1])) * itemsize
        if cur and size + nbytes > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append(s)
        size += nbytes
    shards.append(cur)
    return shards


def shard_header(specs, dtype_name, itemsize):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _, _ in specs:
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": dtype_name, "shape": list(shape),
                        "data_offsets": [off, off + nbytes]}
        off += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, off


def write_atomic(path, data, tmps):
    tmp = path + ".tmp"
    tmps.append(tmp)
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    tmps.remove(tmp)


def run(a):
    t_start = time.monotonic()
    log = (lambda msg: None) if a.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    bos, eos = read_tokenizer(a.tokenizer_dir, a.vocab)
    dtype_name, itemsize = DTYPES[a.dtype]
    specs = tensor_list(a)
    shards = plan_shards(specs, itemsize, a.shard_size)
    st = Structure(a, bos)
    try:
        os.makedirs(a.out, exist_ok=True)
    except OSError as e:
        raise Fail("%s: cannot create the output folder (%s)" % (a.out, e))
    tmps = []
    try:
        for f in TOKENIZER_FILES:
            with open(os.path.join(a.tokenizer_dir, f), "rb") as fh:
                write_atomic(os.path.join(a.out, f), fh.read(), tmps)
        cfg = make_config(a, bos, eos, a.dtype)
        write_atomic(os.path.join(a.out, "config.json"),
                     (json.dumps(cfg, indent=2) + "\n").encode("utf-8"), tmps)
        conv = Converter(a.dtype)
        names = (["model.safetensors"] if len(shards) == 1 else
                 ["model-%05d-of-%05d.safetensors" % (k + 1, len(shards))
                  for k in range(len(shards))])
        weight_map, total = {}, 0
        for k, (fname, group) in enumerate(zip(names, shards)):
            head, nbytes = shard_header(group, dtype_name, itemsize)
            path = os.path.join(a.out, fname)
            tmp = path + ".tmp"
            tmps.append(tmp)
            t0 = time.monotonic()
            with open(tmp, "wb") as fh:
                fh.write(head)
                for spec in group:
                    write_tensor(fh, st, a.seed, spec, conv)
                    if spec[2] == K_LAYER["mlp.down_proj"]:
                        log("  %s: %s" % (fname, spec[0].rsplit(".mlp", 1)[0]))
                if fh.tell() != len(head) + nbytes:
                    raise Fail("%s: wrote %d bytes, expected %d" % (tmp, fh.tell(),
                                                                   len(head) + nbytes))
            os.replace(tmp, path)
            tmps.remove(tmp)
            for spec in group:
                weight_map[spec[0]] = fname
            total += nbytes
            log("wrote %s: %d tensors, %.2f GB in %.1f s" % (fname, len(group),
                (len(head) + nbytes) / 1e9, time.monotonic() - t0))
        index = os.path.join(a.out, "model.safetensors.index.json")
        if len(shards) > 1:
            doc = {"metadata": {"total_size": total},
                   "weight_map": dict(sorted(weight_map.items()))}
            write_atomic(index, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), tmps)
        keep = set(names) | ({"model.safetensors.index.json"} if len(shards) > 1 else set())
        for f in os.listdir(a.out):
            stale = (f == "model.safetensors.index.json" or f == "model.safetensors" or
                     re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f))
            if stale and f not in keep:
                os.remove(os.path.join(a.out, f))
    except OSError as e:
        raise Fail("%s: %s" % (a.out, e))
    finally:
        for t in tmps:
            try:
                os.remove(t)
            except OSError:
                pass
    log("%s: %d layers, hidden %d, intermediate %d, %d/%d heads, vocab %d, %s, %d shard(s), "
        "%.2f GB of tensors, massive layer %d, markers %s, outlier pool %s, %.1f s"
        % (a.out, a.layers, a.hidden, a.intermediate, a.heads, a.kv_heads, a.vocab,
           dtype_name, len(shards), total / 1e9, st.massive_layer,
           st.markers.tolist(), st.pool.tolist(), time.monotonic() - t_start))


def main(argv):
    a = parse_args(argv)
    try:
        run(a)
    except Fail as e:
        sys.stderr.write("%s: error: %s\n" % (PROG, e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
