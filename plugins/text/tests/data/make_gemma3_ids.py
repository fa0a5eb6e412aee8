#!/usr/bin/env python3
"""Produce the reference token ids of pio-text's Gemma 3 parity test with llama-tokenize.

NOT part of the test path: the Rust test only reads gemma3_ids.json, which this script wrote.
Re-run it by hand if the cases change (llama-tokenize from a llama.cpp CPU build):

    python3 plugins/text/tests/data/make_gemma3_ids.py \\
        path/to/llama.cpp/build/bin/llama-tokenize \\
        ~/.cache/pio/models/gemma-3-270m-q4_k_m.gguf \\
        > plugins/text/tests/data/gemma3_ids.json

llama.cpp's SPM tokenizer is the reference: it is what llama.cpp users get from this file, and
it is independent of the `tokenizers` crate. Each case is written to a file and tokenized with
`llama-tokenize -f FILE --ids` (the model's BOS added, special tokens parsed), so the text
reaches it byte for byte.
"""

import ast
import hashlib
import json
import os
import subprocess
import sys
import tempfile

CASES = [
    "Hello world",
    "The capital of France is Paris.",
    " leading space and trailing space ",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b):\n\treturn a ** b  # tabs\n\n\n",
    "3.14159265358979 1,000,000 2026-12-01 0xDEADBEEF 1e-6",
    "Emoji: 🦀🚀👍🏽 👨‍👩‍👧 ❤️",
    "日本語のテキストと中文文本，还有한국어 텍스트.",
    "a  b   c    d\t\te\n\nf\n\n\n\ng",
    "     indented by five",
    "Ünïcödé àccents: naïve café résumé Ångström",
    "Rare: 𓀀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u0b9a\u0bcd \uffff",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<div><b>bold</b> and <code>code</code></div>",
    "Mixed: αβγ δ ε — “quotes” ‘single’ … ½ ™ © ®",
    "",
]


def main() -> None:
    tokenize, model = sys.argv[1], sys.argv[2]
    with open(model, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.txt")
        for text in CASES:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            out = subprocess.run(
                [tokenize, "-m", model, "-f", path, "--ids", "--log-disable"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            cases.append({"text": text, "ids": ast.literal_eval(out.strip().splitlines()[-1])})
    json.dump(
        {
            "model_sha256": digest,
            "reference": "llama.cpp llama-tokenize -f FILE --ids",
            "cases": cases,
        },
        sys.stdout,
        ensure_ascii=False,
        indent=1,
    )
    print()


if __name__ == "__main__":
    main()
