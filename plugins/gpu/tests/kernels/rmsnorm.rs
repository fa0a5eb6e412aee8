use pio_gpu::reference;
use pio_gpu::RmsNorm;

use crate::common::{self, EPS};

/// The sum of K squares (positive terms) has relative error ≲ sqrt(K)·ε (random rounding; K·ε
/// worst case); sqrt, divide and two multiplies add ~4ε. Tolerance 2·(sqrt(K) + 4)·ε.
#[test]
fn rmsnorm_matches_reference() {
    let gpu = common::gpu();
    for (cols, n_tokens) in [(4, 1), (576, 1), (100, 7), (576, 13)] {
        let mut rng = common::rng(cols as u64 * 31 + n_tokens as u64);
        let x = common::random_f32(&mut rng, cols * n_tokens, 3.0);
        let weight = common::random_f32(&mut rng, cols, 1.5);
        let eps = 1e-5;
        let want = reference::rmsnorm(&x, &weight, eps);

        let x_buf = gpu.storage_from("x", &x).unwrap();
        let w_buf = gpu.storage_from("weight", &weight).unwrap();
        let out = gpu.storage_zeroed("out", (x.len() * 4) as u64).unwrap();
        let norm = RmsNorm::new(&gpu, cols as u32, eps).unwrap();
        gpu.run(&[&norm
            .bind(&gpu, &x_buf, &w_buf, &out, n_tokens as u32)
            .unwrap()])
            .unwrap();
        let got = common::read(&gpu, &out, x.len());

        let error = common::max_rel_error(&got, &want);
        let tolerance = 2.0 * ((cols as f64).sqrt() + 4.0) * EPS;
        println!(
            "rmsnorm {cols} T={n_tokens}: max rel error {error:.2e} (tolerance {tolerance:.1e})"
        );
        assert!(error <= tolerance, "{cols} T={n_tokens}: {error:.2e}");
    }
}
