//! The Llama forward pass on the GPU, built from `pio-gpu` kernels.
//!
//! Weights stay in their GGUF storage type on the device (repacked by [`QuantMatrix::upload`]).
//! A forward step of `T` tokens records, into one command encoder submitted once:
//!
//! ```text
//! x = embed(tokens)
//! per layer:  h = rmsnorm(x, attn_norm)
//!             q, k, v = Wq h, Wk h, Wv h;  rope(q), rope(k)   (GGML adjacent-pair RoPE)
//!             cache[layer][positions] = k, v
//!             x += Wo attention(q, cache[layer])              (causal GQA, residual fused)
//!             h = rmsnorm(x, ffn_norm)
//!             x += Wdown (silu(Wgate h) * Wup h)              (residual fused)
//! logits = Wout rmsnorm(x, output_norm)   (all T rows, or only the last one copied out)
//! ```
//!
//! then reads the logits back. Prompts longer than [`GpuModel::max_batch`] are processed in
//! chunks. The dispatches of a single-token step are built once and reused for every decoded
//! token; only the token-id and position buffers change.

use pio_gguf::{GgufFile, TensorType, TensorView};
use pio_gpu::{
    Attention, AttentionConfig, Dispatch, Embed, Gpu, GpuBuffer, KvCache, KvWrite, KvWriteConfig,
    Matmul, MatmulConfig, MatmulTile, QuantMatrix, RmsNorm, Rope, RopeConfig, RopeTable, RowLayout,
    SiluMul, SiluMulConfig, WeightDtype,
};

use crate::error::{Error, Result};
use crate::generate::Forward;
use crate::hparams::HParams;
use crate::weights::ModelTensors;

/// Default largest number of tokens processed by one forward submission.
pub const DEFAULT_MAX_BATCH: usize = 64;

fn weight_dtype(t: &TensorView) -> Result<WeightDtype> {
    Ok(match t.info.dtype {
        TensorType::F32 => WeightDtype::F32,
        TensorType::F16 => WeightDtype::F16,
        TensorType::Q4_0 => WeightDtype::Q4_0,
        TensorType::Q4_1 => WeightDtype::Q4_1,
        TensorType::Q8_0 => WeightDtype::Q8_0,
        other => {
            return Err(Error::UnsupportedTensorType {
                name: t.info.name.clone(),
                dtype: other.to_string(),
            })
        }
    })
}

/// A weight matrix on the device with its matmul kernels for one token and for many.
struct Linear {
    weights: QuantMatrix,
    decode: Matmul,
    prefill: Matmul,
}

impl Linear {
    fn upload(gpu: &Gpu, t: &TensorView, accumulate: bool) -> Result<Self> {
        let dtype = weight_dtype(t)?;
        let (rows, cols) = (t.info.dims[1] as usize, t.info.dims[0] as usize);
        let weights = QuantMatrix::upload(gpu, dtype, rows, cols, t.data)?;
        let config = |tile| MatmulConfig {
            dtype,
            rows: rows as u32,
            cols: cols as u32,
            tile,
            accumulate,
        };
        Ok(Linear {
            decode: Matmul::new(gpu, config(MatmulTile::DECODE))?,
            prefill: Matmul::new(gpu, config(MatmulTile::PREFILL))?,
            weights,
        })
    }

    fn bind(&self, gpu: &Gpu, x: &GpuBuffer, out: &GpuBuffer, n: u32) -> Result<Dispatch> {
        let kernel = if n == 1 { &self.decode } else { &self.prefill };
        Ok(kernel.bind(gpu, &self.weights, x, out, n)?)
    }
}

struct Layer {
    attn_norm: GpuBuffer,
    ffn_norm: GpuBuffer,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// Kernels whose shape is the same in every layer.
struct Kernels {
    embed: Embed,
    norm: RmsNorm,
    rope_q: Rope,
    rope_k: Rope,
    kv_write: KvWrite,
    attention: Attention,
    silu_mul: SiluMul,
}

/// Activation buffers, each sized for `max_batch` tokens.
struct Activations {
    tokens: GpuBuffer,
    positions: GpuBuffer,
    x: GpuBuffer,
    h: GpuBuffer,
    q: GpuBuffer,
    k: GpuBuffer,
    v: GpuBuffer,
    attn: GpuBuffer,
    gate: GpuBuffer,
    up: GpuBuffer,
    act: GpuBuffer,
    /// The last token's normalised hidden state, when only its logits are wanted.
    last: GpuBuffer,
    logits: GpuBuffer,
}

/// The dispatches of one forward step: the transformer body (ending with the final norm) and
/// the output projection, with a copy of the last row in between when only it is projected.
struct Step {
    body: Vec<Dispatch>,
    head: Dispatch,
    n_tokens: u32,
    all_logits: bool,
}

/// The model on the GPU with its KV cache; implements [`Forward`].
pub struct GpuModel {
    hp: HParams,
    context: usize,
    max_batch: usize,
    token_embd: QuantMatrix,
    /// `None` when the output projection is tied to the embedding.
    output: Option<Linear>,
    tied_decode: Matmul,
    tied_prefill: Matmul,
    output_norm: GpuBuffer,
    layers: Vec<Layer>,
    kernels: Kernels,
    rope_table: RopeTable,
    cache: KvCache,
    acts: Activations,
    decode_step: Option<Step>,
    // Declared last so every buffer above is dropped before the device.
    gpu: Gpu,
}

impl GpuModel {
    /// Uploads the weights of `file` to `gpu`, compiles every kernel, and allocates a KV cache of
    /// `context` positions and activations for batches of up to `max_batch` tokens.
    pub fn new(gpu: Gpu, file: &GgufFile, context: usize, max_batch: usize) -> Result<Self> {
        let hp = HParams::from_gguf(file)?;
        if hp.rope_dim != hp.head_dim {
            return Err(Error::InvalidModel(format!(
                "partial RoPE (rope.dimension_count {} < head_dim {}) is not supported on the GPU",
                hp.rope_dim, hp.head_dim
            )));
        }
        if context == 0 || max_batch == 0 {
            return Err(Error::InvalidParams(
                "context length and batch size must be positive".into(),
            ));
        }
        let t = ModelTensors::from_gguf(file, &hp)?;
        let u = |v: usize| v as u32;
        let (e, kv, ff, vocab) = (u(hp.n_embd), u(hp.kv_dim()), u(hp.n_ff), u(hp.vocab_size));
        let (ctx, b) = (u(context), max_batch as u64);

        let vector = |t: &TensorView| -> Result<GpuBuffer> {
            Ok(gpu.storage_from(&t.info.name, &t.to_f32()?)?)
        };
        let layers = t
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    attn_norm: vector(&l.attn_norm)?,
                    ffn_norm: vector(&l.ffn_norm)?,
                    wq: Linear::upload(&gpu, &l.attn_q, false)?,
                    wk: Linear::upload(&gpu, &l.attn_k, false)?,
                    wv: Linear::upload(&gpu, &l.attn_v, false)?,
                    wo: Linear::upload(&gpu, &l.attn_output, true)?,
                    w_gate: Linear::upload(&gpu, &l.ffn_gate, false)?,
                    w_up: Linear::upload(&gpu, &l.ffn_up, false)?,
                    w_down: Linear::upload(&gpu, &l.ffn_down, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let embd_dtype = weight_dtype(&t.token_embd)?;
        let token_embd = QuantMatrix::upload(
            &gpu,
            embd_dtype,
            hp.vocab_size,
            hp.n_embd,
            t.token_embd.data,
        )?;
        let output = if t.tied_output {
            None
        } else {
            Some(Linear::upload(&gpu, &t.output, false)?)
        };
        let tied = |tile| MatmulConfig {
            dtype: embd_dtype,
            rows: vocab,
            cols: e,
            tile,
            accumulate: false,
        };
        let tied_decode = Matmul::new(&gpu, tied(MatmulTile::DECODE))?;
        let tied_prefill = Matmul::new(&gpu, tied(MatmulTile::PREFILL))?;

        let (hd, nh, nkv) = (u(hp.head_dim), u(hp.n_head), u(hp.n_head_kv));
        let kernels = Kernels {
            embed: Embed::new(&gpu, embd_dtype, vocab, e)?,
            norm: RmsNorm::new(&gpu, e, hp.rms_eps)?,
            rope_q: Rope::new(
                &gpu,
                RopeConfig {
                    head_dim: hd,
                    n_heads: nh,
                    layout: RowLayout::contiguous(e),
                    max_positions: ctx,
                },
            )?,
            rope_k: Rope::new(
                &gpu,
                RopeConfig {
                    head_dim: hd,
                    n_heads: nkv,
                    layout: RowLayout::contiguous(kv),
                    max_positions: ctx,
                },
            )?,
            kv_write: KvWrite::new(
                &gpu,
                KvWriteConfig {
                    kv_dim: kv,
                    k: RowLayout::contiguous(kv),
                    v: RowLayout::contiguous(kv),
                    max_positions: ctx,
                },
            )?,
            attention: Attention::new(
                &gpu,
                AttentionConfig {
                    n_heads: nh,
                    n_kv_heads: nkv,
                    head_dim: hd,
                    q: RowLayout::contiguous(e),
                    max_positions: ctx,
                },
            )?,
            silu_mul: SiluMul::new(
                &gpu,
                SiluMulConfig {
                    width: ff,
                    gate: RowLayout::contiguous(ff),
                    up: RowLayout::contiguous(ff),
                },
            )?,
        };
        let rope_table = RopeTable::new(&gpu, hd, f64::from(hp.rope_base), ctx)?;
        let cache = KvCache::new(&gpu, u(hp.n_layer), ctx, nkv, hd)?;
        let words = |name: &str, n: u64| gpu.storage_zeroed(name, n * 4);
        let acts = Activations {
            tokens: words("token ids", b)?,
            positions: words("positions", b)?,
            x: words("x", b * u64::from(e))?,
            h: words("h", b * u64::from(e))?,
            q: words("q", b * u64::from(e))?,
            k: words("k", b * u64::from(kv))?,
            v: words("v", b * u64::from(kv))?,
            attn: words("attention out", b * u64::from(e))?,
            gate: words("gate", b * u64::from(ff))?,
            up: words("up", b * u64::from(ff))?,
            act: words("swiglu", b * u64::from(ff))?,
            last: words("last hidden", u64::from(e))?,
            logits: words("logits", b * u64::from(vocab))?,
        };
        let mut model = GpuModel {
            output_norm: vector(&t.output_norm)?,
            hp,
            context,
            max_batch,
            token_embd,
            output,
            tied_decode,
            tied_prefill,
            layers,
            kernels,
            rope_table,
            cache,
            acts,
            decode_step: None,
            gpu,
        };
        model.decode_step = Some(model.build_step(1, false)?);
        // Software drivers compile a pipeline at its first dispatch: run a batched and a
        // single-token step now so the first request does not pay for it. The cache positions
        // written here are overwritten by the first real forward.
        model.forward(&[0, 0], 0, false)?;
        model.forward(&[0], 0, false)?;
        Ok(model)
    }

    /// The device the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The model's hyperparameters.
    pub fn hparams(&self) -> &HParams {
        &self.hp
    }

    /// Positions the KV cache holds.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Largest number of tokens one submission processes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Binds every dispatch of a step over `n` tokens.
    fn build_step(&self, n: u32, all_logits: bool) -> Result<Step> {
        let (gpu, a, k) = (&self.gpu, &self.acts, &self.kernels);
        let mut body = vec![k.embed.bind(gpu, &self.token_embd, &a.tokens, &a.x, n)?];
        for (i, l) in self.layers.iter().enumerate() {
            body.extend([
                k.norm.bind(gpu, &a.x, &l.attn_norm, &a.h, n)?,
                l.wq.bind(gpu, &a.h, &a.q, n)?,
                l.wk.bind(gpu, &a.h, &a.k, n)?,
                l.wv.bind(gpu, &a.h, &a.v, n)?,
                k.rope_q
                    .bind(gpu, &a.q, &self.rope_table, &a.positions, n)?,
                k.rope_k
                    .bind(gpu, &a.k, &self.rope_table, &a.positions, n)?,
                k.kv_write
                    .bind(gpu, &a.k, &a.v, &a.positions, self.cache.layer(i)?, n)?,
                k.attention
                    .bind(gpu, &a.q, &a.positions, self.cache.layer(i)?, &a.attn, n)?,
                l.wo.bind(gpu, &a.attn, &a.x, n)?,
                k.norm.bind(gpu, &a.x, &l.ffn_norm, &a.h, n)?,
                l.w_gate.bind(gpu, &a.h, &a.gate, n)?,
                l.w_up.bind(gpu, &a.h, &a.up, n)?,
                k.silu_mul.bind(gpu, &a.gate, &a.up, &a.act, n)?,
                l.w_down.bind(gpu, &a.act, &a.x, n)?,
            ]);
        }
        body.push(k.norm.bind(gpu, &a.x, &self.output_norm, &a.h, n)?);
        let (input, rows) = if all_logits || n == 1 {
            (&a.h, n)
        } else {
            (&a.last, 1)
        };
        let head = match &self.output {
            Some(out) => out.bind(gpu, input, &a.logits, rows)?,
            None => {
                let kernel = if rows == 1 {
                    &self.tied_decode
                } else {
                    &self.tied_prefill
                };
                kernel.bind(gpu, &self.token_embd, input, &a.logits, rows)?
            }
        };
        Ok(Step {
            body,
            head,
            n_tokens: n,
            all_logits,
        })
    }

    /// Runs one step of at most `max_batch` tokens and reads its logits back.
    fn run_step(&self, step: &Step, tokens: &[u32], start_pos: usize) -> Result<Vec<f32>> {
        let n = step.n_tokens as usize;
        debug_assert_eq!(tokens.len(), n);
        let positions: Vec<u32> = (start_pos..start_pos + n).map(|p| p as u32).collect();
        self.gpu.write(&self.acts.tokens, 0, tokens)?;
        self.gpu.write(&self.acts.positions, 0, &positions)?;

        let mut encoder = self
            .gpu
            .device()
            .create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            for d in &step.body {
                d.record(&mut pass);
            }
        }
        let copy_last = !step.all_logits && n > 1;
        if copy_last {
            let row = u64::from(self.hp.n_embd as u32) * 4;
            encoder.copy_buffer_to_buffer(
                self.acts.h.raw(),
                (n as u64 - 1) * row,
                self.acts.last.raw(),
                0,
                row,
            );
        }
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            step.head.record(&mut pass);
        }
        self.gpu.queue().submit([encoder.finish()]);
        let rows = if step.all_logits { n } else { 1 };
        let vocab = self.hp.vocab_size as u64;
        let logits = self
            .gpu
            .read_range::<f32>(&self.acts.logits, 0, rows as u64 * vocab)?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::Numerics(format!(
                "GPU logit {} of position {} is {}",
                i as u64 % vocab,
                start_pos + i / vocab as usize,
                logits[i]
            )));
        }
        Ok(logits)
    }
}

impl Forward for GpuModel {
    fn vocab_size(&self) -> usize {
        self.hp.vocab_size
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn forward(&mut self, tokens: &[u32], start_pos: usize, all_logits: bool) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidParams("forward of no tokens".into()));
        }
        if start_pos + tokens.len() > self.context {
            return Err(Error::PromptTooLong {
                prompt: start_pos + tokens.len(),
                context: self.context,
            });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.hp.vocab_size) {
            return Err(Error::InvalidParams(format!(
                "token {bad} is outside the vocabulary of {}",
                self.hp.vocab_size
            )));
        }
        let mut out = Vec::new();
        let chunks = tokens.chunks(self.max_batch);
        let n_chunks = chunks.len();
        for (i, chunk) in chunks.enumerate() {
            let pos = start_pos + i * self.max_batch;
            let wants_logits = all_logits || i + 1 == n_chunks;
            let logits = match (&self.decode_step, chunk.len()) {
                (Some(step), 1) => self.run_step(step, chunk, pos)?,
                _ => {
                    let step = self.build_step(chunk.len() as u32, all_logits)?;
                    self.run_step(&step, chunk, pos)?
                }
            };
            if wants_logits {
                out.extend_from_slice(&logits);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::ReferenceModel;
    use crate::sampler::argmax;
    use crate::test_model::{compare, smollm2, test_gpu, tiny_llama, TinyConfig};

    /// Runs `prompt` (all positions) and then `decode_steps` greedy tokens through both models,
    /// printing and returning the worst absolute and relative logit errors.
    fn check_against_reference(
        gpu_model: &mut GpuModel,
        reference: &mut ReferenceModel,
        prompt: &[u32],
        decode_steps: usize,
        label: &str,
    ) -> (f32, f32) {
        let vocab = reference.vocab_size();
        let g = gpu_model.forward(prompt, 0, true).unwrap();
        let r = reference.forward(prompt, 0, true).unwrap();
        let (mut abs, mut rel) = compare(&g, &r);
        eprintln!(
            "{label}: prompt of {} tokens: max abs {abs:.3e}, rel {rel:.3e}",
            prompt.len()
        );
        let mut next = argmax(&r[r.len() - vocab..]);
        for step in 0..decode_steps {
            let pos = prompt.len() + step;
            let g = gpu_model.forward(&[next], pos, false).unwrap();
            let r = reference.forward(&[next], pos, false).unwrap();
            let (a, b) = compare(&g, &r);
            eprintln!("{label}: decode position {pos}: max abs {a:.3e}, rel {b:.3e}");
            (abs, rel) = (abs.max(a), rel.max(b));
            next = argmax(&r);
        }
        (abs, rel)
    }

    fn tiny_case(cfg: TinyConfig, max_batch: usize) {
        let file = tiny_llama(&cfg);
        let mut reference = ReferenceModel::load(&file, 64).unwrap();
        let mut model = GpuModel::new(test_gpu(), &file, 64, max_batch).unwrap();
        let prompt: Vec<u32> = (0..21).map(|i| (i * 37 + 5) % 290).collect();
        let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 6, "tiny");
        // Both sides use the same quantized weights; only f32 summation order differs.
        assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
    }

    #[test]
    fn tiny_random_model_matches_reference() {
        tiny_case(TinyConfig::default(), 8);
    }

    #[test]
    fn tiny_tied_model_in_one_batch_matches_reference() {
        let cfg = TinyConfig {
            tied: true,
            n_head_kv: 1,
            types: vec![TensorType::Q4_1, TensorType::F16, TensorType::Q8_0],
            seed: 7,
            ..TinyConfig::default()
        };
        tiny_case(cfg, 64);
    }

    #[test]
    fn rewinding_the_cache_recomputes_the_same_logits() {
        let file = tiny_llama(&TinyConfig::default());
        let mut model = GpuModel::new(test_gpu(), &file, 32, 16).unwrap();
        let a = model.forward(&[5, 6, 7, 8], 0, false).unwrap();
        model.forward(&[9, 9, 9], 4, false).unwrap();
        // Overwrite positions 2.. with the original tokens: the cache of 0..2 is reused.
        let b = model.forward(&[7, 8], 2, false).unwrap();
        assert!(compare(&a, &b).0 < 1e-5);
        let err = model.forward(&[1; 5], 30, false).unwrap_err();
        assert!(matches!(err, Error::PromptTooLong { .. }), "{err}");
    }

    #[test]
    fn smollm2_matches_reference() {
        let Some(path) = smollm2() else { return };
        let file = GgufFile::open(path).unwrap();
        let mut reference = ReferenceModel::load(&file, 128).unwrap();
        let mut model = GpuModel::new(test_gpu(), &file, 128, DEFAULT_MAX_BATCH).unwrap();
        // "<|im_start|>user\nThe capital" and some arbitrary ids.
        let prompt = [1, 4093, 198, 504, 3575, 3223, 28, 1029, 8130, 49, 2];
        let (abs, rel) = check_against_reference(&mut model, &mut reference, &prompt, 4, "SmolLM2");
        assert!(abs < 1e-3 && rel < 1e-4, "max abs {abs}, rel {rel}");
    }
}
