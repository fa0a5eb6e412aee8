//! GPU-vs-CPU tests of every kernel and of whole random-weight models. A missing GPU adapter
//! fails these tests (lavapipe is enough); it never skips them.

mod kernels;
mod tiny;

use std::sync::Arc;

use pio_gpu::{DeviceOptions, Gpu, GpuBuffer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The default device; panics with a clear message when there is none.
pub fn gpu() -> Arc<Gpu> {
    match Gpu::new(&DeviceOptions::default()) {
        Ok(gpu) => Arc::new(gpu),
        Err(error) => panic!(
            "BERT GPU tests need a wgpu adapter (Mesa's lavapipe is enough: apt-get install \
             mesa-vulkan-drivers): {error}"
        ),
    }
}

/// A seeded generator, so failures reproduce.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in `[-scale, scale)`.
pub fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Normwise relative error: `max |got - want| / max |want|`.
pub fn rel_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "result length");
    let scale = want.iter().map(|w| f64::from(*w).abs()).fold(0.0, f64::max);
    let diff = got
        .iter()
        .zip(want)
        .map(|(g, w)| (f64::from(*g) - f64::from(*w)).abs())
        .fold(0.0, f64::max);
    assert!(got.iter().all(|g| g.is_finite()), "non-finite result");
    diff / scale.max(f64::MIN_POSITIVE)
}

/// A storage buffer holding `data`.
pub fn upload<T: bytemuck::Pod>(gpu: &Gpu, label: &str, data: &[T]) -> GpuBuffer {
    gpu.storage_from(label, data).expect("upload")
}

/// A zeroed storage buffer of `n` 32-bit values.
pub fn zeroed(gpu: &Gpu, label: &str, n: usize) -> GpuBuffer {
    gpu.storage_zeroed(label, n as u64 * 4).expect("allocate")
}
