//! The cos/sin table of rotary position embeddings, read by [`QkvRope`](crate::QkvRope).

use crate::buffer::GpuBuffer;
use crate::device::Gpu;
use crate::error::{GpuError, Result};

/// Rotation angle of pair `i` of a `head_dim`-wide head at `position`:
/// `position * base^(-2i / head_dim)`, computed in f64.
fn rope_angle(position: u32, pair: u32, head_dim: u32, base: f64) -> f64 {
    f64::from(position) * base.powf(-2.0 * f64::from(pair) / f64::from(head_dim))
}

/// `(cos, sin)` of every rotation angle for positions `0..max_positions`, on the device,
/// laid out `[max_positions][head_dim / 2]`.
#[derive(Debug)]
pub struct RopeTable {
    head_dim: u32,
    max_positions: u32,
    buffer: GpuBuffer,
}

impl RopeTable {
    /// Computes the table on the host (in f64) for frequency base `base` (`rope.freq_base`,
    /// 10000 for most Llamas) and uploads it.
    pub fn new(gpu: &Gpu, head_dim: u32, base: f64, max_positions: u32) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 != 0 || max_positions == 0 {
            return Err(GpuError::shape(
                "rope table",
                format!(
                    "head_dim {head_dim} must be even and max_positions {max_positions} positive"
                ),
            ));
        }
        // The table is computed on the host first: check its size against the device limit
        // before allocating either copy (a context length is user input).
        let bytes = u64::from(max_positions) * u64::from(head_dim) * 4;
        let limit = gpu.max_storage_buffer_bytes();
        if bytes > limit {
            return Err(GpuError::BufferTooLarge {
                label: "rope cos/sin table".to_owned(),
                size: bytes,
                limit,
            });
        }
        let len = max_positions as usize * head_dim as usize;
        let mut values: Vec<f32> = Vec::new();
        values
            .try_reserve_exact(len)
            .map_err(|_| GpuError::HostOutOfMemory {
                what: "rope cos/sin table".to_owned(),
                bytes,
            })?;
        for position in 0..max_positions {
            for pair in 0..head_dim / 2 {
                let (sin, cos) = rope_angle(position, pair, head_dim, base).sin_cos();
                values.extend([cos as f32, sin as f32]);
            }
        }
        Ok(Self {
            head_dim,
            max_positions,
            buffer: gpu.storage_from("rope cos/sin table", &values)?,
        })
    }

    /// Head width the table was built for.
    pub fn head_dim(&self) -> u32 {
        self.head_dim
    }

    /// Number of positions covered.
    pub fn max_positions(&self) -> u32 {
        self.max_positions
    }

    /// The `[max_positions][head_dim / 2]` `vec2(cos, sin)` values on the device.
    pub fn buffer(&self) -> &GpuBuffer {
        &self.buffer
    }
}
