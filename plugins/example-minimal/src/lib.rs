//! # The minimal Inference-PIO text plugin
//!
//! How little a text plugin needs with the authoring kit (`pio-plugin-kit`): a model that
//! echoes its prompt in ASCII capitals. The glue is the two trait impls'
//! boilerplate and the export, about 25 lines; the model is `open` and `step`. The kit supplies
//! the rest: configuration and lifecycle, metadata from `Cargo.toml`, `generate` with stop
//! strings, `max_new_tokens`, cancellation, timings and usage counts, batched sequences, and
//! `tokenize` / `detokenize`. `plugins/example` shows every other part of the contract.

use pio_plugin_kit::{
    export_text_model, metadata, Activation, CharTokenizer, Model, Next, NoConfig, PluginMetadata,
    PluginResult, SequenceParams, TextModel,
};

/// The active model. It has no weights, so activation only records the context length.
pub struct Shout {
    context_length: u32,
}

impl Model for Shout {
    type Config = NoConfig;
    type Tokenizer = CharTokenizer;

    /// The kit adds the text capabilities (generation, batched generation).
    fn metadata() -> PluginMetadata {
        metadata!("example-minimal").build()
    }

    fn activate(_config: &NoConfig, activation: &Activation) -> PluginResult<Self> {
        let context_length = activation.context_length.unwrap_or(4096);
        Ok(Self { context_length })
    }

    fn tokenizer(&self) -> &CharTokenizer {
        &CharTokenizer
    }
}

impl TextModel for Shout {
    /// The prompt's tokens not yet echoed.
    type Sequence = std::collections::VecDeque<u32>;

    fn context_length(&self) -> u32 {
        self.context_length
    }

    fn open(&mut self, prompt: &[u32], _params: &SequenceParams) -> PluginResult<Self::Sequence> {
        Ok(prompt.iter().copied().collect())
    }

    fn step(&mut self, rest: &mut Self::Sequence) -> PluginResult<Next> {
        // The kit opens no empty prompt and steps no sequence past its `Final` token.
        let token = rest.pop_front().unwrap_or_default();
        let shouted = char::from_u32(token).map_or(token, |c| c.to_ascii_uppercase().into());
        Ok(match rest.is_empty() {
            true => Next::Final(shouted),
            false => Next::Token(shouted),
        })
    }
}

export_text_model!(Shout);
