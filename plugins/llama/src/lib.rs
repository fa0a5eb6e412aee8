//! GGUF text-generation plugin for Inference-PIO: Llama-family models on the GPU, written on
//! the authoring kit (`pio-plugin-kit`), which drives generation, chat and batched sequences.
//!
//! Modules, one job each:
//! - [`models`]: one file per model family, each describing its layers as a
//!   [`models::ModelSpec`] read from GGUF metadata; [`hparams`]: the shapes every family shares;
//!   [`weights`]: the tensors a spec names, with shape and type checks;
//! - [`runtime`]: any spec's forward pass on the GPU (pio-gpu kernels) with its KV caches;
//!   [`forward`]: what it and the CPU reference share;
//! - [`sampler`]: greedy and seeded sampling; [`tokenizer`]: the GGUF tokenizer for the kit;
//! - [`sequence`]: a prompt's continuation, alone in the model's cache or batched;
//!   [`batch`]: batched sequences and their one-pass decode, in the block pool [`kv_pool`]
//!   keeps (reservation, prefix sharing, copy-on-write, cached blocks);
//! - [`memory`]: what a context and batch configuration costs, checked before allocating;
//! - [`perplexity`]: perplexity over a token sequence; [`bench`](mod@bench): the plugin's
//!   benchmark;
//! - [`surgery`]: layers and heads scored on calibration text and removed from the model file;
//! - [`engine`]: model + tokenizer + chat template + block pool, the kit's `TextModel`;
//!   [`plugin`]: configuration, activation, stats and `infer`, the kit's `Model`.
//!
//! Tests compare the GPU model with a plain f32 CPU reference ([`mod@reference`]), which runs the
//! same spec; model surgery measures with it too.

pub mod batch;
pub mod bench;
pub mod compress;
pub mod engine;
pub mod error;
pub mod forward;
pub mod hparams;
pub mod kv_pool;
pub mod memory;
pub mod models;
pub mod partition;
pub mod perplexity;
pub mod plugin;
pub mod reference;
pub mod runtime;
pub mod sampler;
pub mod sequence;
pub mod storage;
pub mod surgery;
#[cfg(test)]
mod test_model;
pub mod tokenizer;
pub mod weights;

pub use engine::Engine;
pub use error::{Error, Result};

pio_plugin_kit::export_text_model!(Engine);
