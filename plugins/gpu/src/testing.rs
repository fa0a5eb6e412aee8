//! Helpers shared by the GPU tests of this crate and of the model plugins (feature `testing`):
//! the device, seeded random data, and error measures for comparing kernels with the CPU
//! [`reference`](crate::reference).
//!
//! GPU tests fail, never skip, without an adapter: [`gpu`] panics with the fix.

use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{DeviceOptions, Gpu, GpuBuffer, WeightDtype};

/// f32 machine epsilon (2^-23), the unit of the tolerances derived from rounding analyses.
pub const EPS: f64 = f32::EPSILON as f64;

/// The default device. Panics (failing the test, never skipping it) when there is none.
pub fn gpu() -> Gpu {
    match Gpu::new(&DeviceOptions::default()) {
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

/// Random raw GGUF bytes of a `rows` × `cols` matrix in `dtype`, weights of magnitude ≲ 1.
pub fn random_gguf(rng: &mut StdRng, dtype: WeightDtype, rows: usize, cols: usize) -> Vec<u8> {
    let blocks = rows * cols / 32;
    let mut raw = Vec::with_capacity(rows * dtype.gguf_row_bytes(cols));
    let half =
        |rng: &mut StdRng, lo: f32, hi: f32| f16::from_f32(rng.random_range(lo..hi)).to_le_bytes();
    for _ in 0..blocks {
        match dtype {
            WeightDtype::F32 => {
                for _ in 0..32 {
                    raw.extend(rng.random_range(-1.0f32..1.0).to_le_bytes());
                }
            }
            WeightDtype::F16 => {
                for _ in 0..32 {
                    raw.extend(half(rng, -1.0, 1.0));
                }
            }
            WeightDtype::Q4_0 | WeightDtype::Q8_0 => {
                let scale = if dtype == WeightDtype::Q4_0 {
                    0.12
                } else {
                    0.008
                };
                raw.extend(half(rng, -scale, scale));
                let n = if dtype == WeightDtype::Q4_0 { 16 } else { 32 };
                raw.extend((0..n).map(|_| rng.random::<u8>()));
            }
            WeightDtype::Q4_1 => {
                raw.extend(half(rng, 0.0, 0.12));
                raw.extend(half(rng, -1.0, 0.0));
                raw.extend((0..16).map(|_| rng.random::<u8>()));
            }
        }
    }
    raw
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

/// A storage buffer holding `data`.
pub fn upload<T: bytemuck::Pod>(gpu: &Gpu, label: &str, data: &[T]) -> GpuBuffer {
    gpu.storage_from(label, data).expect("upload")
}

/// A zeroed storage buffer of `n` 32-bit values.
pub fn zeroed(gpu: &Gpu, label: &str, n: usize) -> GpuBuffer {
    gpu.storage_zeroed(label, n as u64 * 4).expect("allocate")
}
