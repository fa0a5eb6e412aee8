//! Helpers shared by the GPU tests of this crate and of the model plugins (feature `testing`):
//! the device, seeded random data, and error measures for comparing kernels with the CPU
//! [`reference`](crate::reference).
//!
//! GPU tests fail, never skip, without an adapter: [`gpu`] panics with the fix.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    ActivationReads, DeviceOptions, Gpu, GpuBuffer, KvCache, KvShape, KvType, LoadWidth,
    WeightDtype,
};

/// f32 machine epsilon (2^-23), the unit of the tolerances derived from rounding analyses.
pub const EPS: f64 = f32::EPSILON as f64;

/// The default device. Panics (failing the test, never skipping it) when there is none.
pub fn gpu() -> Gpu {
    open(&DeviceOptions::default())
}

/// Devices on the default adapter that between them run every load variant it can execute,
/// whichever its defaults are: 32-bit loads with each invocation reading its own activations
/// always, and 64-bit loads with activations shared through subgroups where the adapter has
/// 64-bit integers and subgroups of 8 lanes or more (lavapipe has both). The two choices change
/// different code ([`LoadWidth`]: how 16 bytes are loaded; [`ActivationReads`]: which
/// invocation loads them), so pairing them tests each variant of each.
pub fn gpus() -> Vec<Gpu> {
    [
        (LoadWidth::Bits32, ActivationReads::Own),
        (LoadWidth::Bits64, ActivationReads::Shared),
    ]
    .into_iter()
    .filter_map(|(load_width, activation_reads)| {
        let gpu = open(&DeviceOptions {
            load_width,
            activation_reads,
            ..DeviceOptions::default()
        });
        // A variant the adapter cannot run falls back to the first device's: leave it out
        // rather than test that twice.
        (gpu.load_width() == load_width || gpu.activation_reads() == activation_reads)
            .then_some(gpu)
    })
    .collect()
}

fn open(options: &DeviceOptions) -> Gpu {
    match Gpu::new(options) {
        Ok(gpu) => gpu,
        Err(error) => panic!(
            "GPU tests need a wgpu adapter (Mesa's lavapipe is enough: apt-get install \
             mesa-vulkan-drivers): {error}"
        ),
    }
}

/// A deterministic generator per test, so failures reproduce.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random_f32(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Random raw GGUF bytes of a `rows` × `cols` matrix in `dtype`, weights of magnitude ≲ 1:
/// float elements uniform in [-1, 1), quantized blocks of random bytes whose f16 scale and
/// minimum fields are drawn from ranges that keep `|value|` ≲ 1 (every code and, for the
/// K-quants, every packed sub-block scale bit pattern occurs).
pub fn random_gguf(rng: &mut StdRng, dtype: WeightDtype, rows: usize, cols: usize) -> Vec<u8> {
    random_gguf_scaled(rng, dtype, rows, cols, 1.0)
}

/// [`random_gguf`] with weights of magnitude ≲ `scale`: float elements and the scale and
/// minimum fields drawn from ranges `scale` times as wide (the f16 fields stay finite while
/// `scale` times their range, at most 1 — Q4_1's and Q5_1's minimums —, stays below 65504).
pub fn random_gguf_scaled(
    rng: &mut StdRng,
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    scale: f32,
) -> Vec<u8> {
    let elements = rows * cols;
    match dtype {
        WeightDtype::F32 => {
            return (0..elements)
                .flat_map(|_| rng.random_range(-scale..scale).to_le_bytes())
                .collect()
        }
        WeightDtype::F16 => {
            return (0..elements)
                .flat_map(|_| f16::from_f32(rng.random_range(-scale..scale)).to_le_bytes())
                .collect()
        }
        _ => {}
    }
    let block = dtype.block_elements();
    let block_bytes = dtype.gguf_row_bytes(block);
    let mut raw = Vec::with_capacity(elements / block * block_bytes);
    for _ in 0..elements / block {
        let start = raw.len();
        raw.extend((0..block_bytes).map(|_| rng.random::<u8>()));
        for &(offset, lo, hi) in scale_fields(dtype) {
            let at = start + offset;
            let value = f16::from_f32(rng.random_range(lo * scale..hi * scale));
            raw[at..at + 2].copy_from_slice(&value.to_le_bytes());
        }
    }
    raw
}

/// Byte offsets of the f16 scale and minimum fields of a `dtype` block (none for the float
/// dtypes), with ranges for them: `d` times the largest code (and, for the K-quants, the
/// largest sub-block scale) keeps values within about ±1.
fn scale_fields(dtype: WeightDtype) -> &'static [(usize, f32, f32)] {
    match dtype {
        WeightDtype::F32 | WeightDtype::F16 => &[],
        WeightDtype::Q4_0 => &[(0, -0.12, 0.12)],
        WeightDtype::Q4_1 => &[(0, 0.0, 0.12), (2, -1.0, 0.0)],
        WeightDtype::Q5_0 => &[(0, -0.06, 0.06)],
        WeightDtype::Q5_1 => &[(0, 0.0, 0.06), (2, -1.0, 0.0)],
        WeightDtype::Q8_0 => &[(0, -0.008, 0.008)],
        // d·sc·q − dmin·m: sc, m < 64, q < 16 (Q4_K) or 32 (Q5_K).
        WeightDtype::Q4_K => &[(0, 0.0, 0.002), (2, 0.0, 0.015)],
        WeightDtype::Q5_K => &[(0, 0.0, 0.001), (2, 0.0, 0.015)],
        // d·sc·(q − 32): |sc| ≤ 128, |q − 32| ≤ 32; d is the block's last field.
        WeightDtype::Q6_K => &[(208, -0.00025, 0.00025)],
    }
}

/// Largest absolute difference. Panics on a length mismatch or a non-finite result.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "result length");
    assert!(got.iter().all(|g| g.is_finite()), "non-finite result");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs())
        .fold(0.0, f64::max)
}

/// Max relative error, normwise: `max |got − want| / max |want|`.
pub fn max_rel_error(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().map(|&w| f64::from(w).abs()).fold(0.0, f64::max);
    max_abs_diff(got, want) / scale.max(f64::MIN_POSITIVE)
}

/// Reads the first `len` f32 values of `buffer`.
pub fn read(gpu: &Gpu, buffer: &GpuBuffer, len: usize) -> Vec<f32> {
    gpu.read_range(buffer, 0, len as u64).expect("readback")
}

/// A one-layer KV cache of `n_blocks` blocks of `kv_type` values (`n_kv_heads` heads of
/// `head_dim`).
pub fn kv_cache(
    gpu: &Gpu,
    n_kv_heads: usize,
    head_dim: usize,
    kv_type: KvType,
    n_blocks: u32,
) -> KvCache {
    let shape = KvShape::uniform(1, n_kv_heads as u32, head_dim as u32, kv_type);
    KvCache::new(gpu, shape, n_blocks).expect("KV cache")
}

/// Writes `values` into a KV cache buffer of `kv_type` from its start.
pub fn write_kv(gpu: &Gpu, buffer: &GpuBuffer, kv_type: KvType, values: &[f32]) {
    gpu.write(buffer, 0, &kv_type.encode(values))
        .expect("cache upload");
}

/// The first `len` values of a KV cache buffer of `kv_type`.
pub fn read_kv(gpu: &Gpu, buffer: &GpuBuffer, kv_type: KvType, len: usize) -> Vec<f32> {
    let words = len as u64 * kv_type.bytes_per_value() / 4;
    kv_type.decode(&gpu.read_range(buffer, 0, words).expect("cache readback"))
}

/// `values` as a cache of `kv_type` holds them (rounded to f16 for an f16 cache).
pub fn as_stored(kv_type: KvType, values: &[f32]) -> Vec<f32> {
    kv_type.decode(&kv_type.encode(values))
}

/// Relative error of storing one value in a cache of `kv_type`: half an ulp of the type
/// (0 for f32, whose values the kernels compute; 2⁻¹¹ for f16).
pub fn storage_error(kv_type: KvType) -> f64 {
    match kv_type {
        KvType::F32 => 0.0,
        KvType::F16 => 2f64.powi(-11),
    }
}

/// A storage buffer holding `data`.
pub fn upload<T: bytemuck::Pod>(gpu: &Gpu, label: &str, data: &[T]) -> GpuBuffer {
    gpu.storage_from(label, data).expect("upload")
}

/// A zeroed storage buffer of `n` 32-bit values.
pub fn zeroed(gpu: &Gpu, label: &str, n: usize) -> GpuBuffer {
    gpu.storage_zeroed(label, n as u64 * 4).expect("allocate")
}
