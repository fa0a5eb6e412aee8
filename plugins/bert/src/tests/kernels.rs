//! Each BERT-specific kernel against the CPU reference on fresh random data, with shapes that
//! are not multiples of the kernels' tiles.
//!
//! Tolerances: the kernels accumulate in f32, the reference in f64. A sum of K products of
//! magnitude ≤ 1 has a rounding error of at most ~K·ε·max|term| in the worst case and ~√K·ε
//! typically (ε = 1.2e-7); for K ≤ 128 that is ≤ 1.5e-5 relative worst case. LayerNorm divides
//! by the standard deviation (~0.3–0.6 for these data), amplifying absolute errors ~3x.
//! Measured errors are 1e-7 – 2e-7 (f32 rounding of the
//! result itself), so 5e-6 normwise — between the typical √K·ε ≈ 1.3e-6 and the worst case —
//! leaves margin for other drivers' summation orders while any indexing, masking or tiling bug
//! gives errors of order 1.

use pio_gpu::Gpu;

use super::{gpu, max_rel_error, random_f32, rng, upload, zeroed};
use crate::config::Pooling;
use crate::kernels::attention::{Attention, AttentionVariant};
use crate::kernels::embed_norm::{EmbedBuffers, EmbedNorm};
use crate::kernels::pool::Pool;
use crate::kernels::{sequence_starts, Params};
use crate::reference;

fn params(gpu: &Gpu, shape: Params) -> pio_gpu::GpuBuffer {
    gpu.uniform_from("params", &shape).expect("params")
}

fn run(gpu: &Gpu, launch: pio_gpu::Dispatch) {
    gpu.run(&[&launch]).expect("run");
}

#[test]
fn embed_norm_matches_reference() {
    let gpu = gpu();
    let mut rng = rng(1);
    let (vocab, hidden, positions, eps) = (50, 36, 11, 1e-12);
    let word = random_f32(&mut rng, vocab * hidden, 1.0);
    let pos_type = random_f32(&mut rng, positions * hidden, 1.0);
    let gamma = random_f32(&mut rng, hidden, 1.0);
    let beta = random_f32(&mut rng, hidden, 1.0);
    // Packed sequences of 7, 3 and 1 tokens: positions restart at each sequence.
    let lengths = [7u32, 3, 1];
    let shape = Params::for_lengths(&lengths);
    let ids: Vec<u32> = (0..shape.tokens)
        .map(|_| rand::Rng::random_range(&mut rng, 0..vocab as u32))
        .collect();
    let norm: Vec<f32> = gamma.iter().chain(&beta).copied().collect();
    let out = zeroed(&gpu, "out", shape.tokens as usize * hidden);
    let kernel = EmbedNorm::new(&gpu, hidden as u32, eps).unwrap();
    let (w, p, n, i, s, pb) = (
        upload(&gpu, "word", &word),
        upload(&gpu, "pos", &pos_type),
        upload(&gpu, "norm", &norm),
        upload(&gpu, "ids", &ids),
        upload(&gpu, "starts", &sequence_starts(&lengths)),
        params(&gpu, shape),
    );
    let buffers = EmbedBuffers {
        word: &w,
        pos_type: &p,
        norm: &n,
        ids: &i,
        starts: &s,
        out: &out,
        params: &pb,
    };
    run(&gpu, kernel.bind(&gpu, buffers, shape).unwrap());
    let got = gpu.read_f32(&out).unwrap();
    let positions = lengths.iter().flat_map(|&len| 0..len as usize);
    let x: Vec<f32> = ids
        .iter()
        .zip(positions)
        .flat_map(|(&id, pos)| (0..hidden).map(move |f| (id as usize, pos, f)))
        .map(|(id, pos, f)| word[id * hidden + f] + pos_type[pos * hidden + f])
        .collect();
    let want = reference::layer_norm(&x, &gamma, &beta, eps);
    let err = max_rel_error(&got, &want);
    println!("embed_norm: max relative error {err:.2e}");
    assert!(err < 5e-6, "embed_norm error {err:.2e}");
}

#[test]
fn attention_keeps_packed_sequences_apart_and_matches_reference() {
    let gpu = gpu();
    let variants = [AttentionVariant::Serial, AttentionVariant::SharedRows];
    for variant in variants {
        if !variant.runs_on(&gpu) {
            // Only a GPU without subgroups of 8 lanes may lack one; lavapipe runs both.
            assert!(
                gpu.adapter_info().device_type.is_hardware(),
                "{variant:?} must run on a software adapter (lavapipe has subgroups of 8 lanes)"
            );
            println!("attention {variant:?}: not on this adapter (no subgroups of 8 lanes)");
            continue;
        }
        // One head width in each of the shaders' array sizes (32, 64, 128): rows of 3 and 6
        // vectors (fewer than the 8 shared-rows lanes), of 10 (two rounds, the second partial)
        // and of 32 (four full rounds).
        for (heads, head_dim) in [(4usize, 12usize), (12, 24), (2, 40), (1, 128)] {
            check_attention(&gpu, variant, heads, head_dim);
        }
    }
}

/// `variant` on 3 packed sequences of 19 (not a multiple of the 8 lanes or the 4-query tile
/// or of 4 positions), 4 and 1 tokens against the reference, each sequence on its own. The
/// middle one is poisoned with huge values: a query attending across a sequence's end would
/// see them.
fn check_attention(gpu: &Gpu, variant: AttentionVariant, heads: usize, head_dim: usize) {
    let mut rng = rng(4);
    let hidden = heads * head_dim;
    let lengths = [19u32, 4, 1];
    let shape = Params::for_lengths(&lengths);
    let starts = sequence_starts(&lengths);
    let mut qkv = random_f32(&mut rng, shape.tokens as usize * 3 * hidden, 2.0);
    let poisoned = starts[1] as usize..starts[2] as usize;
    qkv[poisoned.start * 3 * hidden..poisoned.end * 3 * hidden].fill(1e6);
    let ctx = zeroed(gpu, "ctx", shape.tokens as usize * hidden);
    let kernel = Attention::new(gpu, heads as u32, head_dim as u32, variant).unwrap();
    let (q, s, pb) = (
        upload(gpu, "qkv", &qkv),
        upload(gpu, "starts", &starts),
        params(gpu, shape),
    );
    let launch = kernel.bind(gpu, &q, &s, &ctx, &pb, shape).unwrap();
    run(gpu, launch);
    let got = gpu.read_f32(&ctx).unwrap();
    let mut worst: f64 = 0.0;
    for (b, &len) in lengths.iter().enumerate() {
        if b == 1 {
            continue;
        }
        let start = starts[b] as usize;
        let len = len as usize;
        let seq = &qkv[start * 3 * hidden..(start + len) * 3 * hidden];
        let want = reference::attention(seq, heads, head_dim);
        let err = max_rel_error(&got[start * hidden..(start + len) * hidden], &want);
        worst = worst.max(err);
    }
    println!("attention {variant:?}, {heads} heads of {head_dim}: max relative error {worst:.2e}");
    assert!(
        worst < 5e-6,
        "attention {variant:?}, {heads} heads of {head_dim}: error {worst:.2e}"
    );
}

#[test]
fn pool_matches_reference_in_every_mode() {
    let gpu = gpu();
    let mut rng = rng(5);
    let hidden = 20;
    let lengths = [6u32, 3, 1];
    let shape = Params::for_lengths(&lengths);
    let starts = sequence_starts(&lengths);
    let x = random_f32(&mut rng, shape.tokens as usize * hidden, 1.0);
    for pooling in [
        Pooling::Mean,
        Pooling::Cls,
        Pooling::Max,
        Pooling::MeanSqrtLen,
    ] {
        for normalize in [false, true] {
            let out = zeroed(&gpu, "pooled", shape.batch as usize * hidden);
            let kernel = Pool::new(&gpu, hidden as u32, pooling, normalize).unwrap();
            let (xb, s, pb) = (
                upload(&gpu, "x", &x),
                upload(&gpu, "starts", &starts),
                params(&gpu, shape),
            );
            let launch = kernel.bind(&gpu, &xb, &s, &out, &pb, shape).unwrap();
            run(&gpu, launch);
            let got = gpu.read_f32(&out).unwrap();
            let want: Vec<f32> = lengths
                .iter()
                .enumerate()
                .flat_map(|(b, &len)| {
                    let start = starts[b] as usize * hidden;
                    reference::pool(
                        &x[start..start + len as usize * hidden],
                        hidden,
                        pooling,
                        normalize,
                    )
                })
                .collect();
            let err = max_rel_error(&got, &want);
            println!("pool {pooling:?} normalize={normalize}: max relative error {err:.2e}");
            assert!(
                err < 5e-6,
                "pool {pooling:?} normalize={normalize}: error {err:.2e}"
            );
        }
    }
}
