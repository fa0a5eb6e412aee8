//! GGUF text-generation plugin for Inference-PIO: Llama-family models on the GPU.
//!
//! Modules, one job each:
//! - [`models`]: one file per model family, each describing its layers as a
//!   [`models::ModelSpec`] read from GGUF metadata; [`hparams`]: the shapes every family shares;
//!   [`weights`]: the tensors a spec names, with shape and type checks;
//! - [`runtime`]: any spec's forward pass on the GPU (pio-gpu kernels) with its KV cache;
//! - [`sampler`]: greedy and seeded sampling; [`stop`]: stop-string matching;
//! - [`generate`]: the generation loop over any [`generate::Forward`]; [`batch`]: sequences
//!   decoded together (continuous batching);
//! - [`memory`]: what a context and batch configuration costs, checked before allocating;
//! - [`perplexity`]: perplexity over a token sequence; [`bench`](mod@bench): the plugin's
//!   benchmark;
//! - [`engine`]: model + tokenizer + chat template; [`plugin`]: the Inference-PIO plugin.
//!
//! Tests compare the GPU model with a plain f32 CPU reference (`reference.rs`, test-only), which
//! runs the same spec.

pub mod batch;
pub mod bench;
pub mod engine;
pub mod error;
pub mod generate;
pub mod hparams;
pub mod memory;
pub mod models;
pub mod perplexity;
pub mod plugin;
#[cfg(test)]
mod reference;
pub mod runtime;
pub mod sampler;
#[cfg(test)]
mod test_model;
pub mod weights;

pub use error::{Error, Result};
pub use plugin::LlamaPlugin;

pio_plugin_api::export_plugin!(LlamaPlugin);
