#!/usr/bin/python3
"""Lists and reads a quantized model file of duquant-quantize (doc/formats.md, "Quantized
model files") with nothing but json and numpy.

    python3 model_file.py FILE              # architecture, method, tensors
    python3 model_file.py FILE --check      # also: every tensor the format names is there
    python3 model_file.py FILE --tensor tok_embeddings.weight   # print one tensor

    import model_file
    meta, tensors = model_file.read(path)   # metadata dict, name -> numpy array (a view)
"""
import json
import struct
import sys

DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "I8": "i1",
          "U16": "<u2", "I16": "<i2", "U32": "<u4", "U64": "<u8", "F16": "<f2"}
LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


def read(path):
    """(metadata, {name: numpy array}) of a safetensors-compatible file, arrays mapped."""
    import numpy as np
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    (n,) = struct.unpack("<Q", raw[:8].tobytes())
    header = json.loads(raw[8:8 + n].tobytes().decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        begin, end = t["data_offsets"]
        buf = raw[base + begin:base + end]
        tensors[name] = buf.view(DTYPES[t["dtype"]]).reshape(t["shape"])
    return meta, tensors


def check(meta, tensors):
    """The names doc/formats.md promises; returns a list of what is missing or wrong."""
    bad = []
    if meta.get("duquant.model") != "llama-w4a4":
        bad.append("duquant.model is %r" % meta.get("duquant.model"))
        return bad
    dim, vocab = int(meta["model.dim"]), int(meta["model.vocab_size"])
    need = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    if meta["model.tie_word_embeddings"] == "0":
        need["output.weight"] = (vocab, dim)
    for layer in range(int(meta["model.n_layers"])):
        for norm in ("attention_norm", "ffn_norm"):
            need["layers.%d.%s.weight" % (layer, norm)] = (dim,)
    for name, shape in need.items():
        if name not in tensors:
            bad.append("missing tensor " + name)
        elif tuple(tensors[name].shape) != shape:
            bad.append("%s has shape %s, expected %s" % (name, tensors[name].shape, shape))
    for layer in range(int(meta["model.n_layers"])):
        for lin in LINEARS:
            prefix = "layers.%d.%s" % (layer, lin)
            if not any(k.startswith(prefix + ".") for k in list(tensors) + list(meta)):
                bad.append("missing linear layer " + prefix)
            plan = meta.get(prefix + ".plan")
            if plan and not any(k.startswith(plan + ".") for k in list(tensors) + list(meta)):
                bad.append("%s names plan %s, which is missing" % (prefix, plan))
    return bad


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("numpy not available: skipped")
        return 77
    meta, tensors = read(argv[1])
    if "--tensor" in argv:
        name = argv[argv.index("--tensor") + 1]
        print(tensors[name])
        return 0
    print("%s: %s, %s layers, dim %s, hidden %s, vocab %s, method %s, library %s" % (
        argv[1], meta.get("model.architecture"), meta.get("model.n_layers"),
        meta.get("model.dim"), meta.get("model.hidden_dim"), meta.get("model.vocab_size"),
        meta.get("quant.method"), meta.get("duquant.version")))
    for k in sorted(meta):
        v = meta[k]
        print("  %-40s %s" % (k, v if len(v) <= 60 else v[:57] + "... (%d chars)" % len(v)))
    total = 0
    for name in sorted(tensors):
        t = tensors[name]
        total += t.nbytes
        print("  %-40s %-4s %s" % (name, t.dtype.str, list(t.shape)))
    print("%d tensors, %d bytes of data" % (len(tensors), total))
    if "--check" in argv:
        bad = check(meta, tensors)
        for b in bad:
            print("FAILED: " + b)
        if bad:
            return 1
        emb = tensors["tok_embeddings.weight"]
        print("ok: every tensor of the format is there; tok_embeddings mean |x| %.6f" %
              float(abs(emb).mean()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
