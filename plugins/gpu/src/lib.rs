//! Plugin-side GPU runtime shared by model plugins: adapter selection, byte-accounted buffers,
//! cached compute pipelines and the transformer kernels (WGSL in the top-level `shaders/`
//! directory, embedded at compile time).
//!
//! Typical use by a model plugin:
//! 1. at activation: [`Gpu::new`], upload weights with [`QuantMatrix::upload`], create every
//!    kernel ([`Linear::new`], ... — this compiles the pipelines; pick tiles for the adapter
//!    with [`RowTile::decode`] and [`RowTile::prefill`], or measure them per shape with a
//!    [`Tuner`]), allocate activations and the
//!    [`KvCache`], bind the decode step's [`Dispatch`]es and [`Gpu::run`] them once to warm up;
//! 2. per token: write token ids and positions with [`Gpu::write`], record the dispatches into
//!    one compute pass ([`Dispatch::record`]), submit, and read the logits back.
//!
//! With the `reference` feature, [`reference`] holds a plain-f32 CPU implementation of every
//! kernel for tests; with `testing`, the `testing` module holds the helpers the GPU tests of
//! this crate and of the model plugins share (device, seeded random data, error measures).
//!
//! [`GpuError`] converts into the plugin API's `PluginError` (one mapping for every plugin;
//! out-of-memory stays `out_of_memory`).

mod buffer;
mod device;
mod dispatch;
mod error;
pub mod kernels;
mod layout;
mod pipeline;
mod profile;
mod quant;
mod quantize;
#[cfg(feature = "reference")]
pub mod reference;
#[cfg(feature = "testing")]
pub mod testing;
mod tune;

pub use buffer::{GpuBuffer, PendingRead};
pub use device::{
    chosen_adapter, list_adapters, ActivationReads, AdapterInfo, AdapterPreference, DeviceKind,
    DeviceOptions, Gpu, LoadWidth,
};
pub use dispatch::{require_len, Dispatch};
pub use error::{GpuError, Result};
pub use kernels::attention::{
    Attention, AttentionConfig, AttentionPlan, AttentionVariant, MAX_HEAD_DIM, PREFILL_MIN_TOKENS,
};
pub use kernels::embed::{Embed, EmbedTable};
pub use kernels::kv_cache::{KvCache, KvLayer, KvShape, KvType, KV_BLOCK_ROWS};
pub use kernels::linear::{
    Epilogue, EpilogueParams, Linear, LinearShape, QkvRope, QkvRopeConfig, Reduction, RowTile,
    Staging, TokenRange, MAX_LAYER_NORM_ROWS, MAX_TILE_TOKENS,
};
pub use kernels::qk_norm_rope::{QkNormRope, QkNormRopeConfig};
pub use kernels::residual_norm::ResidualRmsNorm;
pub use kernels::rope::RopeTable;
pub use kernels::sample::{DeviceSampler, SampleSettings, MAX_PENALTY_TOKENS};
pub use layout::RowLayout;
pub use pipeline::Kernel;
pub use profile::{DispatchTime, KernelTime, Profile, TimingMethod};
pub use quant::{
    MatrixShape, PackedMatrix, QuantMatrix, WeightDtype, WeightSlot, BLOCK_ELEMENTS, ROW_GROUP,
};
pub use quantize::quantize;
pub use tune::{
    TileSource, TuneChoice, TuneKey, TuneMode, TuneReport, TuneSettings, TunedKernel, Tuner,
};
/// The wgpu version this crate is built on, for callers that record their own command encoders.
pub use wgpu;
