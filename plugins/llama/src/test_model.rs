//! Test fixtures: small random-weight Llama GGUF files with a working byte-level BPE tokenizer,
//! and the location of the real SmolLM2 model.

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
    pub context_length: usize,
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
            context_length: 256,
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

/// Builds a random-weight Llama GGUF for `cfg` in memory.
pub fn tiny_llama_bytes(cfg: &TinyConfig) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let (tokens, merges) = bpe_vocab(40);
    let vocab = tokens.len();
    let mut token_types = vec![1i32; vocab];
    token_types[..SPECIALS.len()].fill(3);

    let mut w = GgufWriter::new();
    let u = |v: usize| MetadataValue::U32(v as u32);
    w.add_metadata("general.architecture", cfg.architecture)
        .add_metadata("general.name", "tiny-random-llama")
        .add_metadata("llama.block_count", u(cfg.n_layer))
        .add_metadata("llama.context_length", u(cfg.context_length))
        .add_metadata("llama.embedding_length", u(cfg.n_embd))
        .add_metadata("llama.feed_forward_length", u(cfg.n_ff))
        .add_metadata("llama.attention.head_count", u(cfg.n_head))
        .add_metadata("llama.attention.head_count_kv", u(cfg.n_head_kv))
        .add_metadata("llama.rope.freq_base", MetadataValue::F32(10_000.0))
        .add_metadata(
            "llama.attention.layer_norm_rms_epsilon",
            MetadataValue::F32(1e-5),
        )
        .add_metadata("llama.rope.dimension_count", u(cfg.n_embd / cfg.n_head))
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

    let mut type_cycle = cfg.types.iter().cycle();
    let mut matrix = |w: &mut GgufWriter, name: &str, rows: usize, cols: usize, scale: f32| {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0) * scale)
            .collect();
        let dtype = *type_cycle.next().unwrap();
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
    };
    let (e, kv, ff) = (
        cfg.n_embd,
        cfg.n_embd / cfg.n_head * cfg.n_head_kv,
        cfg.n_ff,
    );
    // Uniform(-a, a) has variance a^2/3: a = sqrt(3/cols) keeps activations at unit scale, and a
    // larger output scale gives logits spread over several units.
    let s = |cols: usize| (3.0 / cols as f32).sqrt();
    matrix(&mut w, "token_embd.weight", vocab, e, 1.0);
    for i in 0..cfg.n_layer {
        matrix(&mut w, &format!("blk.{i}.attn_q.weight"), e, e, 2.0 * s(e));
        matrix(&mut w, &format!("blk.{i}.attn_k.weight"), kv, e, 2.0 * s(e));
        matrix(&mut w, &format!("blk.{i}.attn_v.weight"), kv, e, s(e));
        matrix(&mut w, &format!("blk.{i}.attn_output.weight"), e, e, s(e));
        matrix(&mut w, &format!("blk.{i}.ffn_gate.weight"), ff, e, s(e));
        matrix(&mut w, &format!("blk.{i}.ffn_up.weight"), ff, e, s(e));
        matrix(&mut w, &format!("blk.{i}.ffn_down.weight"), e, ff, s(ff));
    }
    if !cfg.tied {
        matrix(&mut w, "output.weight", vocab, e, 3.0 * s(e));
    }
    let mut norm = |w: &mut GgufWriter, name: &str| {
        let values: Vec<f32> = (0..e).map(|_| rng.random_range(0.8f32..1.2)).collect();
        w.add_f32_tensor(name, &[e as u64], TensorType::F32, &values)
            .unwrap();
    };
    for i in 0..cfg.n_layer {
        norm(&mut w, &format!("blk.{i}.attn_norm.weight"));
        norm(&mut w, &format!("blk.{i}.ffn_norm.weight"));
    }
    norm(&mut w, "output_norm.weight");
    w.to_bytes().unwrap()
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

/// A plugin initialized with `config` and activated with a context of `context` positions.
pub fn active_plugin(config: serde_json::Value, context: u32) -> LlamaPlugin {
    use pio_plugin_kit::api::{ActivateOptions, Plugin};
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
