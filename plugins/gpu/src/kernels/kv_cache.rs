//! The KV cache: written by [`QkvRope`](crate::QkvRope), read by
//! [`Attention`](crate::Attention).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};

/// Rows (positions) per block of a [`KvCache`]: a sequence's cache grows by whole blocks.
/// 16 as in vLLM: small enough that a sequence wastes at most 15 rows, large enough that a
/// block table stays short and attention loads a block id once per 16 positions.
pub const KV_BLOCK_ROWS: u32 = 16;

/// Keys and values of every layer, as a pool of blocks of [`KV_BLOCK_ROWS`] rows.
///
/// Layout: per layer, one K and one V f32 buffer, each `[n_blocks * KV_BLOCK_ROWS][n_kv_heads *
/// head_dim]` (row-major; within a row, head `h` occupies `h * head_dim .. (h + 1) * head_dim`).
/// A sequence owns a *block table*, the list of its blocks in position order: its position `p`
/// is row `table[p / KV_BLOCK_ROWS] * KV_BLOCK_ROWS + p % KV_BLOCK_ROWS`. A single sequence
/// alone in a cache has the identity table (row = position); sequences sharing a cache may
/// also share the blocks of a common prefix. [`QkvRope`](crate::QkvRope) writes each token's
/// row (resolved through its table on the host), [`Attention`](crate::Attention) reads every
/// earlier position through the table itself.
#[derive(Debug)]
pub struct KvCache {
    n_blocks: u32,
    kv_dim: u32,
    layers: Vec<(GpuBuffer, GpuBuffer)>,
    /// One block of one layer's K or V: [`KvCache::copy_blocks`] goes through it, since a
    /// buffer cannot be copied into itself.
    scratch: GpuBuffer,
}

impl KvCache {
    /// Allocates zeroed caches of `n_blocks` blocks for `n_layers` layers.
    pub fn new(
        gpu: &Gpu,
        n_layers: u32,
        n_blocks: u32,
        n_kv_heads: u32,
        head_dim: u32,
    ) -> Result<Self> {
        let kv_dim = n_kv_heads * head_dim;
        let block_bytes = u64::from(KV_BLOCK_ROWS) * u64::from(kv_dim) * 4;
        let bytes = u64::from(n_blocks) * block_bytes;
        // Every layer's buffers have this size: refuse before allocating the first one.
        let limit = gpu.max_storage_buffer_bytes();
        if bytes > limit {
            return Err(GpuError::BufferTooLarge {
                label: "layer 0 K cache".to_owned(),
                size: bytes,
                limit,
            });
        }
        let layers = (0..n_layers)
            .map(|layer| {
                Ok((
                    gpu.storage_zeroed(&format!("layer {layer} K cache"), bytes)?,
                    gpu.storage_zeroed(&format!("layer {layer} V cache"), bytes)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            n_blocks,
            kv_dim,
            layers,
            scratch: gpu.storage_zeroed("KV block copy", block_bytes)?,
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
        let row_bytes = u64::from(self.kv_dim) * 4;
        let block_bytes = u64::from(KV_BLOCK_ROWS) * row_bytes;
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for (keys, values) in &self.layers {
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

    /// Values per position: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> u32 {
        self.kv_dim
    }

    /// Number of layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The K and V caches of `layer`.
    pub fn layer(&self, layer: usize) -> Result<KvLayer<'_>> {
        let (keys, values) = self.layers.get(layer).ok_or_else(|| {
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
            kv_dim: self.kv_dim,
        })
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
}

impl KvLayer<'_> {
    /// Checks that this layer has the row width a kernel was built for.
    pub(crate) fn expect_kv_dim(&self, context: &'static str, kv_dim: u32) -> Result<()> {
        if self.kv_dim != kv_dim {
            return Err(GpuError::shape(
                context,
                format!(
                    "kernel built for kv_dim {kv_dim}, cache has {}",
                    self.kv_dim
                ),
            ));
        }
        Ok(())
    }
}
