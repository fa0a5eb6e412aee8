//! [`GpuBert`]: the whole encoder on the device — one batch of token sequences in, one pooled
//! (and normalised) vector per sequence out, in a single submission of fused kernels
//! (1 + 5 per layer + 1 dispatches).

use std::sync::Arc;

use pio_gpu::{Dispatch, Gpu, GpuBuffer};
use pio_plugin_api::{PluginError, PluginResult};

use crate::config::ModelConfig;
use crate::kernels::attention::Attention;
use crate::kernels::embed_norm::{EmbedBuffers, EmbedNorm};
use crate::kernels::linear::Linear;
use crate::kernels::linear_norm::LinearNorm;
use crate::kernels::pool::Pool;
use crate::kernels::{gpu_error, Params};
use crate::pack::WeightFormat;
use crate::upload::DeviceWeights;
use crate::weights::BertWeights;

/// The compiled kernels; every layer has the same shapes, so one set serves all.
#[derive(Debug)]
struct Kernels {
    embed: EmbedNorm,
    qkv: Linear,
    attention: Attention,
    attn_out: LinearNorm,
    up: Linear,
    down: LinearNorm,
    pool: Pool,
}

/// Activation buffers sized for up to `batch` sequences and `tokens` padded tokens.
#[derive(Debug)]
struct Workspace {
    batch: u32,
    tokens: u32,
    params: GpuBuffer,
    ids: GpuBuffer,
    lengths: GpuBuffer,
    h0: GpuBuffer,
    h1: GpuBuffer,
    qkv: GpuBuffer,
    ctx: GpuBuffer,
    inter: GpuBuffer,
    pooled: GpuBuffer,
}

impl Workspace {
    fn new(gpu: &Gpu, config: &ModelConfig, batch: u32, tokens: u32) -> PluginResult<Self> {
        let (b, t) = (u64::from(batch), u64::from(tokens));
        let h = config.bert.hidden_size as u64;
        let f = config.bert.intermediate_size as u64;
        let buffer = |label: &str, values: u64| {
            gpu.storage_zeroed(label, values * 4)
                .map_err(|e| gpu_error("allocating activations", e))
        };
        Ok(Self {
            batch,
            tokens,
            params: gpu
                .uniform_from("bert.params", &Params::new(0, 0))
                .map_err(|e| gpu_error("allocating activations", e))?,
            ids: buffer("bert.ids", t)?,
            lengths: buffer("bert.lengths", b)?,
            h0: buffer("bert.h0", t * h)?,
            h1: buffer("bert.h1", t * h)?,
            qkv: buffer("bert.qkv", t * 3 * h)?,
            ctx: buffer("bert.ctx", t * h)?,
            inter: buffer("bert.ffn", t * f)?,
            pooled: buffer("bert.pooled", b * h)?,
        })
    }
}

/// A BERT encoder with pooling, resident on one device.
#[derive(Debug)]
pub struct GpuBert {
    gpu: Arc<Gpu>,
    config: ModelConfig,
    format: WeightFormat,
    weights: DeviceWeights,
    kernels: Kernels,
    workspace: Option<Workspace>,
}

impl GpuBert {
    /// Uploads `weights` in `format` and compiles the kernels. Pipelines are compiled by the
    /// driver at their first dispatch: run one batch ([`Self::forward`]) to warm them up.
    pub fn new(
        gpu: Arc<Gpu>,
        config: &ModelConfig,
        weights: &BertWeights,
        format: WeightFormat,
    ) -> PluginResult<Self> {
        let device_weights = DeviceWeights::upload(&gpu, weights, format)?;
        let c = &config.bert;
        let layer = device_weights
            .layers
            .first()
            .ok_or_else(|| PluginError::model_load("the model has no encoder layers"))?;
        let eps = c.layer_norm_eps;
        let kernels = Kernels {
            embed: EmbedNorm::new(&gpu, c.hidden_size as u32, eps)?,
            qkv: Linear::new(&gpu, &layer.qkv, false)?,
            attention: Attention::new(&gpu, c.num_heads as u32, c.head_dim() as u32)?,
            attn_out: LinearNorm::new(&gpu, &layer.attn_out, eps)?,
            up: Linear::new(&gpu, &layer.up, true)?,
            down: LinearNorm::new(&gpu, &layer.down, eps)?,
            pool: Pool::new(&gpu, c.hidden_size as u32, config.pooling, config.normalize)?,
        };
        Ok(Self {
            gpu,
            config: config.clone(),
            format,
            weights: device_weights,
            kernels,
            workspace: None,
        })
    }

    /// The weight storage format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Device bytes the weights take.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes()
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Checks a batch and returns its padded shape.
    fn shape(&self, batch: &[Vec<u32>]) -> PluginResult<Params> {
        let vocab = self.config.bert.vocab_size;
        let max = self.config.max_seq_length;
        let mut seq_len = 0;
        for (i, ids) in batch.iter().enumerate() {
            if ids.is_empty() || ids.len() > max {
                return Err(PluginError::invalid_input(format!(
                    "sequence {i} has {} tokens; it must have 1..={max}",
                    ids.len()
                )));
            }
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(PluginError::invalid_input(format!(
                    "sequence {i} holds token id {bad}, outside the model's vocabulary of {vocab}"
                )));
            }
            seq_len = seq_len.max(ids.len());
        }
        if batch.is_empty() {
            return Err(PluginError::invalid_input("empty batch"));
        }
        Ok(Params::new(batch.len() as u32, seq_len as u32))
    }

    /// Makes sure the workspace holds `shape`, growing it if needed.
    fn ensure_workspace(&mut self, shape: Params) -> PluginResult<()> {
        let fits = self
            .workspace
            .as_ref()
            .is_some_and(|w| w.batch >= shape.batch && w.tokens >= shape.tokens);
        if !fits {
            let (batch, tokens) = self
                .workspace
                .as_ref()
                .map_or((0, 0), |w| (w.batch, w.tokens));
            // Drop the old buffers first so the device never holds both.
            self.workspace = None;
            self.workspace = Some(Workspace::new(
                &self.gpu,
                &self.config,
                batch.max(shape.batch),
                tokens.max(shape.tokens),
            )?);
        }
        Ok(())
    }

    /// The kernel launches of one forward pass over `shape`.
    fn launches(&self, w: &Workspace, shape: Params) -> pio_gpu::Result<Vec<Dispatch>> {
        let gpu = &self.gpu;
        let k = &self.kernels;
        let p = &w.params;
        let mut launches = Vec::with_capacity(2 + 5 * self.weights.layers.len());
        launches.push(k.embed.bind(
            gpu,
            EmbedBuffers {
                word: &self.weights.word,
                pos_type: &self.weights.pos_type,
                norm: &self.weights.embed_norm,
                ids: &w.ids,
                out: &w.h0,
                params: p,
            },
            shape,
        )?);
        for layer in &self.weights.layers {
            launches.push(
                k.qkv
                    .bind(gpu, &layer.qkv, &layer.qkv_bias, &w.h0, &w.qkv, p, shape)?,
            );
            launches.push(
                k.attention
                    .bind(gpu, &w.qkv, &w.lengths, &w.ctx, p, shape)?,
            );
            launches.push(k.attn_out.bind(
                gpu,
                &layer.attn_out,
                &layer.attn_aux,
                &w.ctx,
                &w.h0,
                &w.h1,
                p,
                shape,
            )?);
            launches.push(k.up.bind(gpu, &layer.up, &layer.up_bias, &w.h1, &w.inter, p, shape)?);
            launches.push(k.down.bind(
                gpu,
                &layer.down,
                &layer.down_aux,
                &w.inter,
                &w.h1,
                &w.h0,
                p,
                shape,
            )?);
        }
        launches.push(k.pool.bind(gpu, &w.h0, &w.lengths, &w.pooled, p, shape)?);
        Ok(launches)
    }

    /// Embeds a batch of token sequences (each `1..=max_seq_length` ids) in one pass; returns
    /// one pooled vector of `hidden_size` values per sequence.
    pub fn forward(&mut self, batch: &[Vec<u32>]) -> PluginResult<Vec<Vec<f32>>> {
        let shape = self.shape(batch)?;
        let hidden = self.config.bert.hidden_size;
        let mut ids = vec![0u32; shape.tokens as usize];
        for (row, seq) in ids.chunks_exact_mut(shape.seq_len as usize).zip(batch) {
            row[..seq.len()].copy_from_slice(seq);
        }
        let lengths: Vec<u32> = batch.iter().map(|s| s.len() as u32).collect();
        self.ensure_workspace(shape)?;
        let gpu = &self.gpu;
        let w = self.workspace.as_ref().expect("ensure_workspace made it");
        let write = |e| gpu_error("writing the batch", e);
        gpu.write(&w.params, 0, &[shape]).map_err(write)?;
        gpu.write(&w.ids, 0, &ids).map_err(write)?;
        gpu.write(&w.lengths, 0, &lengths).map_err(write)?;
        let launches = self
            .launches(w, shape)
            .map_err(|e| gpu_error("binding the kernels", e))?;
        // One submission: the forward pass and the copy of the pooled vectors.
        let pooled: Vec<f32> = gpu
            .submit_and_read(
                gpu.encode(&launches),
                &w.pooled,
                0,
                u64::from(shape.batch) * hidden as u64,
            )
            .map_err(|e| gpu_error("running the model", e))?;
        Ok(pooled.chunks_exact(hidden).map(<[f32]>::to_vec).collect())
    }
}
