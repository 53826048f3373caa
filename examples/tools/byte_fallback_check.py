#!/usr/bin/python3
"""Greedy text made of byte-fallback tokens, printed whole by duquant-run and duquant-eval.

Writes a Hugging Face folder whose greedy continuation is known by construction: a tokenizer
with byte fallback (<0x00>..<0xFF>) and the characters "▁", "a", "b"; one LLaMA block whose
linear weights are all zero, so the residual stream stays the token's embedding; one-hot
embeddings, and a head whose column for token t is one-hot on the token that follows t. The
chain after the prompt "a" is <0xE2> <0x80> <0x99> (U+2019 in UTF-8), "b", then EOS: the text
is "a\u2019b". While the three bytes arrive, the text so far ends in an unfinished character
(decoded as U+FFFD); a program that prints as it goes must wait for the character.

The same folder with a model of fewer rows than the tokenizer has tokens: a prompt or a text
whose ids fall beyond the embedding table must be refused with a message, not read past it.

usage: byte_fallback_check.py DUQUANT_RUN DUQUANT_EVAL
"""
import array
import json
import os
import struct
import subprocess
import sys
import tempfile

VOCAB, HIDDEN, INTER = 262, 264, 8
BYTE0, SPACE, A, B, EOS = 3, 259, 260, 261, 2
EXPECTED = "a\u2019b"
CHAIN = {A: BYTE0 + 0xE2, BYTE0 + 0xE2: BYTE0 + 0x80, BYTE0 + 0x80: BYTE0 + 0x99,
         BYTE0 + 0x99: B}


def write_tokenizer(path):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({"<0x%02X>" % b: BYTE0 + b for b in range(256)})
    vocab.update({"\u2581": SPACE, "a": A, "b": B})
    special = [{"id": i, "content": c, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}
               for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": special,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None, "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "vocab": vocab, "merges": []},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok, f)


def write_model(folder, vocab=VOCAB):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": 1,
              "num_attention_heads": 1, "num_key_value_heads": 1, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "vocab_size": vocab,
              "bos_token_id": 1, "eos_token_id": EOS, "max_position_embeddings": 64,
              "hidden_act": "silu"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)

    def zeros(n):
        return array.array("f", bytes(4 * n))

    emb, head = zeros(vocab * HIDDEN), zeros(vocab * HIDDEN)
    for t in range(vocab):
        emb[t * HIDDEN + t] = 1.0
        nxt = CHAIN.get(t, EOS)
        head[(nxt if nxt < vocab else EOS) * HIDDEN + t] = 1.0
    ones = array.array("f", [1.0] * HIDDEN)
    p = "model.layers.0."
    tensors = {"model.embed_tokens.weight": ([vocab, HIDDEN], emb),
               "lm_head.weight": ([vocab, HIDDEN], head), "model.norm.weight": ([HIDDEN], ones),
               p + "input_layernorm.weight": ([HIDDEN], ones),
               p + "post_attention_layernorm.weight": ([HIDDEN], ones),
               p + "mlp.gate_proj.weight": ([INTER, HIDDEN], zeros(INTER * HIDDEN)),
               p + "mlp.up_proj.weight": ([INTER, HIDDEN], zeros(INTER * HIDDEN)),
               p + "mlp.down_proj.weight": ([HIDDEN, INTER], zeros(HIDDEN * INTER))}
    for n in "qkvo":
        tensors[p + "self_attn.%s_proj.weight" % n] = ([HIDDEN, HIDDEN], zeros(HIDDEN * HIDDEN))
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        blob = values.tobytes()  # float32, little-endian on the machines this runs on
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def main():
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[-1])
        return 2
    run, engine = sys.argv[1:]
    if sys.byteorder != "little":
        print("big-endian host: skipping")
        return 77
    fail = 0
    with tempfile.TemporaryDirectory() as folder:
        write_model(folder)
        write_tokenizer(os.path.join(folder, "tokenizer.json"))
        story = os.path.join(folder, "story.txt")
        with open(story, "w") as f:
            f.write("a b a\n")
        runs = {
            "duquant-run": ([run, "--model", folder, "--prompt", "a", "--steps", "8"], ""),
            "duquant-eval": ([engine, "--model", folder, "--eval", story, "--window", "8",
                              "--methods", "fp32", "--prompt", "a", "--steps", "8"], "[fp32] "),
        }
        for name, (args, prefix) in runs.items():
            out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            text = out.stdout.decode("utf-8", "replace")
            lines = [l[len(prefix):] for l in text.splitlines() if l.startswith(prefix)]
            if out.returncode == 0 and lines and lines[0] == EXPECTED:
                print("ok: %s prints %s" % (name, ascii(EXPECTED)))
            else:
                print("FAILED: %s (exit %d) printed %s, expected a line %s%s" %
                      (name, out.returncode, ascii(text), prefix, ascii(EXPECTED)))
                print(out.stderr.decode("utf-8", "replace"))
                fail = 1
    # A model whose table ends before "a" (id A): the prompt and the text are refused.
    with tempfile.TemporaryDirectory() as folder:
        write_model(folder, vocab=A)
        write_tokenizer(os.path.join(folder, "tokenizer.json"))
        story = os.path.join(folder, "story.txt")
        with open(story, "w") as f:
            f.write("a b a\n")
        for what, args in (("--prompt", [run, "--model", folder, "--prompt", "a"]),
                           ("--eval", [run, "--model", folder, "--eval", story])):
            out = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            err = out.stderr.decode("utf-8", "replace")
            if out.returncode != 0 and "beyond the model's vocabulary of %d" % A in err:
                print("ok: duquant-run %s refuses token ids beyond the table" % what)
            else:
                print("FAILED: duquant-run %s with ids beyond the table: exit %d, %s" %
                      (what, out.returncode, ascii(err)))
                fail = 1
    return fail


if __name__ == "__main__":
    sys.exit(main())
