//! The KV cache: written by [`QkvRope`](crate::QkvRope) (and normalised in place by
//! [`QkNormRope`](crate::QkNormRope)), read by [`Attention`](crate::Attention), in f32 or f16
//! ([`KvType`]).

use half::f16;

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};
use crate::Kernel;

/// Rows (positions) per block of a [`KvCache`]: a sequence's cache grows by whole blocks.
/// 16 as in vLLM: small enough that a sequence wastes at most 15 rows, large enough that a
/// block table stays short and attention loads a block id once per 16 positions.
pub const KV_BLOCK_ROWS: u32 = 16;

/// How the KV cache stores its values. Kernels compute in f32 either way: an f16 cache rounds
/// each key and value once as it is written (relative error ≤ 2⁻¹¹) and halves the cache's
/// bytes, so twice the positions fit in the same memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// 4 bytes per value.
    #[default]
    F32,
    /// IEEE half floats, 2 bytes per value, stored in pairs as one `u32`
    /// (WGSL's `pack2x16float`, so no `SHADER_F16` feature is needed). Keys and values beyond
    /// ±65504 are not representable: a model whose projections reach that needs f32.
    F16,
}

impl KvType {
    /// Every type, in the order of [`KvType::NAMES`].
    pub const ALL: [KvType; 2] = [KvType::F32, KvType::F16];
    /// The names [`KvType::from_name`] accepts.
    pub const NAMES: [&'static str; 2] = ["f32", "f16"];

    /// GGML's lowercase name: `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }

    /// The type called `name` (case-insensitive), or an error listing the names.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "unknown KV cache type {name:?}; expected one of {}",
                    Self::NAMES.join(", ")
                )
            })
    }

    /// Bytes one value takes in the cache.
    pub fn bytes_per_value(self) -> u64 {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// `values` in this type's layout, as the cache's words (for uploads; a multiple of 4
    /// values, as every cache row is).
    pub fn encode(self, values: &[f32]) -> Vec<u32> {
        match self {
            KvType::F32 => values.iter().map(|v| v.to_bits()).collect(),
            KvType::F16 => values
                .chunks(2)
                .map(|pair| {
                    let half = |i: usize| u32::from(f16::from_f32(pair[i]).to_bits());
                    half(0) | half(1) << 16
                })
                .collect(),
        }
    }

    /// The values of the cache's `words` (the inverse of [`KvType::encode`], exact for
    /// values an f16 holds).
    pub fn decode(self, words: &[u32]) -> Vec<f32> {
        match self {
            KvType::F32 => words.iter().map(|&w| f32::from_bits(w)).collect(),
            KvType::F16 => words
                .iter()
                .flat_map(|&w| [w as u16, (w >> 16) as u16])
                .map(|bits| f16::from_bits(bits).to_f32())
                .collect(),
        }
    }
}

/// One kernel that reads or writes the KV cache, compiled once per [`KvType`]: its source is
/// followed by `llama/kv_f32.wgsl` or `llama/kv_f16.wgsl`, which define the cache's word type
/// `KvWord` (four values) and `kv_load` / `kv_store` between it and `vec4<f32>`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvKernels {
    pub(crate) f32: Kernel,
    pub(crate) f16: Kernel,
}

impl KvKernels {
    /// The kernel for a cache of `kv_type`.
    pub(crate) fn get(&self, kv_type: KvType) -> Kernel {
        match kv_type {
            KvType::F32 => self.f32,
            KvType::F16 => self.f16,
        }
    }
}

/// [`KvKernels`] of a shader `$path` (under `shaders/`) and its helpers, named `$name` with the
/// cache type appended.
macro_rules! kv_kernels {
    ($name:literal, $path:literal $(, $helper:literal)*) => {
        $crate::kernels::kv_cache::KvKernels {
            f32: $crate::kernel!(
                concat!($name, "_kv_f32"), $path $(, $helper)*, "llama/kv_f32.wgsl"
            ),
            f16: $crate::kernel!(
                concat!($name, "_kv_f16"), $path $(, $helper)*, "llama/kv_f16.wgsl"
            ),
        }
    };
}
pub(crate) use kv_kernels;

/// Keys and values of every layer, as a pool of blocks of [`KV_BLOCK_ROWS`] rows.
///
/// Layout: per layer, one K and one V buffer of [`KvType`] values, each `[n_blocks *
/// KV_BLOCK_ROWS][n_kv_heads * head_dim]` (row-major; within a row, head `h` occupies
/// `h * head_dim .. (h + 1) * head_dim`). Layers may have different numbers of key/value heads
/// (a model whose heads were removed layer by layer): each layer's rows are as wide as its own
/// heads, so a narrow layer takes no more than it needs.
/// A sequence owns a *block table*, the list of its blocks in position order: its position `p`
/// is row `table[p / KV_BLOCK_ROWS] * KV_BLOCK_ROWS + p % KV_BLOCK_ROWS`. A single sequence
/// alone in a cache has the identity table (row = position); sequences sharing a cache may
/// also share the blocks of a common prefix. [`QkvRope`](crate::QkvRope) writes each token's
/// row (resolved through its table on the host), [`Attention`](crate::Attention) reads every
/// earlier position through the table itself.
#[derive(Debug)]
pub struct KvCache {
    n_blocks: u32,
    kv_type: KvType,
    /// Each layer's keys, values and values per row.
    layers: Vec<(GpuBuffer, GpuBuffer, u32)>,
    /// One block of the widest layer's K or V: [`KvCache::copy_blocks`] goes through it, since
    /// a buffer cannot be copied into itself.
    scratch: GpuBuffer,
}

impl KvCache {
    /// Allocates zeroed caches of `n_blocks` blocks of `kv_type` values for every layer of
    /// `shape`.
    pub fn new(gpu: &Gpu, shape: KvShape, n_blocks: u32) -> Result<Self> {
        let widest = shape.kv_heads.iter().copied().max().unwrap_or(0);
        if shape.kv_heads.contains(&0) || shape.head_dim == 0 || shape.head_dim % 4 != 0 {
            return Err(GpuError::shape(
                "kv cache",
                format!(
                    "unsupported shape {shape:?}: every layer needs a key/value head and \
                     head_dim must be a positive multiple of 4"
                ),
            ));
        }
        let block_bytes = |heads: u32| {
            u64::from(KV_BLOCK_ROWS)
                * u64::from(heads * shape.head_dim)
                * shape.kv_type.bytes_per_value()
        };
        // The widest layer's buffers are the largest: refuse before allocating the first one.
        let largest = u64::from(n_blocks) * block_bytes(widest);
        let limit = gpu.max_storage_buffer_bytes();
        if largest > limit {
            let layer = shape
                .kv_heads
                .iter()
                .position(|&h| h == widest)
                .unwrap_or(0);
            return Err(GpuError::BufferTooLarge {
                label: format!("layer {layer} K cache"),
                size: largest,
                limit,
            });
        }
        let layers = shape
            .kv_heads
            .iter()
            .enumerate()
            .map(|(layer, &heads)| {
                let bytes = u64::from(n_blocks) * block_bytes(heads);
                Ok((
                    gpu.storage_zeroed(&format!("layer {layer} K cache"), bytes)?,
                    gpu.storage_zeroed(&format!("layer {layer} V cache"), bytes)?,
                    heads * shape.head_dim,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            n_blocks,
            kv_type: shape.kv_type,
            layers,
            scratch: gpu.storage_zeroed("KV block copy", block_bytes(widest))?,
        })
    }

    /// Copies the first `rows` rows of block `from` to block `to`, in every layer, keys and
    /// values, for each `(from, to, rows)` (copy-on-write of a shared block a sequence goes on
    /// writing). Submits the copies and waits for them.
    pub fn copy_blocks(&self, gpu: &Gpu, copies: &[(u32, u32, u32)]) -> Result<()> {
        if let Some(bad) = copies.iter().find(|&&(from, to, rows)| {
            from >= self.n_blocks || to >= self.n_blocks || from == to || rows > KV_BLOCK_ROWS
        }) {
            return Err(GpuError::shape(
                "kv cache copy",
                format!(
                    "copy {bad:?} (from, to, rows) is not between two blocks of {} of {} rows",
                    self.n_blocks, KV_BLOCK_ROWS
                ),
            ));
        }
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for (keys, values, kv_dim) in &self.layers {
            let row_bytes = u64::from(*kv_dim) * self.kv_type.bytes_per_value();
            let block_bytes = u64::from(KV_BLOCK_ROWS) * row_bytes;
            for &(from, to, rows) in copies.iter().filter(|c| c.2 > 0) {
                for buffer in [keys, values] {
                    let bytes = u64::from(rows) * row_bytes;
                    let (src, dst) = (u64::from(from) * block_bytes, u64::from(to) * block_bytes);
                    encoder.copy_buffer_to_buffer(buffer.raw(), src, self.scratch.raw(), 0, bytes);
                    encoder.copy_buffer_to_buffer(self.scratch.raw(), 0, buffer.raw(), dst, bytes);
                }
            }
        }
        gpu.checked(
            || "copying KV cache blocks".to_owned(),
            || gpu.queue().submit([encoder.finish()]),
        )?;
        gpu.wait()
    }

    /// Blocks of [`KV_BLOCK_ROWS`] rows each layer holds.
    pub fn n_blocks(&self) -> u32 {
        self.n_blocks
    }

    /// Rows each layer holds: `n_blocks * KV_BLOCK_ROWS`.
    pub fn max_positions(&self) -> u32 {
        self.n_blocks * KV_BLOCK_ROWS
    }

    /// How the values are stored.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Bytes of every layer's keys and values.
    pub fn bytes(&self) -> u64 {
        let row_values: u64 = self.layers.iter().map(|l| u64::from(l.2)).sum();
        2 * u64::from(self.max_positions()) * row_values * self.kv_type.bytes_per_value()
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The K and V caches of `layer`.
    pub fn layer(&self, layer: usize) -> Result<KvLayer<'_>> {
        let (keys, values, kv_dim) = self.layers.get(layer).ok_or_else(|| {
            GpuError::shape(
                "kv cache",
                format!(
                    "layer {layer} asked of a cache of {} layers",
                    self.layers.len()
                ),
            )
        })?;
        Ok(KvLayer {
            keys,
            values,
            max_positions: self.max_positions(),
            kv_dim: *kv_dim,
            kv_type: self.kv_type,
        })
    }
}

/// The shape of a [`KvCache`] (but its length): what a model's layers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvShape {
    /// Key (and value) heads per position, one entry per layer.
    pub kv_heads: Vec<u32>,
    /// Values per head: a multiple of 4.
    pub head_dim: u32,
    /// How the values are stored.
    pub kv_type: KvType,
}

impl KvShape {
    /// `n_layers` layers of `n_kv_heads` heads each.
    pub fn uniform(n_layers: u32, n_kv_heads: u32, head_dim: u32, kv_type: KvType) -> Self {
        KvShape {
            kv_heads: vec![n_kv_heads; n_layers as usize],
            head_dim,
            kv_type,
        }
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.kv_heads.len()
    }

    /// Bytes of one block in every layer, keys and values.
    pub fn block_bytes(&self) -> u64 {
        let heads: u64 = self.kv_heads.iter().map(|&h| u64::from(h)).sum();
        2 * u64::from(KV_BLOCK_ROWS)
            * heads
            * u64::from(self.head_dim)
            * self.kv_type.bytes_per_value()
    }
}

/// One layer's K and V caches (see [`KvCache`] for the layout).
#[derive(Debug, Clone, Copy)]
pub struct KvLayer<'a> {
    /// K cache, `[max_positions][kv_dim]`.
    pub keys: &'a GpuBuffer,
    /// V cache, `[max_positions][kv_dim]`.
    pub values: &'a GpuBuffer,
    /// Positions held.
    pub max_positions: u32,
    /// Values per position.
    pub kv_dim: u32,
    /// How the values are stored.
    pub kv_type: KvType,
}

impl KvLayer<'_> {
    /// Checks that this layer has the row width and type a kernel was built for.
    pub(crate) fn expect(&self, context: &'static str, kv_dim: u32, kv_type: KvType) -> Result<()> {
        if self.kv_dim != kv_dim || self.kv_type != kv_type {
            return Err(GpuError::shape(
                context,
                format!(
                    "kernel built for kv_dim {kv_dim} of {}, cache has {} of {}",
                    kv_type.name(),
                    self.kv_dim,
                    self.kv_type.name()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_named_and_their_words_round_trip() {
        assert_eq!(KvType::ALL.map(KvType::name), KvType::NAMES);
        assert_eq!(KvType::from_name("F16"), Ok(KvType::F16));
        let error = KvType::from_name("q8_0").unwrap_err();
        assert!(error.contains("expected one of f32, f16"), "{error}");
        // Values an f16 holds exactly survive both types; others are rounded once in f16.
        let values = [1.0, -2.5, 0.099975586, 65504.0, 0.1, 3.0e-5, -0.0, 1.0e6];
        for kv_type in KvType::ALL {
            let words = kv_type.encode(&values);
            assert_eq!(
                words.len() as u64 * 4,
                values.len() as u64 * kv_type.bytes_per_value()
            );
            let back = kv_type.decode(&words);
            for (&v, &b) in values[..4].iter().zip(&back) {
                assert_eq!(v, b, "{kv_type:?}");
            }
            let exact = kv_type == KvType::F32;
            assert_eq!(back[4] == 0.1, exact, "{kv_type:?}");
            assert!((back[4] - 0.1).abs() <= 0.1 * 2f32.powi(-11));
        }
        // Beyond f16's range the host's encoding gives infinity (WGSL leaves the kernels'
        // `pack2x16float` of such a value unspecified).
        assert_eq!(
            KvType::F16.decode(&KvType::F16.encode(&values))[7],
            f32::INFINITY
        );
    }
}
