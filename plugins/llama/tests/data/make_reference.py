#!/usr/bin/env python3
"""Reference numbers for the Llama plugin's fidelity tests, from an independent fp32
implementation: Hugging Face transformers loading the GGUF and dequantizing it to float32.

NOT part of the test path: the Rust tests only read the files this script writes. Re-run by
hand (needs torch, transformers, gguf, accelerate; several GB):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch transformers gguf accelerate
    /tmp/refenv/bin/python plugins/llama/tests/data/make_reference.py \
        ~/.cache/pio/models/SmolLM2-135M-Instruct.Q4_1.gguf plugins/llama/tests/data

Writes:
- smollm2_reference.json: the ChatML prompt ids for "What is the capital of France?" (the
  template's default system message, add_generation_prompt), the greedy continuation (ids and
  text), and the perplexity of gpl-3.0.txt computed the way `pio perplexity` does it;
- smollm2_france_logits.f32: the last-position logits of that prompt (little-endian f32).

Tokenization: transformers' GGUF tokenizer with the `smollm` digit split put back (llama.cpp
isolates every digit before the GPT-2 split; transformers' converter drops that step).
Perplexity convention (the same as `pio perplexity`): the text is tokenized once (no BOS: the
GGUF says add_bos_token = false), cut into consecutive non-overlapping windows of WINDOW tokens
(the last may be shorter), each window evaluated from scratch, and every token of a window but
its first scored; PPL = exp(-mean log-probability of the scored tokens).
"""

import hashlib
import json
import math
import os
import sys

import numpy as np
import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

WINDOW = 512
QUESTION = "What is the capital of France?"


def main():
    gguf_path, out_dir = sys.argv[1], sys.argv[2]
    model_dir, gguf_file = os.path.split(os.path.abspath(gguf_path))
    sha256 = hashlib.sha256(open(gguf_path, "rb").read()).hexdigest()

    tok = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file=gguf_file, torch_dtype=torch.float32
    )
    model.eval()

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids])).logits[0, -1].float().numpy()
        generated = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=24, do_sample=False, eos_token_id=2
        )[0, len(prompt_ids):].tolist()
    logits.astype("<f4").tofile(os.path.join(out_dir, "smollm2_france_logits.f32"))

    text = open(os.path.join(out_dir, "gpl-3.0.txt"), encoding="utf-8").read()
    ids = tok.encode(text, add_special_tokens=False)
    total, scored, windows = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(ids), WINDOW):
            window = ids[start : start + WINDOW]
            if len(window) < 2:
                continue
            out = model(torch.tensor([window])).logits[0].float()
            logp = torch.log_softmax(out, dim=-1)
            window_sum = sum(float(logp[i - 1, window[i]]) for i in range(1, len(window)))
            windows.append({"log_prob_sum": window_sum, "scored": len(window) - 1})
            total += window_sum
            scored += len(window) - 1
    ppl = math.exp(-total / scored)

    top = np.argsort(-logits)[:5].tolist()
    json.dump(
        {
            "model_sha256": sha256,
            "generator": "transformers fp32 (dequantized GGUF), torch " + torch.__version__,
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "greedy_ids": generated,
            "greedy_text": tok.decode(generated, skip_special_tokens=False),
            "top5_ids": top,
            "top5_logits": [float(logits[i]) for i in top],
            "perplexity": {
                "file": "gpl-3.0.txt",
                "window": WINDOW,
                "tokens": len(ids),
                "scored_tokens": scored,
                "ppl": ppl,
                "windows": windows,
            },
        },
        open(os.path.join(out_dir, "smollm2_reference.json"), "w"),
        indent=1,
    )
    print(f"greedy: {tok.decode(generated)!r}; ppl {ppl:.4f} over {scored} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
