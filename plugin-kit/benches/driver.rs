//! What the kit's generation driver costs per token, apart from any model: a model whose step
//! is a counter, run through the full `Plugin` surface (`generate` streaming to a sink, and
//! batched `step_sequences`), with and without stop strings to match.
//!
//! `cargo bench -p pio-plugin-kit --bench driver` prints nanoseconds per token; compare with a
//! model's own decode time per token (milliseconds for SmolLM2 on the software device).

use std::time::Instant;

use pio_plugin_kit::{
    api::{
        ActivateOptions, FnSink, GenerateRequest, GenerationParams, Plugin, Prompt,
        SequenceRequest, StreamControl, TokenEvent, TokenStream,
    },
    metadata, Activation, CharTokenizer, Model, Next, NoConfig, PluginMetadata, PluginResult,
    SequenceParams, TextModel, TextPlugin,
};

/// Tokens per generation: the context's room after a one-token prompt.
const TOKENS: u32 = 100_000;

/// Says the letters a to z over and over.
struct Alphabet;

impl Model for Alphabet {
    type Config = NoConfig;
    type Tokenizer = CharTokenizer;
    fn metadata() -> PluginMetadata {
        metadata!("alphabet").build()
    }
    fn activate(_: &NoConfig, _: &Activation) -> PluginResult<Self> {
        Ok(Alphabet)
    }
    fn tokenizer(&self) -> &CharTokenizer {
        &CharTokenizer
    }
}

impl TextModel for Alphabet {
    type Sequence = u32;
    fn context_length(&self) -> u32 {
        TOKENS
    }
    fn open(&mut self, _: &[u32], _: &SequenceParams) -> PluginResult<u32> {
        Ok(0)
    }
    fn step(&mut self, count: &mut u32) -> PluginResult<Next> {
        *count += 1;
        Ok(Next::Token('a' as u32 + *count % 26))
    }
}

fn plugin() -> TextPlugin<Alphabet> {
    let mut plugin = TextPlugin::new().unwrap();
    plugin.initialize(serde_json::json!({})).unwrap();
    plugin.activate(&ActivateOptions::default()).unwrap();
    plugin
}

fn request(stop: &[&str]) -> GenerateRequest {
    let mut params = GenerationParams::greedy(TOKENS);
    params.stop = stop.iter().map(|s| (*s).into()).collect();
    GenerateRequest {
        prompt: Prompt::Text("a".into()),
        params,
    }
}

/// Nanoseconds per token of one streamed generation.
fn streamed(stop: &[&str]) -> f64 {
    let mut plugin = plugin();
    let mut sink = FnSink(|_: &TokenEvent| StreamControl::Continue);
    let started = Instant::now();
    let response = plugin
        .generate(&request(stop), &mut TokenStream::new(sink.as_sink()))
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.tokens.len(), TOKENS as usize);
    elapsed.as_nanos() as f64 / f64::from(TOKENS)
}

/// Nanoseconds per token of `sequences` sequences stepped together.
fn batched(sequences: usize, stop: &[&str]) -> f64 {
    let mut plugin = plugin();
    let ids: Vec<u64> = (0..sequences)
        .map(|_| {
            let request = SequenceRequest::Generate(request(stop));
            plugin.open_sequence(&request).unwrap().id
        })
        .collect();
    let started = Instant::now();
    for _ in 0..TOKENS {
        plugin.step_sequences(&ids).unwrap();
    }
    let elapsed = started.elapsed();
    elapsed.as_nanos() as f64 / (f64::from(TOKENS) * sequences as f64)
}

fn main() {
    let stops = ["zz", "abd", "end of answer"];
    println!("kit driver, {TOKENS} tokens per sequence, ns per token (median of 5 runs):");
    let median = |run: &dyn Fn() -> f64| {
        let mut runs: Vec<f64> = (0..5).map(|_| run()).collect();
        runs.sort_by(f64::total_cmp);
        runs[2]
    };
    println!(
        "  generate, no stop strings      {:8.0}",
        median(&|| streamed(&[]))
    );
    println!(
        "  generate, 3 stop strings       {:8.0}",
        median(&|| streamed(&stops))
    );
    println!(
        "  batched x8, no stop strings    {:8.0}",
        median(&|| batched(8, &[]))
    );
    println!(
        "  batched x8, 3 stop strings     {:8.0}",
        median(&|| batched(8, &stops))
    );
}
