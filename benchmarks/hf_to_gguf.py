#!/usr/bin/env python3
"""Write a GGUF file (llama.cpp's format) of a Hugging Face LLaMA checkpoint with numpy only.

llama.cpp's own converter needs torch; this one needs numpy and llama.cpp's gguf-py package
(its directory goes in PYTHONPATH), so that the comparison with llama.cpp can be made on a
machine without torch. Scope: LlamaForCausalLM checkpoints in BF16, F16 or F32 safetensors
(one file or shards with model.safetensors.index.json) with a tokenizer.json byte-fallback BPE
vocabulary of the SentencePiece kind (the '\u2581' word marker), such as the checkpoints of
benchmarks/make_synthetic_llama.py.

    PYTHONPATH=$LLAMA_CPP/gguf-py python3 benchmarks/hf_to_gguf.py CHECKPOINT OUT.gguf [--outtype bf16|f16|f32]

Matrices are written in --outtype (bf16, the default, copies BF16 weights bit for bit), norm
vectors in F32, as llama.cpp's converter does. The query and key rows are reordered from the
Hugging Face rotary layout (first half / second half of each head) to llama.cpp's interleaved
pairs. One tensor is read at a time (through a memory map), so memory stays near the size of
the largest tensor. Quantize the result with llama.cpp's llama-quantize.
"""

import argparse
import json
import os
import sys
import types

import numpy as np


def import_gguf():
    """gguf-py's __init__ imports sentencepiece and yaml for parts not used here: load the
    package's modules without running it."""
    for entry in sys.path:
        pkg_dir = os.path.join(entry or ".", "gguf")
        if os.path.isfile(os.path.join(pkg_dir, "gguf_writer.py")):
            break
    else:
        sys.exit("gguf-py not found: put llama.cpp's gguf-py directory in PYTHONPATH")
    pkg = types.ModuleType("gguf")
    pkg.__path__ = [pkg_dir]
    sys.modules["gguf"] = pkg
    import gguf.constants
    import gguf.gguf_writer
    return gguf.constants, gguf.gguf_writer


class Safetensors:
    """Tensors of one checkpoint folder, each opened as a read-only memory map on request."""

    DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}

    def __init__(self, folder):
        index = os.path.join(folder, "model.safetensors.index.json")
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        self.entries = {}
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                if meta["dtype"] not in self.DTYPES:
                    sys.exit(f"{key}: dtype {meta['dtype']} not handled")
                begin, end = meta["data_offsets"]
                self.entries[key] = (path, 8 + n + begin, end - begin, meta["dtype"],
                                     tuple(meta["shape"]))

    def dtype(self, key):
        return self.entries[key][3]

    def shape(self, key):
        return self.entries[key][4]

    def raw(self, key):
        """The stored values, BF16 as its uint16 bit patterns."""
        path, offset, size, dtype, shape = self.entries[key]
        arr = np.memmap(path, dtype=self.DTYPES[dtype], mode="r", offset=offset, shape=shape)
        assert arr.nbytes == size
        return arr

    def float32(self, key):
        arr = self.raw(key)
        if self.dtype(key) == "BF16":
            # a BF16 value is the high half of the float32 with the same bits
            return (np.asarray(arr, dtype=np.uint32) << 16).view(np.float32)
        return np.asarray(arr, dtype=np.float32)


def rotary_rows(w, n_head):
    """Hugging Face stores each head's rotary pairs as (i, i + d/2); llama.cpp's rope takes
    adjacent pairs (2i, 2i + 1): within each head, interleave the two halves of the rows."""
    rows = w.shape[0]
    d = rows // n_head
    return np.ascontiguousarray(
        w.reshape(n_head, 2, d // 2, *w.shape[1:]).transpose(0, 2, 1, *range(3, w.ndim + 2))
        .reshape(w.shape))


def tensor_names(n_layer):
    """(Hugging Face name, GGUF name, rotary head count or None) in llama.cpp's order."""
    out = [("model.embed_tokens.weight", "token_embd.weight", None)]
    for i in range(n_layer):
        hf, gg = f"model.layers.{i}.", f"blk.{i}."
        out += [
            (hf + "input_layernorm.weight", gg + "attn_norm.weight", None),
            (hf + "self_attn.q_proj.weight", gg + "attn_q.weight", "q"),
            (hf + "self_attn.k_proj.weight", gg + "attn_k.weight", "k"),
            (hf + "self_attn.v_proj.weight", gg + "attn_v.weight", None),
            (hf + "self_attn.o_proj.weight", gg + "attn_output.weight", None),
            (hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", None),
            (hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", None),
            (hf + "mlp.up_proj.weight", gg + "ffn_up.weight", None),
            (hf + "mlp.down_proj.weight", gg + "ffn_down.weight", None),
        ]
    out += [("model.norm.weight", "output_norm.weight", None),
            ("lm_head.weight", "output.weight", None)]
    return out


def vocab(folder, n_vocab, TokenType):
    """Tokens, scores and types for llama.cpp's SentencePiece-style tokenizer ("llama").

    llama.cpp merges the adjacent pair whose joined text is a token of highest score; a BPE
    vocabulary whose merged tokens are numbered in merge order gets the same merges from the
    score -id. Tokens written as <0xXX> are byte fallbacks, the added special tokens control
    tokens."""
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    model = tj["model"]
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        sys.exit("tokenizer.json: only a byte-fallback BPE vocabulary is handled")
    by_id = {}
    for text, i in model["vocab"].items():
        by_id[i] = text
    special = set()
    for added in tj.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        if added.get("special", False):
            special.add(added["id"])
    rank = {}
    for r, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    missing = [i for i in range(n_vocab) if i not in by_id]
    if missing:
        sys.exit(f"tokenizer.json: no token for ids {missing[:8]} (vocab_size {n_vocab})")
    tokens, scores, types_ = [], [], []
    for i in range(n_vocab):
        text = by_id[i]
        tokens.append(text.encode("utf-8"))
        if i in special:
            types_.append(TokenType.CONTROL)
            scores.append(0.0)
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types_.append(TokenType.BYTE)
            scores.append(0.0)
        else:
            types_.append(TokenType.NORMAL)
            # merged tokens: earlier merge, higher score; single symbols never compete
            scores.append(-float(rank[text]) if text in rank else 0.0)
    return tokens, scores, types_


def special_ids(folder, tokens):
    """bos/eos/unk/pad ids and add_bos/add_eos from tokenizer_config.json."""
    path = os.path.join(folder, "tokenizer_config.json")
    cfg = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    ids = {}
    for kind in ("bos", "eos", "unk", "pad"):
        tok = cfg.get(kind + "_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if tok is not None and tok.encode("utf-8") in tokens:
            ids[kind] = tokens.index(tok.encode("utf-8"))
    return ids, cfg.get("add_bos_token", True), cfg.get("add_eos_token", False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--outtype", choices=("bf16", "f16", "f32"), default="bf16")
    args = ap.parse_args()

    constants, gguf_writer = import_gguf()
    Q = constants.GGMLQuantizationType
    if not os.path.isfile(os.path.join(args.checkpoint, "config.json")):
        sys.exit(f"{args.checkpoint}: no config.json")
    with open(os.path.join(args.checkpoint, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("model_type") != "llama":
        sys.exit("config.json: model_type is not llama")
    n_layer = cfg["num_hidden_layers"]
    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads", n_head)
    hidden = cfg["hidden_size"]
    n_vocab = cfg["vocab_size"]
    if cfg.get("rope_scaling") not in (None, {}):
        sys.exit("config.json: rope_scaling is not handled")

    st = Safetensors(args.checkpoint)
    names = tensor_names(n_layer)
    if cfg.get("tie_word_embeddings", False) and "lm_head.weight" not in st.entries:
        names = names[:-1]  # llama.cpp reuses token_embd when output is absent
    for hf, _, _ in names:
        if hf not in st.entries:
            sys.exit(f"{hf}: not in the checkpoint")

    w = gguf_writer.GGUFWriter(args.out, "llama")
    w.add_name(os.path.basename(os.path.normpath(args.checkpoint)))
    w.add_context_length(cfg.get("max_position_embeddings", 4096))
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(cfg.get("head_dim", hidden // n_head))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(n_vocab)
    ftype = {"bf16": constants.LlamaFileType.MOSTLY_BF16,
             "f16": constants.LlamaFileType.MOSTLY_F16,
             "f32": constants.LlamaFileType.ALL_F32}[args.outtype]
    w.add_file_type(ftype)

    tokens, scores, types_ = vocab(args.checkpoint, n_vocab, constants.TokenType)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types_)
    ids, add_bos, add_eos = special_ids(args.checkpoint, tokens)
    for kind, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        if kind in ids:
            add(ids[kind])
    w.add_add_bos_token(bool(add_bos))
    w.add_add_eos_token(bool(add_eos))

    # Every tensor's type and size first (the header precedes the data), then the data one
    # tensor at a time.
    plan = []
    for hf, gg, rot in names:
        shape = st.shape(hf)
        if len(shape) == 1 or args.outtype == "f32":
            out_np, raw = np.float32, None
        elif args.outtype == "f16":
            out_np, raw = np.float16, None
        else:
            out_np, raw = np.uint16, Q.BF16
        nbytes = int(np.prod(shape)) * np.dtype(out_np).itemsize
        w.add_tensor_info(gg, shape, np.dtype(out_np), nbytes, raw_dtype=raw)
        plan.append((hf, gg, rot, out_np))
    w.open_output_file()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for k, (hf, gg, rot, out_np) in enumerate(plan):
        if out_np is np.uint16 and st.dtype(hf) == "BF16":
            data = np.asarray(st.raw(hf))  # bit-exact copy
        elif out_np is np.uint16:
            f32 = st.float32(hf)
            # round to nearest even on the dropped 16 bits
            bits = f32.view(np.uint32)
            data = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        else:
            data = st.float32(hf).astype(out_np)
        if rot is not None:
            data = rotary_rows(data, n_head if rot == "q" else n_head_kv)
        w.write_tensor_data(np.ascontiguousarray(data))
        print(f"[{k + 1}/{len(plan)}] {gg} {list(data.shape)} {np.dtype(out_np).name}",
              flush=True)
        del data
    w.close()


if __name__ == "__main__":
    main()
