//! The KV cache: written by [`QkvRope`](crate::QkvRope), read by
//! [`Attention`](crate::Attention).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};

/// Keys and values of every layer: `max_positions` rows, one per cached token.
///
/// Layout: per layer, one K and one V f32 buffer, each `[max_positions][n_kv_heads * head_dim]`
/// (row-major; within a row, head `h` occupies `h * head_dim .. (h + 1) * head_dim`). A single
/// sequence keeps position `p` in row `p`; several sequences can share one cache, each in its
/// own contiguous range of rows (kernels take each token's row besides its position).
/// Rows are written by [`QkvRope`](crate::QkvRope) and read by [`Attention`](crate::Attention).
#[derive(Debug)]
pub struct KvCache {
    max_positions: u32,
    kv_dim: u32,
    layers: Vec<(GpuBuffer, GpuBuffer)>,
}

impl KvCache {
    /// Allocates zeroed caches for `n_layers` layers.
    pub fn new(
        gpu: &Gpu,
        n_layers: u32,
        max_positions: u32,
        n_kv_heads: u32,
        head_dim: u32,
    ) -> Result<Self> {
        let kv_dim = n_kv_heads * head_dim;
        let bytes = u64::from(max_positions) * u64::from(kv_dim) * 4;
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
            max_positions,
            kv_dim,
            layers,
        })
    }

    /// Copies rows of `source` into this cache, in every layer, keys and values: each range
    /// `(source_row, row, count)` copies `source` rows `source_row..source_row + count` to rows
    /// `row..row + count` here. Submits the copies and waits for them (used to move sequences
    /// into a larger cache).
    pub fn copy_rows_from(
        &self,
        gpu: &Gpu,
        source: &KvCache,
        ranges: &[(u32, u32, u32)],
    ) -> Result<()> {
        if std::ptr::eq(source, self) {
            return Err(GpuError::shape(
                "kv cache copy",
                "source and destination are the same cache",
            ));
        }
        if source.kv_dim != self.kv_dim || source.layers.len() != self.layers.len() {
            return Err(GpuError::shape(
                "kv cache copy",
                format!(
                    "source has {} layers of kv_dim {}, destination {} of kv_dim {}",
                    source.layers.len(),
                    source.kv_dim,
                    self.layers.len(),
                    self.kv_dim
                ),
            ));
        }
        let fits = |first: u32, count: u32, rows: u32| {
            u64::from(first) + u64::from(count) <= u64::from(rows)
        };
        if let Some(bad) = ranges.iter().find(|&&(from, to, count)| {
            !fits(from, count, source.max_positions) || !fits(to, count, self.max_positions)
        }) {
            return Err(GpuError::shape(
                "kv cache copy",
                format!(
                    "range {bad:?} does not fit {} source rows and {} destination rows",
                    source.max_positions, self.max_positions
                ),
            ));
        }
        let row_bytes = u64::from(self.kv_dim) * 4;
        let mut encoder = gpu.device().create_command_encoder(&Default::default());
        for ((keys, values), (source_keys, source_values)) in self.layers.iter().zip(&source.layers)
        {
            for &(from, to, count) in ranges.iter().filter(|r| r.2 > 0) {
                for (src, dst) in [(source_keys, keys), (source_values, values)] {
                    encoder.copy_buffer_to_buffer(
                        src.raw(),
                        u64::from(from) * row_bytes,
                        dst.raw(),
                        u64::from(to) * row_bytes,
                        u64::from(count) * row_bytes,
                    );
                }
            }
        }
        gpu.checked(
            || "copying KV cache rows".to_owned(),
            || gpu.queue().submit([encoder.finish()]),
        )?;
        gpu.wait()
    }

    /// Positions each layer holds.
    pub fn max_positions(&self) -> u32 {
        self.max_positions
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
            max_positions: self.max_positions,
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
