//! BERT weights read from `model.safetensors` into host f32 arrays, every tensor checked against
//! the shape the configuration implies. Matrices keep PyTorch's `[out_features][in_features]`
//! row-major layout.

use std::path::Path;

use half::{bf16, f16};
use pio_plugin_api::{PluginError, PluginResult};
use safetensors::{Dtype, SafeTensors};

use crate::config::BertConfig;

/// A linear layer: `y = W x + b` with `W` of shape `[rows][cols]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// `rows * cols` values, row-major.
    pub weight: Vec<f32>,
    /// `rows` values.
    pub bias: Vec<f32>,
}

/// A LayerNorm's scale and shift.
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    /// Scale (`weight`, a.k.a. gamma).
    pub weight: Vec<f32>,
    /// Shift (`bias`, a.k.a. beta).
    pub bias: Vec<f32>,
}

/// One encoder layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    /// `attention.self.query`.
    pub query: Linear,
    /// `attention.self.key`.
    pub key: Linear,
    /// `attention.self.value`.
    pub value: Linear,
    /// `attention.output.dense`.
    pub attn_out: Linear,
    /// `attention.output.LayerNorm`.
    pub attn_norm: Norm,
    /// `intermediate.dense` (followed by GELU).
    pub up: Linear,
    /// `output.dense`.
    pub down: Linear,
    /// `output.LayerNorm`.
    pub out_norm: Norm,
}

/// All weights of a BERT encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct BertWeights {
    /// `[vocab_size][hidden]`.
    pub word_embeddings: Vec<f32>,
    /// `[max_position_embeddings][hidden]`.
    pub position_embeddings: Vec<f32>,
    /// `[type_vocab_size][hidden]`.
    pub token_type_embeddings: Vec<f32>,
    /// `embeddings.LayerNorm`.
    pub embed_norm: Norm,
    /// The encoder layers, in order.
    pub layers: Vec<LayerWeights>,
}

/// Reads tensors by name from one safetensors file, checking shapes.
struct Reader<'a> {
    file: &'a Path,
    tensors: SafeTensors<'a>,
    /// `""` or `"bert."`, whichever the file's names use.
    prefix: &'static str,
}

impl Reader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> PluginResult<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let view = self.tensors.tensor(&full).map_err(|_| {
            PluginError::model_load(format!(
                "{}: tensor '{full}' is missing",
                self.file.display()
            ))
        })?;
        if view.shape() != shape {
            return Err(PluginError::model_load(format!(
                "{}: tensor '{full}' has shape {:?}, the configuration implies {shape:?}",
                self.file.display(),
                view.shape()
            )));
        }
        let data = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(PluginError::model_load(format!(
                    "{}: tensor '{full}' has dtype {other:?}; expected F32, F16 or BF16",
                    self.file.display()
                )))
            }
        })
    }

    fn linear(&self, name: &str, rows: usize, cols: usize) -> PluginResult<Linear> {
        Ok(Linear {
            rows,
            cols,
            weight: self.tensor(&format!("{name}.weight"), &[rows, cols])?,
            bias: self.tensor(&format!("{name}.bias"), &[rows])?,
        })
    }

    fn norm(&self, name: &str, width: usize) -> PluginResult<Norm> {
        Ok(Norm {
            weight: self.tensor(&format!("{name}.weight"), &[width])?,
            bias: self.tensor(&format!("{name}.bias"), &[width])?,
        })
    }

    fn layer(&self, i: usize, c: &BertConfig) -> PluginResult<LayerWeights> {
        let (h, f) = (c.hidden_size, c.intermediate_size);
        let p = format!("encoder.layer.{i}");
        Ok(LayerWeights {
            query: self.linear(&format!("{p}.attention.self.query"), h, h)?,
            key: self.linear(&format!("{p}.attention.self.key"), h, h)?,
            value: self.linear(&format!("{p}.attention.self.value"), h, h)?,
            attn_out: self.linear(&format!("{p}.attention.output.dense"), h, h)?,
            attn_norm: self.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
            up: self.linear(&format!("{p}.intermediate.dense"), f, h)?,
            down: self.linear(&format!("{p}.output.dense"), h, f)?,
            out_norm: self.norm(&format!("{p}.output.LayerNorm"), h)?,
        })
    }
}

impl BertWeights {
    /// Reads every tensor `config` needs from the safetensors file at `path`.
    pub fn load(path: &Path, config: &BertConfig) -> PluginResult<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| PluginError::model_load(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: the map is read-only and dropped before this function returns; model files
        // are not modified while a model loads (a concurrent truncation could fault, as with
        // any mapped read).
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| PluginError::model_load(format!("cannot map {}: {e}", path.display())))?;
        Self::from_bytes(&map, path, config)
    }

    /// Reads every tensor `config` needs from the bytes of a safetensors file; `path` only
    /// names the file in errors. [`Self::load`] maps the file and calls this.
    pub fn from_bytes(bytes: &[u8], path: &Path, config: &BertConfig) -> PluginResult<Self> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| {
            PluginError::model_load(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let prefix = if tensors
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_ok()
        {
            "bert."
        } else {
            ""
        };
        let reader = Reader {
            file: path,
            tensors,
            prefix,
        };
        let h = config.hidden_size;
        Ok(Self {
            word_embeddings: reader
                .tensor("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position_embeddings: reader.tensor(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?,
            token_type_embeddings: reader.tensor(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?,
            embed_norm: reader.norm("embeddings.LayerNorm", h)?,
            layers: (0..config.num_layers)
                .map(|i| reader.layer(i, config))
                .collect::<PluginResult<_>>()?,
        })
    }
}
