//! [`GpuBert`]: the whole encoder on the device — one batch of token sequences in, one pooled
//! (and normalised) vector per sequence out, in a single submission of fused kernels
//! (1 + 5 per layer + 1 dispatches).

use std::sync::Arc;

use pio_gpu::{
    Dispatch, Epilogue, EpilogueParams, Gpu, GpuBuffer, Linear, LinearShape, Profile, QuantMatrix,
    RowTile, TokenRange, WeightDtype, BLOCK_ELEMENTS, MAX_LAYER_NORM_ROWS,
};
use pio_plugin_api::{PluginError, PluginResult};

use crate::config::ModelConfig;
use crate::kernels::attention::{Attention, AttentionVariant};
use crate::kernels::embed_norm::{EmbedBuffers, EmbedNorm};
use crate::kernels::pool::Pool;
use crate::kernels::{sequence_starts, Params};
use crate::upload::DeviceWeights;
use crate::weights::BertWeights;

/// The compiled kernels; every layer has the same shapes, so one set serves all.
#[derive(Debug)]
struct Kernels {
    embed: EmbedNorm,
    /// `qkv = W h + b`.
    qkv: Linear,
    attention: Attention,
    /// `h = LayerNorm(W ctx + b + h)`.
    attn_out: Linear,
    /// `inter = gelu(W h + b)`.
    up: Linear,
    /// `h = LayerNorm(W inter + b + h)`.
    down: Linear,
    pool: Pool,
}

/// Checks that the model's widths fit the linear kernels, naming the limit: rows of whole
/// 32-element weight blocks, and hidden states no wider than one LayerNorm workgroup holds.
fn check_widths(config: &ModelConfig) -> PluginResult<()> {
    let c = &config.bert;
    for (field, width) in [
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
    ] {
        if width % BLOCK_ELEMENTS != 0 {
            return Err(PluginError::model_load(format!(
                "{field} {width} is not a multiple of {BLOCK_ELEMENTS}, the weight block of the \
                 GPU linear kernels"
            )));
        }
    }
    if c.hidden_size > MAX_LAYER_NORM_ROWS as usize {
        return Err(PluginError::model_load(format!(
            "hidden_size {} is more than the {MAX_LAYER_NORM_ROWS} the fused LayerNorm kernel holds",
            c.hidden_size
        )));
    }
    Ok(())
}

/// A [`Linear`] for `matrix` with `epilogue`, tiled for many tokens (a batch is prefill-like
/// work: every weight is reused for several tokens).
fn linear(
    gpu: &Gpu,
    matrix: &QuantMatrix,
    tile: RowTile,
    epilogue: Epilogue,
) -> PluginResult<Linear> {
    let shape = LinearShape {
        dtype: matrix.dtype(),
        rows: matrix.rows(),
        cols: matrix.cols(),
        norm_eps: None,
        tile,
    };
    Linear::new(gpu, shape, epilogue).map_err(|e| e.into_plugin_error("compiling a linear layer"))
}

/// Activation buffers sized for up to `batch` sequences of `tokens` tokens in all (packed).
#[derive(Debug)]
struct Workspace {
    batch: u32,
    tokens: u32,
    params: GpuBuffer,
    ids: GpuBuffer,
    /// Where each sequence starts in the packed batch ([`sequence_starts`]).
    starts: GpuBuffer,
    /// The hidden states; the LayerNorm epilogues update them in place (residual in, normed
    /// sum out).
    hidden: GpuBuffer,
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
                .map_err(|e| e.into_plugin_error("allocating activations"))
        };
        Ok(Self {
            batch,
            tokens,
            params: gpu
                .uniform_from("bert.params", &Params::for_lengths(&[]))
                .map_err(|e| e.into_plugin_error("allocating activations"))?,
            ids: buffer("bert.ids", t)?,
            starts: buffer("bert.starts", b + 1)?,
            hidden: buffer("bert.hidden", t * h)?,
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
    dtype: WeightDtype,
    weights: DeviceWeights,
    kernels: Kernels,
    workspace: Option<Workspace>,
}

impl GpuBert {
    /// Uploads `weights` with the linear layers stored as `dtype` and compiles the kernels.
    /// Pipelines are compiled by the driver at their first dispatch: run one batch
    /// ([`Self::forward`]) to warm them up.
    pub fn new(
        gpu: Arc<Gpu>,
        config: &ModelConfig,
        weights: &BertWeights,
        dtype: WeightDtype,
    ) -> PluginResult<Self> {
        check_widths(config)?;
        let device_weights = DeviceWeights::upload(&gpu, weights, dtype)?;
        let c = &config.bert;
        let layer = device_weights
            .layers
            .first()
            .ok_or_else(|| PluginError::model_load("the model has no encoder layers"))?;
        let eps = c.layer_norm_eps;
        let tile = RowTile::prefill(gpu.adapter_info().device_type);
        let layer_norm = Epilogue::BiasResidualLayerNorm { eps };
        let kernels = Kernels {
            embed: EmbedNorm::new(&gpu, c.hidden_size as u32, eps)?,
            qkv: linear(&gpu, &layer.qkv, tile, Epilogue::Bias)?,
            attention: Attention::new(
                &gpu,
                c.num_heads as u32,
                c.head_dim() as u32,
                AttentionVariant::for_device(&gpu),
            )?,
            attn_out: linear(&gpu, &layer.attn_out, tile, layer_norm)?,
            up: linear(&gpu, &layer.up, tile, Epilogue::BiasGelu)?,
            down: linear(&gpu, &layer.down, tile, layer_norm)?,
            pool: Pool::new(&gpu, c.hidden_size as u32, config.pooling, config.normalize)?,
        };
        Ok(Self {
            gpu,
            config: config.clone(),
            dtype,
            weights: device_weights,
            kernels,
            workspace: None,
        })
    }

    /// The storage type of the linear layers' weights.
    pub fn dtype(&self) -> WeightDtype {
        self.dtype
    }

    /// Device bytes the weights take.
    pub fn weight_bytes(&self) -> u64 {
        self.weights.bytes()
    }

    /// Device bytes the activation buffers take now (they grow with the largest batch seen).
    pub fn workspace_bytes(&self) -> u64 {
        self.workspace.as_ref().map_or(0, |w| {
            [
                &w.params, &w.ids, &w.starts, &w.hidden, &w.qkv, &w.ctx, &w.inter, &w.pooled,
            ]
            .iter()
            // What the device accounts for each (small buffers are rounded up).
            .map(|b| crate::memory::buffer(b.size()))
            .sum()
        })
    }

    /// Drops the activation buffers (the next batch allocates them again); returns the bytes
    /// freed.
    pub fn drop_workspace(&mut self) -> u64 {
        let bytes = self.workspace_bytes();
        self.workspace = None;
        bytes
    }

    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Checks a batch and returns its sequences' lengths.
    fn lengths(&self, batch: &[Vec<u32>]) -> PluginResult<Vec<u32>> {
        let vocab = self.config.bert.vocab_size;
        let max = self.config.max_seq_length;
        if batch.is_empty() {
            return Err(PluginError::invalid_input("empty batch"));
        }
        batch
            .iter()
            .enumerate()
            .map(|(i, ids)| {
                if ids.is_empty() || ids.len() > max {
                    return Err(PluginError::invalid_input(format!(
                        "sequence {i} has {} tokens; it must have 1..={max}",
                        ids.len()
                    )));
                }
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(PluginError::invalid_input(format!(
                        "sequence {i} holds token id {bad}, outside the model's vocabulary of \
                         {vocab}"
                    )));
                }
                Ok(ids.len() as u32)
            })
            .collect()
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
        let tokens = TokenRange::all(shape.tokens);
        let bias = |bias| EpilogueParams {
            bias,
            layer_norm: None,
        };
        let bias_norm = |bias, norm| EpilogueParams {
            bias,
            layer_norm: Some(norm),
        };
        let mut launches = Vec::with_capacity(2 + 5 * self.weights.layers.len());
        launches.push(k.embed.bind(
            gpu,
            EmbedBuffers {
                word: &self.weights.word,
                pos_type: &self.weights.pos_type,
                norm: &self.weights.embed_norm,
                ids: &w.ids,
                starts: &w.starts,
                out: &w.hidden,
                params: p,
            },
            shape,
        )?);
        for l in &self.weights.layers {
            launches.push(k.qkv.bind_with(
                gpu,
                &l.qkv,
                &w.hidden,
                None,
                &w.qkv,
                bias(&l.qkv_bias),
                tokens,
            )?);
            launches.push(k.attention.bind(gpu, &w.qkv, &w.starts, &w.ctx, p, shape)?);
            launches.push(k.attn_out.bind_with(
                gpu,
                &l.attn_out,
                &w.ctx,
                None,
                &w.hidden,
                bias_norm(&l.attn_out_bias, &l.attn_norm),
                tokens,
            )?);
            launches.push(k.up.bind_with(
                gpu,
                &l.up,
                &w.hidden,
                None,
                &w.inter,
                bias(&l.up_bias),
                tokens,
            )?);
            launches.push(k.down.bind_with(
                gpu,
                &l.down,
                &w.inter,
                None,
                &w.hidden,
                bias_norm(&l.down_bias, &l.out_norm),
                tokens,
            )?);
        }
        launches.push(
            k.pool
                .bind(gpu, &w.hidden, &w.starts, &w.pooled, p, shape)?,
        );
        Ok(launches)
    }

    /// Checks `batch`, writes its ids (packed) and where each sequence starts to the
    /// workspace (growing it if needed) and returns its shape.
    fn upload_batch(&mut self, batch: &[Vec<u32>]) -> PluginResult<Params> {
        let lengths = self.lengths(batch)?;
        let shape = Params::for_lengths(&lengths);
        let ids: Vec<u32> = batch.concat();
        self.ensure_workspace(shape)?;
        let w = self.workspace.as_ref().expect("ensure_workspace made it");
        let write = |e: pio_gpu::GpuError| e.into_plugin_error("writing the batch");
        self.gpu.write(&w.params, 0, &[shape]).map_err(write)?;
        self.gpu.write(&w.ids, 0, &ids).map_err(write)?;
        self.gpu
            .write(&w.starts, 0, &sequence_starts(&lengths))
            .map_err(write)?;
        Ok(shape)
    }

    /// The pooled vectors of the last `shape.batch` sequences run, read back.
    fn read_pooled(
        &self,
        encoder: pio_gpu::wgpu::CommandEncoder,
        shape: Params,
    ) -> PluginResult<Vec<Vec<f32>>> {
        let hidden = self.config.bert.hidden_size;
        let w = self.workspace.as_ref().expect("a batch was uploaded");
        let pooled: Vec<f32> = self
            .gpu
            .submit_and_read(
                encoder,
                &w.pooled,
                0,
                u64::from(shape.batch) * hidden as u64,
            )
            .map_err(|e| e.into_plugin_error("running the model"))?;
        Ok(pooled.chunks_exact(hidden).map(<[f32]>::to_vec).collect())
    }

    /// Embeds a batch of token sequences (each `1..=max_seq_length` ids) in one pass; returns
    /// one pooled vector of `hidden_size` values per sequence.
    pub fn forward(&mut self, batch: &[Vec<u32>]) -> PluginResult<Vec<Vec<f32>>> {
        let shape = self.upload_batch(batch)?;
        let w = self.workspace.as_ref().expect("upload_batch made it");
        let launches = self
            .launches(w, shape)
            .map_err(|e| e.into_plugin_error("binding the kernels"))?;
        // One submission: the forward pass and the copy of the pooled vectors.
        self.read_pooled(self.gpu.encode(&launches), shape)
    }

    /// [`Self::forward`] with every kernel launch timed on its own ([`Gpu::profile`]): the
    /// pooled vectors and where the pass's time went.
    pub fn forward_profiled(
        &mut self,
        batch: &[Vec<u32>],
    ) -> PluginResult<(Vec<Vec<f32>>, Profile)> {
        let shape = self.upload_batch(batch)?;
        let w = self.workspace.as_ref().expect("upload_batch made it");
        let launches = self
            .launches(w, shape)
            .map_err(|e| e.into_plugin_error("binding the kernels"))?;
        let profile = self
            .gpu
            .profile(&launches.iter().collect::<Vec<_>>())
            .map_err(|e| e.into_plugin_error("timing the model's kernels"))?;
        let vectors = self.read_pooled(self.gpu.encode(&[]), shape)?;
        Ok((vectors, profile))
    }
}
