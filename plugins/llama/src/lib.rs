//! Llama-architecture GGUF text-generation plugin for Inference-PIO.

pub mod error;
pub mod generate;
pub mod gpu_model;
pub mod hparams;
#[cfg(test)]
mod reference;
pub mod sampler;
pub mod stop;
#[cfg(test)]
mod test_model;
pub mod weights;

pub use error::{Error, Result};
