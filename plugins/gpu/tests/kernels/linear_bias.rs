//! The bias epilogues of `Linear` (BERT's layers): `+ bias`, `gelu(. + bias)` and
//! `LayerNorm(. + bias + residual)`, for every dtype, on both adapter classes' tiles (1 and 8
//! tokens per invocation: the LayerNorm kernel sums tokens 4-7 separately), with and without a
//! fused input RMSNorm, reading the activations each way the device can.

use pio_gpu::reference;
use pio_gpu::{
    ActivationReads, DeviceKind, Epilogue, EpilogueParams, Gpu, Linear, LinearShape, QuantMatrix,
    RowTile, Staging, TokenRange, WeightDtype,
};

use crate::common::{self, EPS};
use crate::linear::{abs, bound, check_within_bound, normed, tiles, NORM_EPS};

/// (rows, cols, tokens): rows not a multiple of the 8-row group (37, 130) and a MiniLM width
/// (384 = 48 row groups), token counts not a multiple of any token tile.
const SHAPES: [(usize, usize, usize); 3] = [(37, 96, 5), (130, 160, 9), (384, 384, 13)];

const LN_EPS: f32 = 1e-12;

/// A random case: weights, input (after the optional norm, as the kernel sees it), bias, and
/// the product `W h + bias` with its magnitude `|W| |h| + |bias|`.
struct Case {
    dtype: WeightDtype,
    rows: usize,
    cols: usize,
    tokens: usize,
    raw: Vec<u8>,
    x: Vec<f32>,
    gamma: Vec<f32>,
    bias: Vec<f32>,
    product: Vec<f32>,
    magnitude: Vec<f32>,
}

impl Case {
    fn new(dtype: WeightDtype, (rows, cols, tokens): (usize, usize, usize), norm: bool) -> Self {
        let mut rng = common::rng((rows * 31 + cols * 7 + tokens) as u64 + u64::from(norm));
        let raw = common::random_gguf(&mut rng, dtype, rows, cols);
        let x = common::random_f32(&mut rng, tokens * cols, 1.0);
        let gamma = common::random_f32(&mut rng, cols, 2.0);
        let bias = common::random_f32(&mut rng, rows, 1.0);
        let w = reference::dequantize(dtype, rows, cols, &raw);
        let h = normed(&x, norm.then_some(gamma.as_slice()));
        let mut product = reference::matmul(&w, rows, cols, &h);
        reference::add_bias(&mut product, &bias);
        let mut magnitude = reference::matmul(&abs(&w), rows, cols, &abs(&h));
        reference::add_bias(&mut magnitude, &abs(&bias));
        Self {
            dtype,
            rows,
            cols,
            tokens,
            raw,
            x,
            gamma,
            bias,
            product,
            magnitude,
        }
    }

    /// Runs `epilogue` on the device with `out` initialised to `initial`; returns `out`.
    fn run(
        &self,
        gpu: &Gpu,
        tile: RowTile,
        norm: bool,
        epilogue: Epilogue,
        layer_norm: Option<&[f32]>,
        initial: &[f32],
    ) -> Vec<f32> {
        let (rows, cols) = (self.rows, self.cols);
        let weights = QuantMatrix::upload(gpu, self.dtype, rows, cols, &self.raw).unwrap();
        let x = gpu.storage_from("x", &self.x).unwrap();
        let gamma = gpu.storage_from("gamma", &self.gamma).unwrap();
        let bias = gpu.storage_from("bias", &self.bias).unwrap();
        let gamma_beta = layer_norm.map(|v| gpu.storage_from("gamma_beta", v).unwrap());
        let out = gpu.storage_from("out", initial).unwrap();
        let shape = LinearShape {
            dtype: self.dtype,
            rows: rows as u32,
            cols: cols as u32,
            norm_eps: norm.then_some(NORM_EPS),
            tile,
        };
        let kernel = Linear::new(gpu, shape, epilogue).unwrap();
        // These epilogues have no split variant (one invocation per row group); the LayerNorm
        // one's workgroup holds every row group, and it has no staged variant.
        let layer_norm = matches!(epilogue, Epilogue::BiasResidualLayerNorm { .. });
        let workgroup = if layer_norm {
            rows.div_ceil(8) as u32
        } else {
            tile.workgroup_size
        };
        let staging = if layer_norm {
            Staging::None
        } else {
            tile.staging.for_weights(self.dtype)
        };
        assert_eq!(kernel.staging(), staging, "{epilogue:?} {tile:?}");
        let shared = gpu.activation_reads() == ActivationReads::Shared
            && !staging.is_staged()
            && workgroup % gpu.subgroup_max_size() == 0;
        let expected = if shared {
            ActivationReads::Shared
        } else {
            ActivationReads::Own
        };
        assert_eq!(kernel.activation_reads(), expected, "{epilogue:?} {tile:?}");
        let params = EpilogueParams {
            bias: &bias,
            layer_norm: gamma_beta.as_ref(),
        };
        let dispatch = kernel
            .bind_with(
                gpu,
                &weights,
                &x,
                norm.then_some(&gamma),
                &out,
                params,
                TokenRange::all(self.tokens as u32),
            )
            .unwrap();
        gpu.run(&[&dispatch]).unwrap();
        common::read(gpu, &out, self.tokens * rows)
    }

    fn label(&self, what: &str, tile: RowTile, norm: bool) -> String {
        format!(
            "{what} {:?} {}x{} T={} tile {}x{} norm={norm}",
            self.dtype, self.rows, self.cols, self.tokens, tile.tokens, tile.workgroup_size
        )
    }
}

/// Error bound constant of `check_within_bound` (see linear.rs): 2 for a plain product, 4 with
/// a fused norm; the bias add rounds once more, within the same bound since |bias| is part of
/// the magnitude. (`bound` turns it into the constant and sum length of a tile's staging.)
fn c(norm: bool) -> f64 {
    if norm {
        4.0
    } else {
        2.0
    }
}

/// Every dtype with every shape (widths rounded up to the dtype's block: 256 for the
/// K-quants), the tiles (and the fused input norm) rotating over them so
/// that each tile meets several dtypes and shapes: `(dtype, shape, tile, norm)`. (Every
/// combination would compile ~100 pipelines, at ~0.2 s each on llvmpipe.)
fn cases(
    rotation: usize,
) -> impl Iterator<Item = (WeightDtype, (usize, usize, usize), RowTile, bool)> {
    WeightDtype::ALL
        .into_iter()
        .enumerate()
        .flat_map(move |(d, dtype)| {
            SHAPES
                .into_iter()
                .enumerate()
                .map(move |(i, (rows, cols, tokens))| {
                    let k = d + i + rotation;
                    let shape = (rows, cols.next_multiple_of(dtype.block_elements()), tokens);
                    (dtype, shape, tiles()[k % 4], k % 3 == 1)
                })
        })
}

#[test]
fn bias_and_bias_gelu_match_reference() {
    common::gpus()
        .iter()
        .for_each(bias_and_bias_gelu_match_reference_on);
}

/// `bias_and_bias_gelu_match_reference` on one device (each load width it runs).
fn bias_and_bias_gelu_match_reference_on(gpu: &Gpu) {
    for (dtype, shape, tile, norm) in cases(0) {
        let case = Case::new(dtype, shape, norm);
        let zeros = vec![0.0; case.tokens * case.rows];

        let got = case.run(gpu, tile, norm, Epilogue::Bias, None, &zeros);
        let label = case.label("bias", tile, norm);
        let (constant, k) = bound(tile.staging.for_weights(dtype), c(norm), case.cols);
        check_within_bound(&label, &got, &case.product, &case.magnitude, constant, k);

        // An error δ of the pre-activation v moves gelu(v) by at most
        // max|gelu'|·δ = 1.13·δ; the erf approximation (≤ 1.5e-7 absolute, ~1.3 ε)
        // and the rounding of the GELU arithmetic add a few ε·|v|, far below the
        // bound's c·√K·ε per unit of |v| (K ≥ 96): count |v| once more.
        let got = case.run(gpu, tile, norm, Epilogue::BiasGelu, None, &zeros);
        let want: Vec<f32> = case.product.iter().map(|&v| reference::gelu(v)).collect();
        let magnitude: Vec<f32> = case
            .magnitude
            .iter()
            .zip(&case.product)
            .map(|(m, v)| 1.13 * m + v.abs())
            .collect();
        let label = case.label("bias+gelu", tile, norm);
        check_within_bound(&label, &got, &want, &magnitude, constant, k);
    }
}

#[test]
fn bias_residual_layer_norm_matches_reference() {
    common::gpus()
        .iter()
        .for_each(bias_residual_layer_norm_matches_reference_on);
}

/// `bias_residual_layer_norm_matches_reference` on one device (each load width it runs).
fn bias_residual_layer_norm_matches_reference_on(gpu: &Gpu) {
    for (dtype, shape, tile, norm) in cases(1) {
        let case = Case::new(dtype, shape, norm);
        let (rows, tokens) = (case.rows, case.tokens);
        let mut rng = common::rng(rows as u64 * 3 + u64::from(tile.tokens));
        let residual = common::random_f32(&mut rng, tokens * rows, 1.0);
        let gamma_beta = common::random_f32(&mut rng, 2 * rows, 1.0);
        let (ln_gamma, ln_beta) = gamma_beta.split_at(rows);

        let got = case.run(
            gpu,
            tile,
            norm,
            Epilogue::BiasResidualLayerNorm { eps: LN_EPS },
            Some(&gamma_beta),
            &residual,
        );
        let mut v = case.product.clone();
        reference::add(&mut v, &residual);
        let want = reference::layer_norm(&v, ln_gamma, ln_beta, LN_EPS);

        // Per token, the inputs v_i of the norm err by at most
        // δ = max_i c·√K·ε·(m_i + |residual_i|) (the product's bound, plus the
        // residual add's rounding). Mean and variance are f32 sums of R = rows terms:
        // they add about √R·ε·max|v|. (v_i − mean)/σ then errs by at most
        // (2δ' + |v_i − mean|·δ'/σ)/σ with δ' the sum of both, and the scaling by
        // gamma and the shift by beta round once more (ε·|y_i|).
        let k = case.cols as f64;
        let worst = (0..tokens)
            .flat_map(|t| {
                let row = t * rows..(t + 1) * rows;
                let vt = &v[row.clone()];
                let mean = vt.iter().map(|&a| f64::from(a)).sum::<f64>() / rows as f64;
                let sigma = (vt
                    .iter()
                    .map(|&a| (f64::from(a) - mean).powi(2))
                    .sum::<f64>()
                    / rows as f64)
                    .sqrt();
                let input_error = row
                    .clone()
                    .map(|i| {
                        // (The LayerNorm kernel runs unstaged, in f32.)
                        c(norm) * k.sqrt() * EPS * f64::from(case.magnitude[i] + residual[i].abs())
                    })
                    .fold(0.0, f64::max);
                let max_v = vt.iter().map(|a| f64::from(a.abs())).fold(0.0, f64::max);
                let delta = input_error + (rows as f64).sqrt() * EPS * max_v;
                let (got, want, v) = (&got, &want, &v);
                row.clone().map(move |i| {
                    let r = i - t * rows;
                    let centred = (f64::from(v[i]) - mean).abs();
                    let bound = f64::from(ln_gamma[r].abs())
                        * (2.0 * delta + centred * delta / sigma)
                        / sigma
                        + 2.0 * EPS * f64::from(want[i].abs());
                    (f64::from(got[i]) - f64::from(want[i])).abs() / bound
                })
            })
            .fold(0.0, f64::max);
        println!(
            "{}: max rel error {:.2e}, {worst:.2} of the bound",
            case.label("bias+residual+layer_norm", tile, norm),
            common::max_rel_error(&got, &want)
        );
        assert!(worst <= 1.0, "error {worst:.2} x the bound");
    }
}

#[test]
fn bias_epilogues_check_their_vectors_and_limits() {
    let gpu = common::gpu();
    let mut rng = common::rng(11);
    let raw = common::random_gguf(&mut rng, WeightDtype::F16, 8, 32);
    let weights = QuantMatrix::upload(&gpu, WeightDtype::F16, 8, 32, &raw).unwrap();
    let shape = LinearShape {
        dtype: WeightDtype::F16,
        rows: 8,
        cols: 32,
        norm_eps: None,
        tile: RowTile::prefill(DeviceKind::Cpu),
    };
    let x = gpu.storage_zeroed("x", 32 * 4).unwrap();
    let out = gpu.storage_zeroed("out", 8 * 4).unwrap();
    let bias = gpu.storage_zeroed("bias", 8 * 4).unwrap();
    let short = gpu.storage_zeroed("short", 4 * 4).unwrap();
    let one = TokenRange::all(1);
    let plain_bias = EpilogueParams {
        bias: &bias,
        layer_norm: None,
    };

    let biased = Linear::new(&gpu, shape, Epilogue::Bias).unwrap();
    let error = biased
        .bind(&gpu, &weights, &x, None, &out, one)
        .unwrap_err();
    assert!(error.to_string().contains("reads a bias"), "{error}");
    assert!(biased
        .bind_with(&gpu, &weights, &x, None, &out, plain_bias, one)
        .is_ok());
    let short_bias = EpilogueParams {
        bias: &short,
        layer_norm: None,
    };
    assert!(biased
        .bind_with(&gpu, &weights, &x, None, &out, short_bias, one)
        .is_err());

    let normed = Linear::new(&gpu, shape, Epilogue::BiasResidualLayerNorm { eps: 1e-5 }).unwrap();
    assert!(normed
        .bind_with(&gpu, &weights, &x, None, &out, plain_bias, one)
        .is_err());
    let too_short = EpilogueParams {
        bias: &bias,
        layer_norm: Some(&bias),
    };
    let error = normed
        .bind_with(&gpu, &weights, &x, None, &out, too_short, one)
        .unwrap_err();
    assert!(error.to_string().contains("gamma/beta"), "{error}");

    let store = Linear::new(&gpu, shape, Epilogue::Store).unwrap();
    assert!(store
        .bind_with(&gpu, &weights, &x, None, &out, plain_bias, one)
        .is_err());

    let wide = LinearShape {
        rows: 2056,
        ..shape
    };
    let error = Linear::new(&gpu, wide, Epilogue::BiasResidualLayerNorm { eps: 1e-5 }).unwrap_err();
    assert!(error.to_string().contains("2056 rows"), "{error}");
}
