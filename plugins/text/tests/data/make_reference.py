#!/usr/bin/env python3
"""Produce reference token ids and chat renders for pio-text's parity tests.

NOT part of the test path: the Rust tests only read smollm2_ids.json, which
this script wrote. Re-run it by hand if the cases change:

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install 'transformers<5' gguf tokenizers jinja2 sentencepiece
    /tmp/refenv/bin/python plugins/text/tests/data/make_reference.py \
        ~/.cache/pio/models/SmolLM2-135M-Instruct.Q4_1.gguf \
        > plugins/text/tests/data/smollm2_ids.json

The independent implementation is Hugging Face `transformers` (which builds
a `tokenizers` BPE from the GGUF vocabulary itself) and Python `jinja2` via
`apply_chat_template`. One deliberate patch: the GGUF declares
`tokenizer.ggml.pre = smollm`, whose llama.cpp rule isolates every digit
(`\\p{N}`) before the GPT-2 byte-level split, as SmolLM2's original
tokenizer.json does with `Digits(individual_digits=True)`. transformers'
GGUF converter drops that step, so it is put back here. (Its converter also
mislabels BOS/EOS for this file, so special ids are not taken from it; the
encodes below use add_special_tokens=False.)
"""

import hashlib
import json
import os
import sys

import transformers.modeling_gguf_pytorch_utils as gguf_utils
from tokenizers import pre_tokenizers
from transformers import AutoTokenizer

# transformers refuses to read GGUF metadata without torch, although only
# tensor loading needs it; the tokenizer path never touches tensors.
gguf_utils.is_torch_available = lambda: True

CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "héllo wörld — naïve café, Ελληνικά, русский",
    "日本語のテキストと中文文本",
    "emoji: 🙂🚀👩‍👩‍👧 and ✓",
    "tabs\tand\nnewlines\n\n\nand   many    spaces   ",
    "   leading and trailing   ",
    "x =  42",
    "  123456",
    "3.14159 + 2,718 = 5.85959; 1e-10 x 10000000",
    "a1b22c333   4444\t55555",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{:?}\", v);\n}\n",
    "def f(x):\n\treturn x**2  # square\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|im_end|><file_sep>x",
    "I'm sure they'll say it's what we'd done, we've seen",
    "",
    " ",
    "\n",
]

CONVERSATIONS = {
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "default_system": [
        {"role": "user", "content": "Hi there!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Count to 3."},
    ],
}


def main(path):
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
    )
    cases = []
    for text in CASES:
        ids = tok.encode(text, add_special_tokens=False)
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )
    chats = {}
    for name, messages in CONVERSATIONS.items():
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chats[name] = {
            "messages": messages,
            "rendered": rendered,
            "ids": tok.encode(rendered, add_special_tokens=False),
        }
    json.dump(
        {
            "model": os.path.basename(path),
            "model_sha256": sha,
            "generator": "transformers "
            + __import__("transformers").__version__
            + ", tokenizers "
            + __import__("tokenizers").__version__
            + ", smollm digit split patched in",
            "vocab_size": len(tok),
            "cases": cases,
            "chats": chats,
        },
        sys.stdout,
        ensure_ascii=False,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
