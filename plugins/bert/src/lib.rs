//! # The Inference-PIO BERT plugin
//!
//! Sentence embeddings from sentence-transformers BERT models (e.g. all-MiniLM-L6-v2) on the
//! GPU through pio-gpu, with fused WGSL kernels (pio-gpu's linear layers, `shaders/bert/` for
//! the rest):
//!
//! 1. embeddings (word + position + token type) + LayerNorm;
//! 2. per layer: fused Q|K|V projection; bidirectional attention within each text (running
//!    softmax); output projection + bias + residual + LayerNorm; up-projection + GELU;
//!    down-projection + bias + residual + LayerNorm;
//! 3. pooling (mean, CLS, max or mean/sqrt(len), from the model's pooling config) + L2
//!    normalisation.
//!
//! A batch of texts of different lengths runs in one pass, their tokens packed one after
//! another (no padding); attention stays within each text.
//!
//! Modules: [`config`] (model configuration files), [`weights`] (safetensors),
//! [`tokenize`] (tokenizer.json), [`upload`] (weights on the device: the linear layers as
//! pio-gpu matrices in f32, f16 or q8_0), [`kernels`] (launchers of the BERT-specific kernels;
//! the linear layers are pio-gpu's `Linear` with bias epilogues), [`model`] (the encoder on the device),
//! [`embedder`] (texts → vectors), [`compare`] (compressed vs f32), [`settings`] (plugin
//! configuration) and [`plugin`] (the `Plugin` implementation).

pub mod compare;
pub mod config;
pub mod embedder;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod plugin;
#[cfg(test)]
mod reference;
pub mod settings;
#[cfg(test)]
mod tests;
pub mod tokenize;
pub mod upload;
pub mod weights;

pub use embedder::{Embedder, Embeddings, ModelFiles};
pub use plugin::BertPlugin;

pio_plugin_api::export_plugin!(BertPlugin);
