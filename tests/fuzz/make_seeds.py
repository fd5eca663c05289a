#!/usr/bin/env python3
"""Writes the hand-made seed inputs of each fuzz target (tests/fuzz/NAME/seed-*).

Seeds only: inputs that once crashed are added by hand as NAME/crash-* and are
never rewritten here. Run from anywhere: python3 tests/fuzz/make_seeds.py
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def requests():
    bodies = {
        "embed": {"inputs": ["What is RAG?", "a second text"], "instruction": "Retrieve",
                  "pooling": "last", "normalize": False, "dimensions": 16, "layer": 1},
        "embed-ids": {"inputs": [[1, 2, 3], [151643]], "truncate": True,
                      "truncation_direction": "left", "raw": True},
        "embed-cache": {"inputs": ["doc one", "doc two"], "ids": ["a", "b"], "cache": True},
        "embeddings": {"input": "hello", "model": "x", "encoding_format": "base64"},
        "rerank": {"query": "q", "texts": ["one", {"text": "two"}, {"id": "missing"}],
                   "raw_scores": True, "return_text": True},
        "cohere-rerank": {"query": "q", "documents": ["a", "b"], "top_n": 1,
                          "return_documents": True},
        "tokenize": {"inputs": ["Hello <|im_start|> world \u00e9\u0301", "x"],
                     "add_special_tokens": False},
        "detokenize": {"ids": [[9707, 1879], [151644, 151645]], "skip_special_tokens": True},
        "generate": {"prompt": "Once upon", "max_tokens": 4, "temperature": 0.5, "top_p": 0.9,
                     "top_k": 5, "seed": 7, "stop": ["\n"], "ignore_eos": True, "raw": True,
                     "stream": True, "return_tokens": True,
                     "documents": ["unknown", {"text": "a document"}, {"tokens": [1, 2]}],
                     "kv_source": "causal", "positions": "composite"},
        "completions": {"prompt": ["text"], "max_completion_tokens": 3, "n": 1,
                        "stream_options": {"include_usage": True}, "model": "m"},
        "chat": {"messages": [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                              {"role": "assistant", "content": "hello"}],
                 "max_tokens": 8, "documents": [{"id": "x"}], "kv_source": "embed"},
        "prompt-ids": {"prompt": [1, 2, 3, 151643], "documents": [{"tokens": [5]}]},
    }
    for name, body in bodies.items():
        write("request", name, json.dumps(body, ensure_ascii=False))


def tokenizer(target):
    texts = {
        "ascii": "Hello, world! It's 2024 and we're testing.\n\n  indented\ttab",
        "unicode": "na\u00efve caf\u00e9 \u65e5\u672c\u8a9e \U0001F600 e\u0301 \u212b",
        "special": "<|im_start|>user\nhi<|im_end|><|endoftext|> <s></s><unk>",
        "digits": "3.14159 1,000,000 x2 0x1F",
    }
    for name, text in texts.items():
        for flags in (0, 1, 2):
            write(target, "%s-%d" % (name, flags), bytes([flags]) + text.encode("utf-8"))
    write(target, "invalid-utf8", b"\x01abc\xff\xfe\xc3(\xe2\x82 \xf0\x9f\x98")
    write(target, "raw-ids", b"\x06" + struct.pack("<6i", 0, 1, 151643, -1, 1 << 30, 260))


def safetensors():
    def file(header, data):
        h = json.dumps(header).encode()
        h += b" " * (-len(h) % 8)
        return struct.pack("<Q", len(h)) + h + data

    f32 = struct.pack("<4f", 1, 2, 3, 4)
    write("safetensors", "two-tensors", file(
        {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
         "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]},
         "__metadata__": {"format": "pt"}}, f32 + b"\0" * 8))
    write("safetensors", "f16-scalar", file(
        {"s": {"dtype": "F16", "shape": [], "data_offsets": [0, 2]}}, b"\0\x3c"))
    write("safetensors", "empty", file({}, b""))
    write("safetensors", "zero-dim", file(
        {"z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}}, b""))


def config():
    with open(os.path.join(HERE, "..", "fixtures", "qwen2-tiny", "config.json")) as f:
        write("config", "qwen2-tiny", f.read())
    base = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
            "max_position_embeddings": 256}
    write("config", "llama", json.dumps(dict(base, architectures=["LlamaForCausalLM"],
                                             attention_bias=True, mlp_bias=True,
                                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                           "low_freq_factor": 1.0,
                                                           "high_freq_factor": 4.0,
                                                           "original_max_position_embeddings": 64},
                                             eos_token_id=[1, 2], bos_token_id=0)))
    write("config", "mistral", json.dumps(dict(base, architectures=["MistralForCausalLM"],
                                               sliding_window=16, head_dim=32,
                                               rope_scaling={"type": "linear", "factor": 2.0})))


def doc_cache():
    key = "%016x%016x" % (1, 2)
    ids = [1, 2, 3]
    layers, heads, dim = 2, 1, 2
    mean = last = 2
    payload = b"\0" * (2 * layers * heads * len(ids) * dim * 4 + (mean + last) * 4)
    header = {"key": key, "fingerprint": "fuzz", "source": "embed", "dtype": "float32",
              "layers": layers, "kv_heads": heads, "tokens": len(ids), "head_dim": dim,
              "ids": ids, "text_begin": 1, "text_end": 3, "mean": mean, "last": last,
              "payload_bytes": len(payload)}
    h = json.dumps(header).encode()
    entry = b"GSKVv1\0\0" + struct.pack("<Q", len(h)) + h + payload + b"\0" * 8
    write("doc_cache", "entry", b"\0" + entry)
    header16 = dict(header, dtype="bfloat16", source="causal", mean=0, last=0, text_begin=0,
                    payload_bytes=2 * layers * heads * len(ids) * dim * 2)
    h = json.dumps(header16).encode()
    write("doc_cache", "entry-bf16", b"\0" + b"GSKVv1\0\0" + struct.pack("<Q", len(h)) + h +
          b"\0" * header16["payload_bytes"] + b"\0" * 8)
    alias = {"alias": "my-doc", "key": key, "source": "embed", "ids": ids,
             "text_begin": 0, "text_end": 3}
    write("doc_cache", "alias", b"\1" + json.dumps(alias).encode())


if __name__ == "__main__":
    requests()
    tokenizer("tokenizer_bpe")
    tokenizer("tokenizer_spm")
    safetensors()
    config()
    doc_cache()
