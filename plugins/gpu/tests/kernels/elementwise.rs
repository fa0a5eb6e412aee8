use pio_gpu::reference;
use pio_gpu::{Add, RowLayout, SiluMul, SiluMulConfig};

use crate::common::{self, EPS};

/// silu(g)·u takes exp (Vulkan allows 3 + 2|x| ulp), an add, a divide and a multiply:
/// with |g| ≤ 4 that is ≲ 16ε relative to the value; tolerance 16ε relative to max|silu(g)·u|,
/// which is looser only for outputs near zero.
#[test]
fn silu_mul_matches_reference_with_fused_and_separate_inputs() {
    let gpu = common::gpu();
    let (width, n_tokens) = (200, 3);
    let mut rng = common::rng(5);
    // Fused gate|up rows.
    let gate_up = common::random_f32(&mut rng, n_tokens * 2 * width, 4.0);
    let cut = |offset: usize| -> Vec<f32> {
        (0..n_tokens)
            .flat_map(|t| gate_up[t * 2 * width + offset..t * 2 * width + offset + width].to_vec())
            .collect()
    };
    let (gate, up) = (cut(0), cut(width));
    let want = reference::silu_mul(&gate, &up);

    let out = gpu
        .storage_zeroed("out", (n_tokens * width * 4) as u64)
        .unwrap();
    let fused = gpu.storage_from("gate_up", &gate_up).unwrap();
    let fused_kernel = SiluMul::new(
        &gpu,
        SiluMulConfig {
            width: width as u32,
            gate: RowLayout {
                stride: 2 * width as u32,
                offset: 0,
            },
            up: RowLayout {
                stride: 2 * width as u32,
                offset: width as u32,
            },
        },
    )
    .unwrap();
    gpu.run(&[&fused_kernel
        .bind(&gpu, &fused, &fused, &out, n_tokens as u32)
        .unwrap()])
        .unwrap();
    let fused_error = common::max_rel_error(&common::read(&gpu, &out, want.len()), &want);

    let (gate_buf, up_buf) = (
        gpu.storage_from("gate", &gate).unwrap(),
        gpu.storage_from("up", &up).unwrap(),
    );
    let contiguous = RowLayout::contiguous(width as u32);
    let kernel = SiluMul::new(
        &gpu,
        SiluMulConfig {
            width: width as u32,
            gate: contiguous,
            up: contiguous,
        },
    )
    .unwrap();
    gpu.run(&[&kernel
        .bind(&gpu, &gate_buf, &up_buf, &out, n_tokens as u32)
        .unwrap()])
        .unwrap();
    let error = common::max_rel_error(&common::read(&gpu, &out, want.len()), &want);

    println!(
        "silu_mul {width} T={n_tokens}: max rel error {error:.2e} (fused input {fused_error:.2e})"
    );
    assert!(
        fused_error <= 16.0 * EPS && error <= 16.0 * EPS,
        "{fused_error:.2e} {error:.2e}"
    );
}

/// One f32 addition on both sides: bit-identical.
#[test]
fn add_accumulates_in_place() {
    let gpu = common::gpu();
    // Long enough to span several rows of the 2-D grid.
    for len in [1, 1000, 64 * 1024 * 3 + 5] {
        let mut rng = common::rng(len as u64);
        let mut want = common::random_f32(&mut rng, len, 1.0);
        let x = common::random_f32(&mut rng, len, 1.0);
        let acc = gpu.storage_from("acc", &want).unwrap();
        let x_buf = gpu.storage_from("x", &x).unwrap();
        reference::add(&mut want, &x);
        let add = Add::new(&gpu).unwrap();
        gpu.run(&[&add.bind(&gpu, &acc, &x_buf, len as u32).unwrap()])
            .unwrap();
        assert_eq!(common::read(&gpu, &acc, len), want, "len {len}");
    }
}
