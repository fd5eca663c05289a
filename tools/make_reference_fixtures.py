#!/usr/bin/env python3
"""Writes tiny random Llama, Mistral and windowed-Qwen2 checkpoints with
reference outputs computed by an independent implementation of Hugging Face's
conventions (plain numpy, float64), for tests/decoder_reference_test.cc.

    apt-get install python3-numpy
    python3 tools/make_reference_fixtures.py tests/fixtures      # write them
    python3 tools/make_reference_fixtures.py --check tests/fixtures/qwen2-tiny

Nothing here shares code with gritserve: the checkpoint is written from numpy
arrays in the safetensors layout, and the forward pass follows transformers'
modeling_llama / modeling_mistral / modeling_qwen2 (RMSNorm, rotate-half RoPE
with the llama3 frequency scaling, grouped-query attention, the sliding window
and Qwen2's max_window_layers, SiLU-gated MLP). `--check DIR` runs the forward
on an existing fixture with a reference.json of the same format (qwen2-tiny's
came from llama.cpp) and prints the largest differences, which is how this
script itself was validated.

Each reference.json holds, per case: `ids`, `causal_hidden` and
`bidirectional_hidden` ([T][hidden], after the final norm, positions 0..T-1),
`bidirectional_mean`, `greedy_tokens` (16 causal argmax steps) and
`greedy_top2_logprob_gap` (the margin at each step). Bidirectional attention has
no window (as GritLM's bidirectional Mistral).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

STEPS = 16


# ---------------------------------------------------------------- safetensors

def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        lo, hi = meta["data_offsets"]
        raw = data[base + lo:base + hi]
        dtype = meta["dtype"]
        if dtype == "F32":
            a = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{name}: dtype {dtype}")
        out[name] = a.reshape(meta["shape"]).astype(np.float64)
    return out


def to_bf16_bits(a):
    """Round-to-nearest-even float32 -> bfloat16 bits."""
    bits = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def write_safetensors(path, tensors):
    """tensors: name -> float array, stored as BF16 (as published models are)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        raw = to_bf16_bits(tensors[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def bf16_values(a):
    return (to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


# ---------------------------------------------------------------- the model

class Model:
    def __init__(self, config, weights):
        self.c = config
        self.w = weights
        c = config
        self.hq = c["num_attention_heads"]
        self.hkv = c.get("num_key_value_heads", self.hq)
        self.d = c.get("head_dim", c["hidden_size"] // self.hq)
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.layers = c["num_hidden_layers"]
        self.inv_freq = rope_inv_freq(c, self.d)
        arch = c["architectures"][0]
        # Which layers attend through a sliding window (transformers' layer_types).
        self.window = [None] * self.layers
        if arch == "MistralForCausalLM" and c.get("sliding_window"):
            self.window = [c["sliding_window"]] * self.layers
        if arch == "Qwen2ForCausalLM" and c.get("use_sliding_window"):
            first = c.get("max_window_layers", 28)
            self.window = [c["sliding_window"] if i >= first else None
                           for i in range(self.layers)]

    def norm(self, x, weight):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * weight

    def linear(self, x, prefix):
        y = x @ self.w[prefix + ".weight"].T
        if prefix + ".bias" in self.w:
            y = y + self.w[prefix + ".bias"]
        return y

    def rope(self, x, positions):  # x: [T, H, D]
        freqs = np.outer(positions, self.inv_freq)            # [T, D/2]
        emb = np.concatenate([freqs, freqs], axis=-1)         # [T, D]
        cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
        half = self.d // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rotated * sin

    def attention(self, x, i, causal):
        p = f"model.layers.{i}.self_attn"
        t = x.shape[0]
        q = self.linear(x, p + ".q_proj").reshape(t, self.hq, self.d)
        k = self.linear(x, p + ".k_proj").reshape(t, self.hkv, self.d)
        v = self.linear(x, p + ".v_proj").reshape(t, self.hkv, self.d)
        pos = np.arange(t)
        q, k = self.rope(q, pos), self.rope(k, pos)
        qi, kj = pos[:, None], pos[None, :]
        allowed = np.ones((t, t), dtype=bool)
        if causal:
            allowed = kj <= qi
            if self.window[i]:
                allowed &= (qi - kj) < self.window[i]
        out = np.zeros((t, self.hq, self.d))
        group = self.hq // self.hkv
        for h in range(self.hq):
            scores = q[:, h, :] @ k[:, h // group, :].T / math.sqrt(self.d)
            scores = np.where(allowed, scores, -np.inf)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            out[:, h, :] = probs @ v[:, h // group, :]
        return self.linear(out.reshape(t, self.hq * self.d), p + ".o_proj")

    def mlp(self, x, i):
        p = f"model.layers.{i}.mlp"
        gate = self.linear(x, p + ".gate_proj")
        silu = gate / (1.0 + np.exp(-gate))
        return self.linear(silu * self.linear(x, p + ".up_proj"), p + ".down_proj")

    def hidden(self, ids, causal):  # -> [T, hidden], after the final norm
        x = self.w["model.embed_tokens.weight"][np.asarray(ids)]
        for i in range(self.layers):
            pre = f"model.layers.{i}"
            x = x + self.attention(self.norm(x, self.w[pre + ".input_layernorm.weight"]), i, causal)
            x = x + self.mlp(self.norm(x, self.w[pre + ".post_attention_layernorm.weight"]), i)
        return self.norm(x, self.w["model.norm.weight"])

    def logits(self, h):
        head = self.w.get("lm_head.weight")
        if head is None or self.c.get("tie_word_embeddings", False):
            head = self.w["model.embed_tokens.weight"]
        return h @ head.T

    def greedy(self, ids, steps=STEPS):
        seq, tokens, gaps = list(ids), [], []
        for _ in range(steps):
            logits = self.logits(self.hidden(seq, causal=True)[-1])
            logp = logits - logits.max()
            logp = logp - np.log(np.exp(logp).sum())
            top = np.argsort(-logp)[:2]
            tokens.append(int(top[0]))
            gaps.append(float(logp[top[0]] - logp[top[1]]))
            seq.append(int(top[0]))
        return tokens, gaps


def rope_inv_freq(c, d):
    theta = c.get("rope_theta", 10000.0)
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    rs = c.get("rope_scaling")
    if not rs:
        return inv
    kind = rs.get("rope_type", rs.get("type"))
    if kind == "linear":
        return inv / rs["factor"]
    if kind != "llama3":
        raise ValueError(f"rope_scaling {kind}")
    factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / lo, old / hi
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled)


# ---------------------------------------------------------------- fixtures

def reference_case(model, ids, label):
    causal = model.hidden(ids, causal=True)
    bidir = model.hidden(ids, causal=False)
    tokens, gaps = model.greedy(ids)
    return {"text": label, "ids": [int(i) for i in ids],
            "causal_hidden": causal.tolist(), "bidirectional_hidden": bidir.tolist(),
            "bidirectional_mean": bidir.mean(axis=0).tolist(),
            "greedy_tokens": tokens, "greedy_top2_logprob_gap": gaps}


def random_weights(c, rng):
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hq = c["num_attention_heads"]
    hkv = c.get("num_key_value_heads", hq)
    d = c.get("head_dim", h // hq)
    arch = c["architectures"][0]
    bias = arch == "Qwen2ForCausalLM" or c.get("attention_bias", False)
    w = {"model.embed_tokens.weight": rng.normal(0, 1.0, (v, h)),
         "model.norm.weight": rng.uniform(0.5, 1.5, h)}
    if not c.get("tie_word_embeddings", False):
        w["lm_head.weight"] = rng.normal(0, 0.25, (v, h))
    s = 1 / math.sqrt(h)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        w[p + ".input_layernorm.weight"] = rng.uniform(0.5, 1.5, h)
        w[p + ".post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, h)
        for name, rows in (("q", hq * d), ("k", hkv * d), ("v", hkv * d)):
            # Large q/k weights make the attention sharp, so a wrong mask or
            # position shows far above float32 noise.
            scale = 3 * s if name in "qk" else s
            w[f"{p}.self_attn.{name}_proj.weight"] = rng.normal(0, scale, (rows, h))
            if bias:
                w[f"{p}.self_attn.{name}_proj.bias"] = rng.normal(0, 0.1, rows)
        w[p + ".self_attn.o_proj.weight"] = rng.normal(0, s, (h, hq * d))
        w[p + ".mlp.gate_proj.weight"] = rng.normal(0, s, (inter, h))
        w[p + ".mlp.up_proj.weight"] = rng.normal(0, s, (inter, h))
        w[p + ".mlp.down_proj.weight"] = rng.normal(0, 1 / math.sqrt(inter), (h, inter))
    # Stored as BF16; the reference computes on exactly the stored values.
    return {k: bf16_values(a) for k, a in w.items()}


def base_config(arch, model_type, vocab):
    return {"architectures": [arch], "model_type": model_type, "hidden_size": 64,
            "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1,
            "eos_token_id": 2, "hidden_act": "silu", "torch_dtype": "bfloat16"}


FIXTURES = {
    # Llama: no biases, an untied head, RoPE theta 10,000 with llama3 scaling
    # whose original context is short enough that every frequency band
    # (kept, smoothed, divided) occurs within these prompts.
    "llama-tiny": dict(base_config("LlamaForCausalLM", "llama", 512),
                       tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64}),
    # Mistral: a sliding window of 8, shorter than most prompts; one KV head.
    "mistral-tiny": dict(base_config("MistralForCausalLM", "mistral", 512),
                         num_key_value_heads=1, sliding_window=8, tie_word_embeddings=False),
    # Qwen2 with use_sliding_window: layer 0 attends fully, layer 1 (>=
    # max_window_layers) through a window of 8; q/k/v biases, tied embeddings.
    "qwen2-window-tiny": dict(base_config("Qwen2ForCausalLM", "qwen2", 512),
                              rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                              use_sliding_window=True, sliding_window=8, max_window_layers=1),
}
PROMPT_LENGTHS = (5, 13, 40)


MIN_MARGIN = 0.02  # nats between the best and second token at every greedy step


def write_fixture(out_dir, name, config, seed):
    # The first seed whose greedy steps all have a clear winner, so that float32
    # rounding cannot flip a token.
    for seed in range(seed * 1000, seed * 1000 + 100):
        rng = np.random.default_rng(seed)
        weights = random_weights(config, rng)
        model = Model(config, weights)
        cases = []
        for n in PROMPT_LENGTHS:
            ids = rng.integers(3, config["vocab_size"], n).tolist()
            cases.append(reference_case(model, ids, f"random ids, {n} tokens"))
        if min(min(c["greedy_top2_logprob_gap"]) for c in cases) >= MIN_MARGIN:
            break
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(d, "model.safetensors"), weights)
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"generator": "tools/make_reference_fixtures.py (numpy float64, "
                                "Hugging Face conventions)", "cases": cases}, f)
    print(f"{d}: {len(cases)} cases (seed {seed}); smallest greedy margin "
          f"{min(min(c['greedy_top2_logprob_gap']) for c in cases):.4f}")


def check(d):
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    model = Model(config, read_safetensors(os.path.join(d, "model.safetensors")))
    with open(os.path.join(d, "reference.json")) as f:
        ref = json.load(f)
    worst = 0.0
    for c in ref["cases"]:
        for key, causal in (("causal_hidden", True), ("bidirectional_hidden", False)):
            diff = np.abs(model.hidden(c["ids"], causal) - np.asarray(c[key])).max()
            worst = max(worst, diff)
        n = len(c["greedy_tokens"])
        tokens, _ = model.greedy(c["ids"], n)
        same = "same" if tokens == c["greedy_tokens"] else f"DIFFERENT {tokens}"
        print(f"{c.get('text', '')[:30]!r}: greedy tokens {same}")
    print(f"largest hidden-state difference: {worst:.3g}")
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", help="fixtures folder to write into, or one fixture with --check")
    ap.add_argument("--check", action="store_true", help="compare against an existing fixture")
    args = ap.parse_args()
    if args.check:
        sys.exit(0 if check(args.dir) < 2e-4 else 1)
    for seed, (name, config) in enumerate(FIXTURES.items()):
        write_fixture(args.dir, name, config, seed + 1)


if __name__ == "__main__":
    main()
