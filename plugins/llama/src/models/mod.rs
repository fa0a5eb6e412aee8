//! Model families: what a model's layers are, read from its GGUF file.
//!
//! A family is one file here (candle's shape: `llama.rs` says what a Llama is). It reads its
//! hyperparameters from the file's metadata by key and answers a [`ModelSpec`]: the shapes, the
//! norms, and for every layer its attention (RoPE, window, q/k norm), its feed-forward
//! (activation) and the names of its tensors. Nothing here computes: the GPU runtime
//! ([`crate::runtime`]) and the CPU reference turn a spec into kernels and loops, so the same
//! description drives both, and a family that needs no new kernel is only a new file.
//!
//! [`describe`] is the architecture dispatch: `general.architecture` → family.

pub mod gemma3;
pub mod llama;

use pio_gguf::{GgufFile, MetadataValue};

use crate::error::{Error, Result};
use crate::hparams::HParams;

/// Metadata keys and values to write into a file.
pub type MetadataEntries = Vec<(String, MetadataValue)>;

/// A model family: the `general.architecture` it answers and how it reads a file of it.
struct Family {
    architecture: &'static str,
    describe: fn(&GgufFile) -> Result<ModelSpec>,
    /// What a file keeping only some layers must state that the family otherwise infers from
    /// the layer index (see [`surgery_metadata`]).
    surgery_metadata: fn(&ModelSpec, &[usize]) -> MetadataEntries,
}

/// Every family this plugin runs.
const FAMILIES: [Family; 2] = [
    Family {
        architecture: llama::ARCHITECTURE,
        describe: llama::describe,
        // Every Llama layer is alike: nothing depends on its index.
        surgery_metadata: |_, _| Vec::new(),
    },
    Family {
        architecture: gemma3::ARCHITECTURE,
        describe: gemma3::describe,
        surgery_metadata: gemma3::surgery_metadata,
    },
];

/// The `general.architecture` names this plugin runs, for messages.
pub fn architectures() -> String {
    let names: Vec<_> = FAMILIES
        .iter()
        .map(|f| format!("`{}`", f.architecture))
        .collect();
    names.join(", ")
}

/// Reads the description of `file` with the family its `general.architecture` names.
///
/// Fails with [`Error::UnsupportedArchitecture`] naming the architecture when no family
/// answers it, and with the family's own errors for missing or inconsistent metadata.
pub fn describe(file: &GgufFile) -> Result<ModelSpec> {
    let architecture = file.architecture()?;
    let family = FAMILIES
        .iter()
        .find(|f| f.architecture == architecture)
        .ok_or_else(|| Error::UnsupportedArchitecture(architecture.to_owned()))?;
    let spec = (family.describe)(file)?;
    spec.validate()?;
    Ok(spec)
}

/// Metadata a file holding only the layers `kept` (indices into `spec.layers`, in order) of
/// a model of `spec` needs so that every kept layer is described as it was: what the family
/// infers from a layer's index (Gemma 3's sliding-window pattern) written out per layer.
pub fn surgery_metadata(spec: &ModelSpec, kept: &[usize]) -> MetadataEntries {
    FAMILIES
        .iter()
        .find(|f| f.architecture == spec.architecture)
        .map_or_else(Vec::new, |f| (f.surgery_metadata)(spec, kept))
}

/// What a model is: its shapes, its norms, its embedding and output, and its layers in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The family's `general.architecture`.
    pub architecture: &'static str,
    /// Shapes shared by every layer.
    pub hparams: HParams,
    /// How every RMSNorm of the model is computed.
    pub norm: RmsNorm,
    /// The token embedding.
    pub embedding: Embedding,
    /// The final norm and output projection.
    pub output: Output,
    /// The transformer blocks, `hparams.n_layer` of them.
    pub layers: Vec<LayerSpec>,
}

/// RMSNorm's parameters, the same for every norm of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNorm {
    /// Added to the mean square before the square root.
    pub eps: f32,
    /// How the stored weight scales the normalized values.
    pub weight: NormWeight,
}

/// How an RMSNorm's stored weight `w` scales the normalized values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormWeight {
    /// By `w` (Llama).
    Plain,
    /// By `1 + w` (Gemma stores the offset from one).
    OnePlus,
}

/// The token embedding table and how its rows are scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Tensor name, `vocab` rows of `n_embd`.
    pub tensor: &'static str,
    /// Factor on every looked-up row: 1 for Llama, `√n_embd` for Gemma.
    pub scale: f32,
}

/// The final norm and the projection to the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Tensor name of the final norm's weight, `[n_embd]`.
    pub norm: &'static str,
    /// Tensor name of the projection; when the file has no such tensor the projection is tied
    /// to the embedding table.
    pub tensor: &'static str,
}

/// One transformer block: attention, then feed-forward, each around a residual add.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSpec {
    /// The attention half.
    pub attention: AttentionSpec,
    /// The feed-forward half.
    pub feed_forward: FeedForwardSpec,
}

/// `x += post_norm(Wo attention(rope(q_norm(Wq h)), rope(k_norm(Wk h)), Wv h))`,
/// `h = input_norm(x)`. Tensor names are the part between `blk.N.` and `.weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionSpec {
    /// Norm of the block's input before the projections.
    pub input_norm: &'static str,
    /// Norm of the attention output before the residual add (Gemma's sandwich norm), if any.
    pub output_norm: Option<&'static str>,
    /// Query projection, `n_embd` → `n_head * head_dim` (the layer's heads, see
    /// [`HParams::heads`]).
    pub q: &'static str,
    /// Key projection, `n_embd` → `n_head_kv * head_dim`.
    pub k: &'static str,
    /// Value projection, `n_embd` → `n_head_kv * head_dim`.
    pub v: &'static str,
    /// Output projection, `n_head * head_dim` → `n_embd` (the layer's query heads).
    pub output: &'static str,
    /// Per-head RMSNorm of queries and keys before RoPE (Gemma 3), if any.
    pub qk_norm: Option<QkNorm>,
    /// Rotary position embedding of this layer.
    pub rope: Rope,
    /// Which earlier positions a token attends to.
    pub window: AttentionWindow,
}

/// Tensor names of the per-head query and key norms, each `[head_dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QkNorm {
    /// Weight of the query heads' norm.
    pub q: &'static str,
    /// Weight of the key heads' norm.
    pub k: &'static str,
}

/// Rotary position embedding: pair `i` of the first `dim` values of each head rotates by
/// `pos · base^(-2i / dim)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// Frequency base.
    pub base: f32,
    /// Leading dimensions of each head that rotate (even, at most `head_dim`).
    pub dim: usize,
    /// Which values form pair `i`.
    pub pairs: RopePairs,
}

/// Which two values of a head rotate together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// `(2i, 2i + 1)`: GGML's "normal" mode (llama.cpp's Llama converter permutes q and k
    /// rows into it).
    Adjacent,
    /// `(i, i + dim / 2)`: GGML's "NeoX" mode, Hugging Face's `rotate_half` (Gemma).
    Halves,
}

/// The positions a token attends to (always causal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionWindow {
    /// Every earlier position.
    Global,
    /// The last `n` positions, its own included (Gemma's local layers).
    Sliding(usize),
}

/// `x += post_norm(W_down (act(W_gate h) · W_up h))`, `h = input_norm(x)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedForwardSpec {
    /// Norm of the input before the gate and up projections.
    pub input_norm: &'static str,
    /// Norm of the output before the residual add (Gemma's sandwich norm), if any.
    pub output_norm: Option<&'static str>,
    /// Gate projection, `n_embd` → `n_ff`.
    pub gate: &'static str,
    /// Up projection, `n_embd` → `n_ff`.
    pub up: &'static str,
    /// Down projection, `n_ff` → `n_embd`.
    pub down: &'static str,
    /// What the gate goes through before it multiplies the up projection.
    pub activation: Activation,
}

/// The gate's activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)`: SwiGLU (Llama).
    Silu,
    /// GELU with the tanh approximation: GeGLU (Gemma).
    GeluTanh,
}

impl ModelSpec {
    /// Checks what every family must hold: one spec per layer, RoPE within the heads, positive
    /// norm epsilon and window, and the shapes themselves.
    pub fn validate(&self) -> Result<()> {
        self.hparams.validate()?;
        let bad = |msg: String| Err(Error::InvalidModel(format!("{}: {msg}", self.architecture)));
        if self.layers.len() != self.hparams.n_layer {
            return bad(format!(
                "{} layer descriptions for block_count {}",
                self.layers.len(),
                self.hparams.n_layer
            ));
        }
        if !(self.norm.eps.is_finite() && self.norm.eps > 0.0) {
            return bad(format!("RMSNorm epsilon {} is not positive", self.norm.eps));
        }
        if !self.embedding.scale.is_finite() {
            return bad(format!("embedding scale {}", self.embedding.scale));
        }
        let head_dim = self.hparams.head_dim;
        for (i, layer) in self.layers.iter().enumerate() {
            let rope = layer.attention.rope;
            if rope.dim == 0 || rope.dim % 2 != 0 || rope.dim > head_dim {
                return bad(format!(
                    "layer {i}: RoPE dimension count {} must be even and in 2..={head_dim}",
                    rope.dim
                ));
            }
            if !(rope.base.is_finite() && rope.base > 0.0) {
                return bad(format!(
                    "layer {i}: RoPE base {} is not positive",
                    rope.base
                ));
            }
            if layer.attention.window == AttentionWindow::Sliding(0) {
                return bad(format!("layer {i}: sliding window of 0 positions"));
            }
        }
        Ok(())
    }

    /// The distinct RoPEs of the layers, in order of first use (one table each on the device).
    pub fn ropes(&self) -> Vec<Rope> {
        let mut ropes: Vec<Rope> = Vec::new();
        for layer in &self.layers {
            if !ropes.contains(&layer.attention.rope) {
                ropes.push(layer.attention.rope);
            }
        }
        ropes
    }
}
