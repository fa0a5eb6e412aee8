//! Test fixtures: small random-weight Llama and Gemma 3 GGUF files with a working byte-level BPE
//! tokenizer, and the locations of the real SmolLM2 and Gemma 3 models.

use std::collections::HashMap;
use std::path::PathBuf;

use pio_gguf::{GgufFile, GgufWriter, MetadataValue, TensorType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The real SmolLM2 model; a test that needs it is `#[ignore = "needs the SmolLM2 model: …"]`
/// and fails without it when run (see [`pio_testkit`]).
pub fn smollm2() -> PathBuf {
    pio_testkit::model(pio_testkit::SMOLLM2)
}

/// The real Gemma 3 270M model; a test that needs it is
/// `#[ignore = "needs the Gemma 3 model: …"]`.
pub fn gemma3() -> PathBuf {
    pio_testkit::model(pio_testkit::GEMMA3)
}

/// ChatML, as SmolLM2 ships it (without the default system message).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Shape and storage types of a random test model.
#[derive(Debug, Clone)]
pub struct TinyConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub n_ff: usize,
    /// Values per attention head (`attention.key_length`); `None`: `n_embd / n_head`, and the
    /// key is not written.
    pub head_dim: Option<usize>,
    pub context_length: usize,
    /// Gemma 3's `attention.sliding_window`.
    pub sliding_window: usize,
    /// Tie the output projection to the embedding (no `output.weight`).
    pub tied: bool,
    /// Storage types cycled over the matrices, in file order.
    pub types: Vec<TensorType>,
    pub seed: u64,
    /// `general.architecture`.
    pub architecture: &'static str,
}

impl Default for TinyConfig {
    fn default() -> Self {
        TinyConfig {
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            head_dim: None,
            context_length: 256,
            sliding_window: 4,
            tied: false,
            types: vec![
                TensorType::Q8_0,
                TensorType::Q4_0,
                TensorType::Q4_1,
                TensorType::F16,
                TensorType::F32,
            ],
            seed: 1,
            architecture: "llama",
        }
    }
}

impl TinyConfig {
    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// A Gemma-3-shaped model: heads wider than `n_embd / n_head`, one key/value head, a
    /// window of 4 positions, the global layer as the sixth of seven.
    pub fn gemma3() -> Self {
        TinyConfig {
            n_layer: 7,
            n_head: 4,
            n_head_kv: 1,
            head_dim: Some(32),
            types: vec![TensorType::Q8_0, TensorType::Q4_0, TensorType::F16],
            architecture: "gemma3",
            ..TinyConfig::default()
        }
    }
}

/// Special tokens of the test vocabulary, at ids 0, 1, 2 like SmolLM2.
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Text the test tokenizer's merges are learnt from.
const CORPUS: &str = "The capital of France is Paris. The cat sat on the mat. \
    What is the capital of the country? There is a theory that the rain in Spain stays mainly \
    in the plain. Hello world, hello there, the end.";

/// GPT-2's byte-to-unicode map: printable bytes map to themselves, the rest to U+0100 onwards.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

/// A byte-level BPE vocabulary: specials, 256 byte tokens, then `n_merges` merges learnt greedily
/// from [`CORPUS`] (split GPT-2 style into words with their leading space).
pub fn bpe_vocab(n_merges: usize) -> (Vec<String>, Vec<String>) {
    let chars = byte_chars();
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(chars.iter().map(|c| c.to_string()));
    let mut words: Vec<Vec<String>> = Vec::new();
    for (i, w) in CORPUS.split(' ').enumerate() {
        let w = if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        };
        words.push(w.bytes().map(|b| chars[b as usize].to_string()).collect());
    }
    let mut merges = Vec::new();
    for _ in 0..n_merges {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        let Some(best) = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .map(|(pair, _)| pair)
        else {
            break;
        };
        let merged = format!("{}{}", best.0, best.1);
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == best.0 && w[i + 1] == best.1 {
                    w[i] = merged.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{} {}", best.0, best.1));
        tokens.push(merged);
    }
    (tokens, merges)
}

/// Random tensors for a test model: matrices cycle through the configured storage types.
struct RandomTensors<'a> {
    rng: StdRng,
    types: std::iter::Cycle<std::slice::Iter<'a, TensorType>>,
}

impl RandomTensors<'_> {
    /// A `rows` × `cols` matrix of uniform values in `±scale`.
    fn matrix(&mut self, w: &mut GgufWriter, name: &str, rows: usize, cols: usize, scale: f32) {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| self.rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        let dtype = *self.types.next().unwrap();
        let dims = [cols as u64, rows as u64];
        match pio_gguf::writer::quantize(dtype, &values) {
            Ok(bytes) => w.add_tensor(name, &dims, dtype, bytes),
            // Types the writer cannot encode get zero bytes, for unsupported-type tests.
            Err(_) => {
                let blocks = (rows * cols) as u64 / dtype.block_size().unwrap();
                let size = blocks * dtype.type_size().unwrap();
                w.add_tensor(name, &dims, dtype, vec![0u8; size as usize])
            }
        }
        .unwrap();
    }

    /// An f32 norm weight of `len` values around 1.
    fn norm(&mut self, w: &mut GgufWriter, name: &str, len: usize) {
        let values: Vec<f32> = (0..len)
            .map(|_| self.rng.random_range(0.8f32..1.2))
            .collect();
        w.add_f32_tensor(name, &[len as u64], TensorType::F32, &values)
            .unwrap();
    }
}

/// A writer holding the metadata of `cfg` under the key prefix `arch` (shapes, RoPE base,
/// norm epsilon) and the test tokenizer.
fn writer_with_vocab(cfg: &TinyConfig, arch: &str, rope_base: f32, eps: f32) -> GgufWriter {
    let (tokens, merges) = bpe_vocab(40);
    let mut token_types = vec![1i32; tokens.len()];
    token_types[..SPECIALS.len()].fill(3);
    let mut w = GgufWriter::new();
    let u = |v: usize| MetadataValue::U32(v as u32);
    let key = |name: &str| format!("{arch}.{name}");
    w.add_metadata("general.architecture", cfg.architecture)
        .add_metadata("general.name", format!("tiny-random-{arch}"))
        .add_metadata(key("block_count"), u(cfg.n_layer))
        .add_metadata(key("context_length"), u(cfg.context_length))
        .add_metadata(key("embedding_length"), u(cfg.n_embd))
        .add_metadata(key("feed_forward_length"), u(cfg.n_ff))
        .add_metadata(key("attention.head_count"), u(cfg.n_head))
        .add_metadata(key("attention.head_count_kv"), u(cfg.n_head_kv))
        .add_metadata(key("rope.freq_base"), MetadataValue::F32(rope_base))
        .add_metadata(
            key("attention.layer_norm_rms_epsilon"),
            MetadataValue::F32(eps),
        )
        .add_metadata("tokenizer.ggml.model", "gpt2")
        .add_metadata("tokenizer.ggml.pre", "smollm")
        .add_metadata(
            "tokenizer.ggml.tokens",
            tokens.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .add_metadata(
            "tokenizer.ggml.token_type",
            MetadataValue::array(
                pio_gguf::ValueType::I32,
                token_types.into_iter().map(MetadataValue::I32).collect(),
            ),
        )
        .add_metadata(
            "tokenizer.ggml.merges",
            merges.iter().map(String::as_str).collect::<Vec<_>>(),
        )
        .add_metadata("tokenizer.ggml.bos_token_id", u(1))
        .add_metadata("tokenizer.ggml.eos_token_id", u(2))
        .add_metadata("tokenizer.ggml.add_bos_token", MetadataValue::Bool(false))
        .add_metadata("tokenizer.chat_template", CHATML_TEMPLATE);
    if let Some(head_dim) = cfg.head_dim {
        w.add_metadata(key("attention.key_length"), u(head_dim));
    }
    w
}

/// Uniform(-a, a) has variance a^2/3: a = sqrt(3/cols) keeps activations at unit scale.
fn unit_scale(cols: usize) -> f32 {
    (3.0 / cols as f32).sqrt()
}

/// Builds a random-weight Llama GGUF for `cfg` in memory.
pub fn tiny_llama_bytes(cfg: &TinyConfig) -> Vec<u8> {
    tiny_llama_writer(cfg).to_bytes().unwrap()
}

/// A writer holding the random-weight Llama of `cfg`, for tests that change its metadata.
pub fn tiny_llama_writer(cfg: &TinyConfig) -> GgufWriter {
    let mut w = writer_with_vocab(cfg, "llama", 10_000.0, 1e-5);
    w.add_metadata(
        "llama.rope.dimension_count",
        MetadataValue::U32(cfg.head_dim() as u32),
    );
    let mut t = RandomTensors {
        rng: StdRng::seed_from_u64(cfg.seed),
        types: cfg.types.iter().cycle(),
    };
    let vocab = bpe_vocab(40).0.len();
    let (e, q, kv, ff) = (
        cfg.n_embd,
        cfg.n_head * cfg.head_dim(),
        cfg.n_head_kv * cfg.head_dim(),
        cfg.n_ff,
    );
    let s = unit_scale;
    t.matrix(&mut w, "token_embd.weight", vocab, e, 1.0);
    for i in 0..cfg.n_layer {
        t.matrix(&mut w, &format!("blk.{i}.attn_q.weight"), q, e, 2.0 * s(e));
        t.matrix(&mut w, &format!("blk.{i}.attn_k.weight"), kv, e, 2.0 * s(e));
        t.matrix(&mut w, &format!("blk.{i}.attn_v.weight"), kv, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.attn_output.weight"), e, q, s(q));
        t.matrix(&mut w, &format!("blk.{i}.ffn_gate.weight"), ff, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.ffn_up.weight"), ff, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.ffn_down.weight"), e, ff, s(ff));
    }
    // A larger output scale gives logits spread over several units.
    if !cfg.tied {
        t.matrix(&mut w, "output.weight", vocab, e, 3.0 * s(e));
    }
    for i in 0..cfg.n_layer {
        t.norm(&mut w, &format!("blk.{i}.attn_norm.weight"), e);
        t.norm(&mut w, &format!("blk.{i}.ffn_norm.weight"), e);
    }
    t.norm(&mut w, "output_norm.weight", e);
    w
}

/// [`tiny_llama_bytes`] parsed.
pub fn tiny_llama(cfg: &TinyConfig) -> GgufFile {
    GgufFile::from_bytes(tiny_llama_bytes(cfg)).unwrap()
}

/// The Llama plugin as the host sees it: the kit's `Plugin` over an [`crate::Engine`].
pub type LlamaPlugin = pio_plugin_kit::TextPlugin<crate::Engine>;

/// Writes the tiny model of `cfg` into `dir`; returns its path.
pub fn tiny_file(dir: &tempfile::TempDir, cfg: &TinyConfig) -> PathBuf {
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, tiny_llama_bytes(cfg)).unwrap();
    path
}

/// The default tiny model written into `dir` and loaded with a 64-position context.
pub fn tiny_engine(dir: &tempfile::TempDir) -> crate::engine::Engine {
    let path = tiny_file(dir, &TinyConfig::default());
    let options = crate::engine::LoadOptions {
        context_length: 64,
        ..crate::engine::LoadOptions::default()
    };
    crate::engine::Engine::load(&path, options).unwrap()
}

/// A plugin initialized with `config` and activated with a context of `context` positions;
/// without a `tuning` setting in `config` it runs untuned (`"off"`), so tests never search or
/// write the user's tuning cache.
pub fn active_plugin(mut config: serde_json::Value, context: u32) -> LlamaPlugin {
    use pio_plugin_kit::api::{ActivateOptions, Plugin};
    if config.get("tuning").is_none() {
        config["tuning"] = "off".into();
    }
    let mut plugin = LlamaPlugin::new().unwrap();
    plugin.initialize(config).unwrap();
    plugin
        .activate(&ActivateOptions {
            context_length: context,
            ..ActivateOptions::default()
        })
        .unwrap();
    plugin
}

/// Runs `request` alone through `generate` or `chat`, answering `Stop` after `stop_after`
/// events; returns the outcome and the streamed events.
pub fn alone(
    plugin: &mut LlamaPlugin,
    request: &pio_plugin_kit::api::SequenceRequest,
    stop_after: Option<usize>,
) -> (
    pio_plugin_kit::PluginResult<pio_plugin_kit::api::GenerateResponse>,
    Vec<pio_plugin_kit::api::TokenEvent>,
) {
    use pio_plugin_kit::api::{
        FnSink, Plugin, SequenceRequest, StreamControl, TokenEvent, TokenStream,
    };
    let mut events = Vec::new();
    let mut sink = FnSink(|event: &TokenEvent| {
        events.push(event.clone());
        match stop_after == Some(events.len()) {
            true => StreamControl::Stop,
            false => StreamControl::Continue,
        }
    });
    let mut stream = TokenStream::new(sink.as_sink());
    let outcome = match request {
        SequenceRequest::Generate(request) => plugin.generate(request, &mut stream),
        SequenceRequest::Chat(request) => plugin.chat(request, &mut stream),
    };
    drop(stream);
    (outcome, events)
}

/// Steps the open sequence `id` by itself until it ends, then closes it; returns its events.
pub fn run_to_end(plugin: &mut LlamaPlugin, id: u64) -> Vec<pio_plugin_kit::api::TokenEvent> {
    use pio_plugin_kit::api::Plugin;
    let mut events = Vec::new();
    loop {
        let step = plugin.step_sequences(&[id]).unwrap().remove(0);
        events.push(step.event);
        if step.finish.is_some() {
            plugin.close_sequence(id).unwrap();
            return events;
        }
    }
}

/// The plugin's stats details.
pub fn details(plugin: &LlamaPlugin) -> serde_json::Value {
    use pio_plugin_kit::api::Plugin;
    serde_json::from_str(&plugin.stats().details_json).unwrap()
}

/// A request continuing `prompt` (token ids) with `params`.
pub fn tokens_request(
    prompt: &[u32],
    params: pio_plugin_kit::api::GenerationParams,
) -> pio_plugin_kit::api::SequenceRequest {
    use pio_plugin_kit::api::{GenerateRequest, Prompt, SequenceRequest};
    SequenceRequest::Generate(GenerateRequest {
        prompt: Prompt::Tokens(prompt.to_vec().into()),
        params,
    })
}

/// `max_new_tokens` tokens at `temperature` (top-k 30, no other filter) with `seed`; greedy
/// at 0.
pub fn sampled(
    max_new_tokens: u32,
    temperature: f32,
    seed: u64,
) -> pio_plugin_kit::api::GenerationParams {
    pio_plugin_kit::api::GenerationParams {
        max_new_tokens,
        temperature,
        top_k: 30,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(seed).into(),
        ..pio_plugin_kit::api::GenerationParams::default()
    }
}

/// A writer holding a random-weight Gemma 3 model for `cfg` (tied output, sandwich and q/k
/// norms, `attention.sliding_window`), for tests that add keys before parsing it.
pub fn tiny_gemma3_writer(cfg: &TinyConfig) -> GgufWriter {
    let mut w = writer_with_vocab(cfg, "gemma3", 1_000_000.0, 1e-6);
    w.add_metadata(
        "gemma3.attention.sliding_window",
        MetadataValue::U32(cfg.sliding_window as u32),
    );
    let mut t = RandomTensors {
        rng: StdRng::seed_from_u64(cfg.seed),
        types: cfg.types.iter().cycle(),
    };
    let vocab = bpe_vocab(40).0.len();
    let (e, q, kv, ff, hd) = (
        cfg.n_embd,
        cfg.n_head * cfg.head_dim(),
        cfg.n_head_kv * cfg.head_dim(),
        cfg.n_ff,
        cfg.head_dim(),
    );
    let s = unit_scale;
    // Embeddings are scaled by sqrt(n_embd) at lookup: rows of unit rms come out at sqrt(e).
    t.matrix(
        &mut w,
        "token_embd.weight",
        vocab,
        e,
        s(1) / (e as f32).sqrt(),
    );
    for i in 0..cfg.n_layer {
        t.matrix(&mut w, &format!("blk.{i}.attn_q.weight"), q, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.attn_k.weight"), kv, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.attn_v.weight"), kv, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.attn_output.weight"), e, q, s(q));
        t.matrix(&mut w, &format!("blk.{i}.ffn_gate.weight"), ff, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.ffn_up.weight"), ff, e, s(e));
        t.matrix(&mut w, &format!("blk.{i}.ffn_down.weight"), e, ff, s(ff));
        for name in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            t.norm(&mut w, &format!("blk.{i}.{name}.weight"), e);
        }
        t.norm(&mut w, &format!("blk.{i}.attn_q_norm.weight"), hd);
        t.norm(&mut w, &format!("blk.{i}.attn_k_norm.weight"), hd);
    }
    t.norm(&mut w, "output_norm.weight", e);
    w
}

/// [`tiny_gemma3_writer`] parsed.
pub fn tiny_gemma3(cfg: &TinyConfig) -> GgufFile {
    GgufFile::from_bytes(tiny_gemma3_writer(cfg).to_bytes().unwrap()).unwrap()
}
