//! Rewriting a model in other storage types: every tensor dequantized and quantized again
//! (with this crate's quantizers), the metadata copied. [`q4_k_m_type`] is llama.cpp's
//! Q4_K_M type choice, so a K-quant mix can be made from any Llama-style file at hand.
//!
//! ```no_run
//! use pio_gguf::{requantize, GgufFile};
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = file.get_u32("llama.block_count")? as usize;
//! let plan = requantize::Q4KM::new(&file, layers);
//! requantize::requantize(&file, |info| plan.type_of(info))?.write_to("SmolLM2.Q4_K_M.gguf")?;
//! # Ok::<(), pio_gguf::GgufError>(())
//! ```

use crate::error::{GgufError, Result};
use crate::reader::{GgufFile, ALIGNMENT_KEY};
use crate::tensor::{TensorInfo, TensorType};
use crate::writer::GgufWriter;
use crate::QK_K;

/// A writer holding `file`'s metadata and every tensor of it converted to `choose(info)`
/// (tensors whose type is kept are copied byte for byte).
pub fn requantize(
    file: &GgufFile,
    mut choose: impl FnMut(&TensorInfo) -> TensorType,
) -> Result<GgufWriter> {
    let mut writer = GgufWriter::new();
    for (key, value) in file.metadata() {
        // The writer lays tensors out with its own alignment (the default).
        if key != ALIGNMENT_KEY {
            writer.add_metadata(key.clone(), value.clone());
        }
    }
    for info in file.tensors() {
        let view = file.tensor(&info.name)?;
        let dtype = choose(info);
        if dtype == info.dtype {
            writer.add_tensor(info.name.clone(), &info.dims, dtype, view.data)?;
        } else {
            let values = view.to_f32()?;
            let bytes = crate::writer::quantize(dtype, &values).map_err(|e| {
                GgufError::Writer(format!("tensor `{}` as {dtype}: {e}", info.name))
            })?;
            writer.add_tensor(info.name.clone(), &info.dims, dtype, bytes)?;
        }
    }
    Ok(writer)
}

/// llama.cpp's choice of types for `Q4_K_M` (`llama_tensor_get_type`, for a Llama-style model
/// with one expert): Q4_K by default; Q6_K for the output projection (the embedding when the
/// output is tied) and for `attn_v` and `ffn_down` in the layers where `use_more_bits` holds
/// (the first and last eighth and every third in between); vectors stay as they are. A row
/// length that is not a multiple of 256 cannot hold K-quant super-blocks; llama.cpp then
/// falls back, and so does this: the output to Q8_0, Q4_K to Q5_0, Q6_K to Q8_0.
#[derive(Debug, Clone)]
pub struct Q4KM {
    layers: usize,
    tied_output: bool,
}

impl Q4KM {
    /// The plan for `file`, a model of `layers` transformer blocks.
    pub fn new(file: &GgufFile, layers: usize) -> Self {
        Self {
            layers,
            tied_output: file.tensor_info("output.weight").is_none(),
        }
    }

    /// llama.cpp's `use_more_bits`.
    fn more_bits(&self, layer: usize) -> bool {
        let n = self.layers;
        layer < n / 8 || layer >= 7 * n / 8 || (layer - n / 8) % 3 == 2
    }

    /// The type of `info` in the mix.
    pub fn type_of(&self, info: &TensorInfo) -> TensorType {
        if info.dims.len() < 2 {
            return info.dtype;
        }
        let name = info.name.as_str();
        let is_output =
            name == "output.weight" || (self.tied_output && name == "token_embd.weight");
        let layer = name
            .strip_prefix("blk.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        let more_bits = layer.is_some_and(|l| self.more_bits(l));
        let more_bits_role = name.contains("attn_v.weight") || name.contains("ffn_down");
        let wanted = if is_output || (more_bits_role && more_bits) {
            TensorType::Q6_K
        } else {
            TensorType::Q4_K
        };
        if info.dims[0] % QK_K as u64 == 0 {
            return wanted;
        }
        match wanted {
            _ if is_output => TensorType::Q8_0,
            TensorType::Q6_K => TensorType::Q8_0,
            _ => TensorType::Q5_0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, dims: &[u64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dims: dims.to_vec(),
            dtype: TensorType::F32,
            offset: 0,
        }
    }

    #[test]
    fn q4_k_m_follows_llama_cpp_with_fallbacks_for_narrow_rows() {
        let plan = Q4KM {
            layers: 30,
            tied_output: true,
        };
        // use_more_bits for 30 layers: 0-2, 26-29, and 5, 8, ..., 23.
        let more: Vec<usize> = (0..30).filter(|&l| plan.more_bits(l)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        for (name, dims, want) in [
            ("token_embd.weight", [576, 49152], TensorType::Q8_0),
            ("blk.0.attn_v.weight", [576, 192], TensorType::Q8_0),
            ("blk.3.attn_v.weight", [576, 192], TensorType::Q5_0),
            ("blk.3.attn_q.weight", [576, 576], TensorType::Q5_0),
            ("blk.0.ffn_down.weight", [1536, 576], TensorType::Q6_K),
            ("blk.3.ffn_down.weight", [1536, 576], TensorType::Q4_K),
            ("blk.3.attn_output.weight", [1024, 640], TensorType::Q4_K),
            ("output.weight", [1024, 640], TensorType::Q6_K),
        ] {
            assert_eq!(plan.type_of(&info(name, &dims)), want, "{name}");
        }
        assert_eq!(
            plan.type_of(&info("blk.0.attn_norm.weight", &[576])),
            TensorType::F32
        );
    }
}
