#!/usr/bin/python3
"""Independent float64 check of the llama2c engine's FP32 perplexity.

Reads the llama2.c checkpoint and tokenizer itself, tokenizes the evaluation text with
llama2.c's rules, runs a float64 forward pass over the first N windows of the protocol
(stories cut into windows of at most 256 tokens from position 0; a window of n tokens predicts
its last n - 1), and compares exp(mean NLL) with the engine's `--format tsv` output on the same
windows. Exit 0 when they agree within the tolerance, 1 when not, 77 (skip) without numpy.

usage: llama2c_reference.py ENGINE DATA_DIR [N_WINDOWS] [TOLERANCE]
"""
import struct
import subprocess
import sys

try:
    import numpy as np
except ImportError:
    print("numpy is not installed: skipping")
    sys.exit(77)


def load_model(path):
    with open(path, "rb") as f:
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("<7i", f.read(28))
        data = np.frombuffer(f.read(), dtype="<f4").astype(np.float64)
    shared = vocab > 0
    vocab = abs(vocab)
    kv_dim = dim * kv_heads // heads
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        out = data[at:at + n].reshape(shape)
        at += n
        return out

    m = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
             vocab=vocab, seq_len=seq_len, head_size=dim // heads)
    m["emb"] = take(vocab, dim)
    m["rms_att"] = take(layers, dim)
    m["wq"] = take(layers, dim, dim)
    m["wk"] = take(layers, kv_dim, dim)
    m["wv"] = take(layers, kv_dim, dim)
    m["wo"] = take(layers, dim, dim)
    m["rms_ffn"] = take(layers, dim)
    m["w1"] = take(layers, hidden, dim)
    m["w2"] = take(layers, dim, hidden)
    m["w3"] = take(layers, hidden, dim)
    m["rms_final"] = take(dim)
    take(seq_len, dim // heads // 2)  # freq_cis_real, unused
    take(seq_len, dim // heads // 2)  # freq_cis_imag, unused
    m["cls"] = m["emb"] if shared else take(vocab, dim)
    assert at == data.size, "model size does not match its header"
    return m


def load_tokenizer(path, vocab_size):
    words, scores = [], []
    with open(path, "rb") as f:
        f.read(4)  # max token length
        for _ in range(vocab_size):
            score, n = struct.unpack("<fi", f.read(8))
            words.append(f.read(n))
            scores.append(score)
    return words, scores, {w: i for i, w in enumerate(words)}


def encode(text, tok):
    """llama2.c: BOS, a space in front, code points or byte tokens, best-score pair merges."""
    words, scores, ids = tok
    out = [1, ids[b" "]]
    for ch in text:
        b = ch.encode("utf-8")
        out.extend([ids[b]] if b in ids else [x + 3 for x in b])
    while True:
        best, where = None, -1
        for i in range(len(out) - 1):
            j = ids.get(words[out[i]] + words[out[i + 1]])
            if j is not None and (best is None or scores[j] > scores[best]):
                best, where = j, i
        if best is None:
            return out
        out[where:where + 2] = [best]


def rmsnorm(x, w):
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5)


def rope(v, head_size):
    n, width = v.shape
    pos = np.arange(n)[:, None]
    i = np.arange(0, width, 2)
    freq = 1.0 / 10000.0 ** ((i % head_size) / head_size)
    c, s = np.cos(pos * freq), np.sin(pos * freq)
    a, b = v[:, 0::2], v[:, 1::2]
    out = np.empty_like(v)
    out[:, 0::2] = a * c - b * s
    out[:, 1::2] = a * s + b * c
    return out


def forward(m, tokens):
    n, hs = len(tokens), m["head_size"]
    group = m["heads"] // m["kv_heads"]
    x = m["emb"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(m["layers"]):
        h = rmsnorm(x, m["rms_att"][l])
        q = rope(h @ m["wq"][l].T, hs)
        k = rope(h @ m["wk"][l].T, hs)
        v = h @ m["wv"][l].T
        att = np.empty((n, m["dim"]))
        for head in range(m["heads"]):
            kvh = head // group
            qh = q[:, head * hs:(head + 1) * hs]
            kh = k[:, kvh * hs:(kvh + 1) * hs]
            vh = v[:, kvh * hs:(kvh + 1) * hs]
            sc = qh @ kh.T / np.sqrt(hs) + mask
            sc = np.exp(sc - sc.max(axis=1, keepdims=True))
            att[:, head * hs:(head + 1) * hs] = (sc / sc.sum(axis=1, keepdims=True)) @ vh
        x = x + att @ m["wo"][l].T
        h = rmsnorm(x, m["rms_ffn"][l])
        a, b = h @ m["w1"][l].T, h @ m["w3"][l].T
        x = x + (a / (1 + np.exp(-a)) * b) @ m["w2"][l].T
    return rmsnorm(x, m["rms_final"]) @ m["cls"].T


def main():
    engine, data = sys.argv[1], sys.argv[2]
    n_windows = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    tol = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
    model, tokpath, text = data + "/stories260K.bin", data + "/tok512.bin", data + "/dev.txt"
    m = load_model(model)
    tok = load_tokenizer(tokpath, m["vocab"])
    with open(text, encoding="utf-8") as f:
        stories = [s.strip() for s in f.read().split("<|endoftext|>")]
    windows = []
    for s in filter(None, stories):
        ids = encode(s, tok)
        windows += [ids[i:i + 256] for i in range(0, len(ids), 256) if len(ids) - i >= 2]
        if len(windows) >= n_windows:
            break
    windows = windows[:n_windows]
    nll, count = 0.0, 0
    for w in windows:
        z = forward(m, np.array(w))[:-1]
        zmax = z.max(axis=1, keepdims=True)
        logp = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
        nll -= logp[np.arange(len(w) - 1), w[1:]].sum()
        count += len(w) - 1
    ref = float(np.exp(nll / count))
    cmd = [engine, "--model", model, "--tokenizer", tokpath, "--eval", text, "--calib", text,
           "--methods", "fp32", "--format", "tsv", "--steps", "0",
           "--max-windows", str(n_windows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    if out[0].split("\t") != ["method", "ppl", "ratio_to_fp32", "quantize_s"]:
        print("unexpected tsv header:", out[0])
        return 1
    row = dict(zip(out[0].split("\t"), out[1].split("\t")))
    got = float(row["ppl"])
    rel = abs(got - ref) / ref
    ok = row["method"] == "fp32" and rel <= tol
    print(f"{len(windows)} windows, {count} predicted tokens: float64 reference {ref:.6f}, "
          f"engine {got:.6f}, relative difference {rel:.2e} (tolerance {tol:g}): "
          f"{'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
