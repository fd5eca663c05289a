#!/usr/bin/env python3
"""Writes a Qwen2 checkpoint (Hugging Face layout: config.json, tokenizer.json,
*.safetensors in float32 or bfloat16) as a GGUF v3 file that llama.cpp loads,
so that bench/llamacpp/compare.sh runs llama.cpp on exactly the weights that
gritserve runs. Standard library only (no numpy, no gguf-py): matrices are
copied byte for byte in their own dtype; norms and biases become float32, as
llama.cpp requires.

  safetensors_to_gguf.py MODEL_DIR OUT.gguf
"""
import json
import os
import struct
import sys

GGUF_ALIGN = 32
# GGUF metadata value types.
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
# ggml tensor types, and llama.cpp's file types for "mostly F32 / BF16".
GGML_F32, GGML_BF16 = 0, 30
FTYPE = {"F32": 0, "BF16": 32}
# llama.cpp token types.
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_name(hf):
    if hf in TOP_NAMES:
        return TOP_NAMES[hf]
    parts = hf.split(".")
    if parts[:2] == ["model", "layers"]:
        rest = ".".join(parts[3:])
        if rest in LAYER_NAMES:
            return "blk.%s.%s" % (parts[2], LAYER_NAMES[rest])
    raise SystemExit("no GGUF name for tensor '%s'" % hf)


class Source:
    """One tensor in a safetensors file: where its bytes are and how to read them."""

    def __init__(self, path, base, info):
        self.path, self.dtype, self.shape = path, info["dtype"], info["shape"]
        begin, end = info["data_offsets"]
        self.offset, self.size = base + begin, end - begin

    def read(self):
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


def read_tensors(model_dir):
    tensors = {}
    for name in sorted(os.listdir(model_dir)):
        if not name.endswith(".safetensors"):
            continue
        path = os.path.join(model_dir, name)
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key != "__metadata__":
                tensors[key] = Source(path, 8 + n, info)
    return tensors


def as_float32(src):
    data = src.read()
    if src.dtype == "F32":
        return data
    if src.dtype == "BF16":  # a bfloat16 is the high half of a float32
        out = bytearray(len(data) * 2)
        out[2::4] = data[0::2]
        out[3::4] = data[1::2]
        return bytes(out)
    raise SystemExit("unsupported dtype %s" % src.dtype)


class Writer:
    def __init__(self):
        self.kv = bytearray()
        self.count = 0

    @staticmethod
    def string(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key, vtype, value):
        self.count += 1
        self.kv += self.string(key) + struct.pack("<I", vtype)
        if vtype == T_STRING:
            self.kv += self.string(value)
        elif vtype == T_UINT32:
            self.kv += struct.pack("<I", value)
        elif vtype == T_FLOAT32:
            self.kv += struct.pack("<f", value)
        elif vtype == T_BOOL:
            self.kv += struct.pack("<?", value)
        else:
            raise ValueError(vtype)

    def add_array(self, key, etype, values):
        self.count += 1
        self.kv += self.string(key) + struct.pack("<IIQ", T_ARRAY, etype, len(values))
        if etype == T_STRING:
            self.kv += b"".join(self.string(v) for v in values)
        elif etype == T_INT32:
            self.kv += struct.pack("<%di" % len(values), *values)
        else:
            raise ValueError(etype)


def tokenizer_metadata(w, model_dir, vocab_size):
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    tokens = [None] * vocab_size
    types = [TOKEN_UNUSED] * vocab_size
    for piece, i in tok["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = piece, TOKEN_NORMAL
    for added in tok.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = TOKEN_CONTROL if added.get("special") else TOKEN_USER_DEFINED
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = "[PAD%d]" % i
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add("tokenizer.ggml.model", T_STRING, "gpt2")
    w.add("tokenizer.ggml.pre", T_STRING, "qwen2")
    w.add_array("tokenizer.ggml.tokens", T_STRING, tokens)
    w.add_array("tokenizer.ggml.token_type", T_INT32, types)
    w.add_array("tokenizer.ggml.merges", T_STRING, merges)
    ids = {a["content"]: a["id"] for a in tok.get("added_tokens", [])}
    eos = ids.get("<|endoftext|>", ids.get("<|im_end|>"))
    if eos is not None:
        w.add("tokenizer.ggml.eos_token_id", T_UINT32, eos)
        w.add("tokenizer.ggml.bos_token_id", T_UINT32, eos)
        w.add("tokenizer.ggml.padding_token_id", T_UINT32, eos)
    w.add("tokenizer.ggml.add_bos_token", T_BOOL, False)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    model_dir, out_path = sys.argv[1], sys.argv[2]
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        c = json.load(f)
    if c.get("model_type") != "qwen2":
        raise SystemExit("only qwen2 checkpoints are converted (got %s)" % c.get("model_type"))
    sources = read_tensors(model_dir)
    matrix_dtype = sources["model.embed_tokens.weight"].dtype

    w = Writer()
    w.add("general.architecture", T_STRING, "qwen2")
    w.add("general.name", T_STRING, os.path.basename(os.path.normpath(model_dir)))
    w.add("general.file_type", T_UINT32, FTYPE[matrix_dtype])
    w.add("general.alignment", T_UINT32, GGUF_ALIGN)
    w.add("qwen2.block_count", T_UINT32, c["num_hidden_layers"])
    w.add("qwen2.context_length", T_UINT32, c["max_position_embeddings"])
    w.add("qwen2.embedding_length", T_UINT32, c["hidden_size"])
    w.add("qwen2.feed_forward_length", T_UINT32, c["intermediate_size"])
    w.add("qwen2.attention.head_count", T_UINT32, c["num_attention_heads"])
    w.add("qwen2.attention.head_count_kv", T_UINT32, c["num_key_value_heads"])
    w.add("qwen2.rope.freq_base", T_FLOAT32, float(c.get("rope_theta", 10000.0)))
    w.add("qwen2.attention.layer_norm_rms_epsilon", T_FLOAT32, float(c["rms_norm_eps"]))
    tokenizer_metadata(w, model_dir, c["vocab_size"])

    # Tensor infos, then the data, each tensor aligned.
    plan, infos, offset = [], bytearray(), 0
    for hf in sorted(sources):
        src = sources[hf]
        if hf == "lm_head.weight" and c.get("tie_word_embeddings"):
            continue
        vector = len(src.shape) == 1  # norms and biases: float32
        gtype = GGML_F32 if vector or src.dtype == "F32" else GGML_BF16
        size = src.size * (2 if vector and src.dtype == "BF16" else 1)
        dims = list(reversed(src.shape))  # GGUF lists the fastest-varying dimension first
        infos += Writer.string(gguf_name(hf)) + struct.pack("<I", len(dims))
        infos += struct.pack("<%dQ" % len(dims), *dims) + struct.pack("<IQ", gtype, offset)
        plan.append((src, vector, offset))
        offset += (size + GGUF_ALIGN - 1) // GGUF_ALIGN * GGUF_ALIGN

    with open(out_path + ".tmp", "wb") as out:
        out.write(b"GGUF" + struct.pack("<IQQ", 3, len(plan), w.count))
        out.write(w.kv)
        out.write(infos)
        out.write(b"\0" * (-out.tell() % GGUF_ALIGN))
        base = out.tell()
        for src, vector, at in plan:
            out.write(b"\0" * (base + at - out.tell()))
            out.write(as_float32(src) if vector else src.read())
    os.replace(out_path + ".tmp", out_path)
    print("wrote %s: %d tensors, %s matrices" % (out_path, len(plan), matrix_dtype))


if __name__ == "__main__":
    main()
