#!/usr/bin/env python3
"""Gemma 3 fidelity reference: an fp32 forward pass of a Gemma 3 GGUF in numpy, on the weights
dequantized by the `gguf` package, printing the numbers the Llama plugin's Gemma 3 tests check
(plugins/llama/tests/data/gemma3_reference.json).

NOT part of the test path: the Rust tests only read the JSON this script writes. Re-run by hand:

    python3 -m venv /tmp/gemma-venv && /tmp/gemma-venv/bin/pip install gguf numpy
    /tmp/gemma-venv/bin/python scripts/gemma3_reference.py \\
        ~/.cache/pio/models/gemma-3-270m-q4_k_m.gguf \\
        path/to/llama.cpp/build/bin/llama-tokenize \\
        plugins/llama/tests/data/gpl-3.0.txt > plugins/llama/tests/data/gemma3_reference.json

Why numpy and not transformers: transformers' GGUF loader would need torch (several GB) for a
270M model, and a forward pass of our own keeps every convention in view, each one taken from
the model's definition: embeddings scaled by sqrt(hidden); RMSNorm in float32 with the GGUF's
norm weights (llama.cpp's converter already added Gemma's +1); per-head RMSNorm of q and k
before RoPE; RoPE on the halves of each head (`rotate_half`), base 10 000 on sliding-window
layers and the file's `rope.freq_base` on every sixth (global) layer; attention scaled by
1/sqrt(head_dim), causal, the local layers seeing the last `sliding_window` positions; the
attention and feed-forward outputs normalised before their residual adds; GeGLU with
GELU's tanh approximation; the output projection tied to the embeddings. Everything is float32
except softmax and log-probabilities, taken in float64. Token ids come from llama-tokenize (the
reference tokenizer, independent of the code under test).

Printed JSON:
- `prompts`: for each prompt, its ids (BOS first), the argmax of the last position's logits,
  the 64 largest logits (ids and values) and the log-sum-exp of all of them;
- `perplexity`: the text (tokenized without BOS) in non-overlapping windows of WINDOW tokens,
  each BOS + WINDOW - 1 text tokens, every text token scored (`pio perplexity`'s plain
  method): log-probability sum and count of the first WINDOWS windows;
- `perplexity_llama_cpp`: llama.cpp's `llama-perplexity` method on the same text: the text
  tokenized with BOS, cut into chunks of WINDOW tokens, each chunk's first token replaced by
  BOS, only the second half of each chunk scored (logits at positions WINDOW/2 .. WINDOW-2):
  the same sums for the first WINDOWS chunks.
"""

import hashlib
import json
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader, dequantize

WINDOW = 512
WINDOWS = 2
TOP = 64
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 5, 8, 13, 21,",
]
ARCH = "gemma3"


def tokenize(llama_tokenize: str, model: str, text: str, bos: bool) -> list[int]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        args = [llama_tokenize, "-m", model, "-f", f.name, "--ids", "--log-disable"]
        if not bos:
            args.append("--no-bos")
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class Gemma3:
    def __init__(self, path: str):
        reader = GGUFReader(path)
        self.meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}
        self.tensors = {
            t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
                [int(d) for d in reversed(t.shape)]
            )
            for t in reader.tensors
        }
        m = lambda key: self.meta[f"{ARCH}.{key}"]
        self.n_layer = m("block_count")
        self.n_embd = m("embedding_length")
        self.n_head = m("attention.head_count")
        self.n_kv = m("attention.head_count_kv")
        self.head_dim = m("attention.key_length")
        self.eps = np.float32(m("attention.layer_norm_rms_epsilon"))
        self.window = m("attention.sliding_window")
        self.global_base = m("rope.freq_base")
        self.local_base = self.meta.get(f"{ARCH}.rope.freq_base_swa", 10_000.0)
        self.bos = reader.fields["tokenizer.ggml.bos_token_id"].contents()

    def w(self, name: str) -> np.ndarray:
        return self.tensors[f"{name}.weight"]

    def rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        mean_sq = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
        return (x / np.sqrt(mean_sq + self.eps)) * weight

    def rope(self, x: np.ndarray, base: float) -> np.ndarray:
        # x: [T, heads, head_dim]; rotate_half pairs (i, i + head_dim/2).
        t, half = x.shape[0], self.head_dim // 2
        freqs = base ** (-np.arange(half, dtype=np.float64) * 2.0 / self.head_dim)
        angles = np.arange(t, dtype=np.float64)[:, None] * freqs[None, :]
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    def forward(self, ids: list[int]) -> np.ndarray:
        """Logits [T, vocab] of a sequence starting at position 0."""
        t = len(ids)
        x = self.w("token_embd")[ids] * np.float32(np.sqrt(self.n_embd))
        pos = np.arange(t)
        causal = pos[None, :] <= pos[:, None]
        local = causal & (pos[:, None] - pos[None, :] < self.window)
        group = self.n_head // self.n_kv
        for i in range(self.n_layer):
            blk = lambda name: self.w(f"blk.{i}.{name}")
            is_global = i % 6 == 5
            h = self.rms_norm(x, blk("attn_norm"))
            q = (h @ blk("attn_q").T).reshape(t, self.n_head, self.head_dim)
            k = (h @ blk("attn_k").T).reshape(t, self.n_kv, self.head_dim)
            v = (h @ blk("attn_v").T).reshape(t, self.n_kv, self.head_dim)
            base = self.global_base if is_global else self.local_base
            q = self.rope(self.rms_norm(q, blk("attn_q_norm")), base)
            k = self.rope(self.rms_norm(k, blk("attn_k_norm")), base)
            mask = causal if is_global else local
            out = np.empty((t, self.n_head, self.head_dim), dtype=np.float32)
            for head in range(self.n_head):
                kv = head // group
                scores = (q[:, head, :] @ k[:, kv, :].T).astype(np.float64) / np.sqrt(self.head_dim)
                scores = np.where(mask, scores, -np.inf)
                scores -= scores.max(axis=-1, keepdims=True)
                p = np.exp(scores)
                p /= p.sum(axis=-1, keepdims=True)
                out[:, head, :] = (p.astype(np.float32) @ v[:, kv, :])
            attn = out.reshape(t, -1) @ blk("attn_output").T
            x = x + self.rms_norm(attn, blk("post_attention_norm"))
            h = self.rms_norm(x, blk("ffn_norm"))
            gate, up = h @ blk("ffn_gate").T, h @ blk("ffn_up").T
            inner = np.float32(np.sqrt(2.0 / np.pi)) * (gate + np.float32(0.044715) * gate**3)
            act = np.float32(0.5) * gate * (np.float32(1.0) + np.tanh(inner)) * up
            x = x + self.rms_norm(act @ blk("ffn_down").T, blk("post_ffw_norm"))
        x = self.rms_norm(x, self.w("output_norm"))
        head = self.tensors.get("output.weight", self.w("token_embd"))
        return x @ head.T


def log_probs(logits: np.ndarray, targets: list[int]) -> float:
    """Sum of log-softmax(logits[i])[targets[i]] in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return float(sum(z[i, tgt] - lse[i] for i, tgt in enumerate(targets)))


def main() -> None:
    path, llama_tokenize, text_path = sys.argv[1:4]
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    model = Gemma3(path)
    text = open(text_path, encoding="utf-8").read()

    prompts = []
    for prompt in PROMPTS:
        ids = tokenize(llama_tokenize, path, prompt, bos=True)
        last = model.forward(ids)[-1].astype(np.float64)
        top = np.argsort(-last)[:TOP]
        lse = float(np.log(np.exp(last - last.max()).sum()) + last.max())
        prompts.append(
            {
                "text": prompt,
                "ids": ids,
                "argmax": int(top[0]),
                "top_ids": [int(i) for i in top],
                "top_logits": [float(last[i]) for i in top],
                "logsumexp": lse,
            }
        )
        print(f"{prompt!r}: argmax {int(top[0])}", file=sys.stderr)

    tokens = tokenize(llama_tokenize, path, text, bos=False)
    windows = []
    for w in range(WINDOWS):
        chunk = tokens[w * (WINDOW - 1) : (w + 1) * (WINDOW - 1)]
        ids = [model.bos] + chunk
        logits = model.forward(ids)
        windows.append({"log_prob_sum": log_probs(logits[:-1], ids[1:]), "scored": len(chunk)})
        print(f"plain window {w}: {windows[-1]}", file=sys.stderr)

    with_bos = tokenize(llama_tokenize, path, text, bos=True)
    chunks = []
    first = WINDOW // 2
    for c in range(WINDOWS):
        ids = with_bos[c * WINDOW : (c + 1) * WINDOW]
        ids[0] = model.bos
        logits = model.forward(ids)
        targets = ids[first + 1 :]
        chunks.append(
            {"log_prob_sum": log_probs(logits[first:-1], targets), "scored": len(targets)}
        )
        print(f"llama.cpp chunk {c}: {chunks[-1]}", file=sys.stderr)

    json.dump(
        {
            "model_sha256": digest,
            "reference": "scripts/gemma3_reference.py (numpy fp32 on gguf-dequantized weights)",
            "prompts": prompts,
            "perplexity": {"window": WINDOW, "tokens": len(tokens), "windows": windows},
            "perplexity_llama_cpp": {
                "ctx": WINDOW,
                "tokens_with_bos": len(with_bos),
                "chunks": chunks,
            },
        },
        sys.stdout,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
