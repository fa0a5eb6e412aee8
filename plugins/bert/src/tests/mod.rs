//! GPU-vs-CPU tests of the BERT-specific kernels and of whole random-weight models (the linear
//! layers' kernels are pio-gpu's, tested there). A missing GPU adapter fails these tests
//! (lavapipe is enough); it never skips them.

mod kernels;
mod tiny;

use std::sync::Arc;

pub use pio_gpu::testing::{max_rel_error, random_f32, rng, upload, zeroed};
use pio_gpu::Gpu;

/// The default device, shareable as the plugin shares it.
pub fn gpu() -> Arc<Gpu> {
    Arc::new(pio_gpu::testing::gpu())
}
