//! Plugin-side GPU runtime shared by model plugins: adapter selection, byte-accounted buffers,
//! cached compute pipelines and the transformer kernels (WGSL in the top-level `shaders/`
//! directory, embedded at compile time).
//!
//! Typical use by a model plugin:
//! 1. at activation: [`Gpu::new`], upload weights with [`QuantMatrix::upload`], create every
//!    kernel (`Matmul::new`, ... — this compiles the pipelines), allocate activations and the
//!    [`KvCache`], bind the decode step's [`Dispatch`]es and [`Gpu::run`] them once to warm up;
//! 2. per token: write token ids and positions with [`Gpu::write`], record the dispatches into
//!    one compute pass ([`Dispatch::record`]), submit, and read the logits back.
//!
//! With the `reference` feature, [`reference`] holds a plain-f32 CPU implementation of every
//! kernel for tests.

mod buffer;
mod device;
mod dispatch;
mod error;
pub mod kernels;
mod layout;
mod pipeline;
mod quant;
#[cfg(feature = "reference")]
pub mod reference;

pub use buffer::GpuBuffer;
pub use device::{list_adapters, AdapterInfo, AdapterPreference, DeviceKind, DeviceOptions, Gpu};
pub use dispatch::Dispatch;
pub use error::{GpuError, Result};
pub use kernels::add::Add;
pub use kernels::attention::{Attention, AttentionConfig};
pub use kernels::embed::Embed;
pub use kernels::kv_cache::{KvCache, KvLayer, KvWrite, KvWriteConfig};
pub use kernels::matmul::{Matmul, MatmulConfig, MatmulTile};
pub use kernels::rmsnorm::RmsNorm;
pub use kernels::rope::{Rope, RopeConfig, RopeTable};
pub use kernels::silu_mul::{SiluMul, SiluMulConfig};
pub use layout::RowLayout;
pub use quant::{QuantMatrix, WeightDtype, BLOCK_ELEMENTS, ROW_GROUP};
