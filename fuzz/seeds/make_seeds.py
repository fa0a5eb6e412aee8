#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/.

Run from fuzz/: `python3 seeds/make_seeds.py`. The seeds are small valid inputs, so the
fuzzer starts from files that pass the first checks instead of guessing magic numbers.
"""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


# --- gguf_reader: GGUF v3 with every metadata type and the tensor types the reader decodes.
def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(kind, value):
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 10: "<Q", 11: "<q", 12: "<d"}
    if kind in scalar:
        return struct.pack(scalar[kind], value)
    if kind == 7:
        return struct.pack("<B", 1 if value else 0)
    if kind == 8:
        return gguf_string(value)
    element, items = value
    return struct.pack("<IQ", element, len(items)) + b"".join(gguf_value(element, v) for v in items)


def gguf(metadata, tensors, alignment=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, kind, value in metadata:
        out += gguf_string(key) + struct.pack("<I", kind) + gguf_value(kind, value)
    data, infos = b"", b""
    for name, dims, dtype, raw in tensors:
        data += b"\0" * (-len(data) % alignment)
        infos += gguf_string(name) + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims)
        infos += struct.pack("<IQ", dtype, len(data))
        data += raw
    out += infos
    out += b"\0" * (-len(out) % alignment)
    return out + data


f16_one = struct.pack("<e", 1.0)
put("gguf_reader", "tiny.gguf", gguf(
    [
        ("general.architecture", 8, "llama"),
        ("general.alignment", 4, 32),
        ("llama.context_length", 4, 64),
        ("llama.rope.freq_base", 6, 10000.0),
        ("u8", 0, 1), ("i8", 1, -1), ("u16", 2, 2), ("i16", 3, -2), ("i32", 5, -3),
        ("u64", 10, 4), ("i64", 11, -4), ("f64", 12, 0.5), ("flag", 7, True),
        ("tokenizer.ggml.tokens", 9, (8, ["<s>", "</s>", "a", "b"])),
        ("tokenizer.ggml.scores", 9, (6, [0.0, 0.0, -1.0, -2.0])),
        ("nested", 9, (9, [(4, [1, 2]), (4, [])])),
        ("tokenizer.chat_template", 8, "{% for m in messages %}{{ m.content }}{% endfor %}"),
    ],
    [
        ("f32", [4], 0, struct.pack("<4f", 1, 2, 3, 4)),
        ("f16", [2, 2], 1, f16_one * 4),
        ("q4_0", [32], 2, f16_one + bytes(range(16))),
        ("q4_1", [32], 3, f16_one + f16_one + bytes(range(16))),
        ("q8_0", [32, 1], 8, f16_one + bytes(range(32))),
        ("bf16", [2], 30, b"\x80\x3f" * 2),
    ],
))
put("gguf_reader", "empty.gguf", gguf([], []))

# --- manifest: a valid plugin.json, one with models and config.
manifest = {
    "name": "demo",
    "version": "1.2.3",
    "library": "libdemo.so",
    "sha256": "0" * 64,
    "plugin_api": "0.4.0",
    "host": ">=0.3, <0.5",
}
put("manifest", "minimal.json", json.dumps(manifest, indent=2))
manifest.update(models=[{"path": "models/m.gguf", "sha256": "ab" * 32}], config={"threads": 2, "x": [1.5, None]})
put("manifest", "full.json", json.dumps(manifest, indent=2))

# --- bert_config: config.json, sentence_bert_config.json, modules.json, pooling config and
# model.safetensors, separated by 0xFF; a one-layer model of width 4.
config = {
    "model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute",
    "vocab_size": 3, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1,
    "intermediate_size": 4, "max_position_embeddings": 4, "type_vocab_size": 1,
    "layer_norm_eps": 1e-12,
}
sentence = {"max_seq_length": 4, "do_lower_case": False}
modules = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
pooling = {"word_embedding_dimension": 4, "pooling_mode_mean_tokens": True}


def safetensors(tensors, dtype="F32"):
    header, data = {}, b""
    size = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n * size]}
        data += bytes(n * size)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


h, f = 4, 4
names = [
    ("embeddings.word_embeddings.weight", [3, h]),
    ("embeddings.position_embeddings.weight", [4, h]),
    ("embeddings.token_type_embeddings.weight", [1, h]),
    ("embeddings.LayerNorm.weight", [h]), ("embeddings.LayerNorm.bias", [h]),
]
p = "encoder.layer.0"
for lin, rows, cols in [
    ("attention.self.query", h, h), ("attention.self.key", h, h), ("attention.self.value", h, h),
    ("attention.output.dense", h, h), ("intermediate.dense", f, h), ("output.dense", h, f),
]:
    names += [(f"{p}.{lin}.weight", [rows, cols]), (f"{p}.{lin}.bias", [rows])]
for norm in ["attention.output.LayerNorm", "output.LayerNorm"]:
    names += [(f"{p}.{norm}.weight", [h]), (f"{p}.{norm}.bias", [h])]


def bert(weights):
    parts = [json.dumps(config), json.dumps(sentence), json.dumps(modules), json.dumps(pooling)]
    return b"\xff".join(p.encode() for p in parts) + b"\xff" + weights


put("bert_config", "minilm_tiny", bert(safetensors(names)))
put("bert_config", "minilm_tiny_bert_prefix_f16", bert(safetensors([("bert." + n, s) for n, s in names], "F16")))

# --- chat_template: real templates, then 0xFF-separated message contents.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
          " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for message in messages %}{% set content = '<|start_header_id|>' + message['role']"
          " + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
FEATURES = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' and not m.content.strip().startswith('!') %}"
            "[{{ m.content.strip() | upper }}]{% endif %}{% if loop.index == 2 %}{% break %}{% endif %}{% endfor %}"
            "{% macro show(x) %}{{ x | tojson }}{% endmacro %}{{ show({'k': '<a>'}) }}"
            "{% if messages | length > 9 %}{{ raise_exception('too many') }}{% endif %}{{ eos_token }}")
conversation = b"\xffYou are terse.\xffHi there\xffHello! How can I help?\xff  !strip me  "
for name, source in [("chatml", CHATML), ("smollm2", SMOLLM2), ("llama3", LLAMA3), ("features", FEATURES)]:
    put("chat_template", name, source.encode() + conversation)

# --- http_request: chat, completion and embedding bodies.
put("http_request", "chat.json", json.dumps({
    "model": "llama@0.1.0",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
        {"role": "assistant", "content": None},
        {"role": "developer", "content": "x"},
    ],
    "max_tokens": 16, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
    "repetition_penalty": 1.1, "seed": 7, "stop": ["\n\n", "END"], "n": 1, "priority": -1,
    "stream": True, "stream_options": {"include_usage": True},
}))
put("http_request", "completion.json", json.dumps({
    "model": "llama", "prompt": "Once upon a time", "max_completion_tokens": 8, "stop": "."}))
put("http_request", "completion_tokens.json", json.dumps({"model": "llama", "prompt": [1, 2, 3]}))
put("http_request", "embedding.json", json.dumps({
    "model": "bert", "input": ["a", "b"], "encoding_format": "base64"}))
