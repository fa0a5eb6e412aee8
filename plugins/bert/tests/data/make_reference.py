#!/usr/bin/env python3
"""Writes tests/data/minilm_reference.json: sentence-transformers embeddings of a fixed set of
sentences with all-MiniLM-L6-v2, the independent reference of the real-model tests.

NOT part of the test path (the Rust tests read the JSON and never need torch). Regenerate with a
Python that has torch + sentence-transformers, e.g.:

    /tmp/refenv/bin/python plugins/bert/tests/data/make_reference.py \
        /root/.cache/pio/models/all-MiniLM-L6-v2
"""

import hashlib
import json
import os
import sys

from sentence_transformers import SentenceTransformer

LONG = " ".join(
    f"Sentence number {i} talks about GPUs, tokenizers and the weather in Zürich."
    for i in range(40)
)

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome!",
    "Inference-PIO runs BERT on a software Vulkan device.",
    "Ça ne fait rien — naïve café owners say “bonjour” to 東京 visitors 🙂.",
    "   leading and trailing spaces   ",
    "",
    "Quantum chromodynamics describes the strong interaction between quarks and gluons.",
    "def embed(texts): return model.encode(texts, normalize_embeddings=True)",
    "a",
    LONG,
]


def main() -> None:
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/pio/models/all-MiniLM-L6-v2")
    model = SentenceTransformer(model_dir, device="cpu")
    embeddings = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    token_counts = [len(model.tokenize([s])["input_ids"][0]) for s in SENTENCES]
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    out = {
        "model": "all-MiniLM-L6-v2",
        "model_sha256": sha,
        "max_seq_length": model.max_seq_length,
        "generator": "sentence-transformers " + __import__("sentence_transformers").__version__,
        "sentences": SENTENCES,
        "token_counts": token_counts,
        "embeddings": [[float(x) for x in e] for e in embeddings],
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_reference.json")
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path}: {len(SENTENCES)} sentences, token counts {token_counts}")


if __name__ == "__main__":
    main()
