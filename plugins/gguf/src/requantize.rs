//! Rewriting a model in other storage types: every tensor dequantized and quantized again
//! (with this crate's quantizers), the metadata copied. A [`Scheme`] is a choice of types by
//! llama.cpp's `llama-quantize` name — one type for every matrix, or [`Q4KM`], llama.cpp's
//! Q4_K_M mix — and [`compress`] writes a file in it; [`fitting_type`] is the fallback for rows
//! a type's blocks do not tile, shared with the plugins that convert weights as they load them.
//!
//! ```no_run
//! use pio_gguf::{requantize, GgufFile};
//!
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let scheme = requantize::Scheme::from_name("q4_k_m").expect("a known scheme");
//! requantize::compress(&file, scheme)?.write_to("SmolLM2.Q4_K_M.gguf")?;
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

/// The metadata key of llama.cpp's `llama_ftype`: what a file's matrices mostly are.
pub const FILE_TYPE_KEY: &str = "general.file_type";

/// The type a matrix with rows of `row_len` values takes when `wanted` is asked for: `wanted`
/// when its blocks tile the row, else llama.cpp's fallback for the K-quants (Q4_K → Q5_0,
/// Q5_K → Q5_1, Q6_K → Q8_0) — a 32-element format of at least as many bits — and F16 for a
/// row no 32-element block tiles.
pub fn fitting_type(wanted: TensorType, row_len: u64) -> TensorType {
    let tiles = |t: TensorType| t.block_size().is_some_and(|b| row_len % b == 0);
    if tiles(wanted) {
        return wanted;
    }
    let fallback = match wanted {
        TensorType::Q4_K => TensorType::Q5_0,
        TensorType::Q5_K => TensorType::Q5_1,
        TensorType::Q6_K => TensorType::Q8_0,
        _ => TensorType::F16,
    };
    if tiles(fallback) {
        fallback
    } else {
        TensorType::F16
    }
}

/// A choice of storage types for a whole model, by llama.cpp's `llama-quantize` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Every matrix in one type (rows it cannot tile take [`fitting_type`]'s fallback);
    /// vectors (norms, biases) keep their type.
    Uniform(TensorType),
    /// llama.cpp's Q4_K_M mix ([`Q4KM`]).
    Q4KM,
}

impl Scheme {
    /// The names [`Scheme::from_name`] accepts, smallest files last.
    pub const NAMES: [&'static str; 11] = [
        "f32", "f16", "q8_0", "q6_k", "q5_1", "q5_k", "q5_0", "q4_1", "q4_k_m", "q4_k", "q4_0",
    ];

    /// The scheme called `name` (case-insensitive), if it is one of [`Scheme::NAMES`].
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        if name == "q4_k_m" {
            return Some(Self::Q4KM);
        }
        Self::NAMES
            .contains(&name.as_str())
            .then(|| TensorType::from_name(&name).map(Self::Uniform))
            .flatten()
    }

    /// The scheme's name, as [`Scheme::from_name`] takes it.
    pub fn name(self) -> String {
        match self {
            Self::Uniform(dtype) => dtype.name().to_ascii_lowercase(),
            Self::Q4KM => "q4_k_m".to_owned(),
        }
    }

    /// llama.cpp's `llama_ftype` for a file in this scheme (a uniform K-quant is labelled as
    /// llama.cpp's `_S` mix of that type, the closest it has).
    pub fn file_type(self) -> u32 {
        match self {
            Self::Q4KM => 15,
            Self::Uniform(dtype) => match dtype {
                TensorType::F32 => 0,
                TensorType::F16 => 1,
                TensorType::Q4_0 => 2,
                TensorType::Q4_1 => 3,
                TensorType::Q8_0 => 7,
                TensorType::Q5_0 => 8,
                TensorType::Q5_1 => 9,
                TensorType::Q4_K => 14,
                TensorType::Q5_K => 16,
                _ => 18,
            },
        }
    }
}

/// A writer holding `file` in `scheme`, its `general.file_type` updated.
pub fn compress(file: &GgufFile, scheme: Scheme) -> Result<GgufWriter> {
    let mut writer = match scheme {
        Scheme::Uniform(wanted) => requantize(file, |info| match info.dims.as_slice() {
            [row_len, _, ..] => fitting_type(wanted, *row_len),
            _ => info.dtype,
        })?,
        Scheme::Q4KM => {
            let arch = file.architecture()?.to_owned();
            let layers = file.get_u32(&format!("{arch}.block_count"))? as usize;
            let plan = Q4KM::new(file, layers);
            requantize(file, |info| plan.type_of(info))?
        }
    };
    writer.add_metadata(FILE_TYPE_KEY, scheme.file_type());
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

    #[test]
    fn fitting_types_fall_back_like_llama_cpp() {
        assert_eq!(fitting_type(TensorType::Q4_K, 512), TensorType::Q4_K);
        assert_eq!(fitting_type(TensorType::Q4_K, 576), TensorType::Q5_0);
        assert_eq!(fitting_type(TensorType::Q5_K, 576), TensorType::Q5_1);
        assert_eq!(fitting_type(TensorType::Q6_K, 576), TensorType::Q8_0);
        assert_eq!(fitting_type(TensorType::Q8_0, 576), TensorType::Q8_0);
        assert_eq!(fitting_type(TensorType::Q8_0, 40), TensorType::F16);
        assert_eq!(fitting_type(TensorType::Q6_K, 40), TensorType::F16);
    }

    #[test]
    fn schemes_by_name() {
        for name in Scheme::NAMES {
            let scheme = Scheme::from_name(name).unwrap();
            assert_eq!(scheme.name(), name);
            assert_eq!(Scheme::from_name(&name.to_uppercase()), Some(scheme));
        }
        assert_eq!(
            Scheme::from_name("q8_0"),
            Some(Scheme::Uniform(TensorType::Q8_0))
        );
        assert_eq!(Scheme::from_name("q4_k_m").unwrap().file_type(), 15);
        // A type the kernels cannot read, and no type at all.
        assert_eq!(Scheme::from_name("q2_k"), None);
        assert_eq!(Scheme::from_name("bf16"), None);
        assert_eq!(Scheme::from_name("small"), None);
    }

    /// A model of one 64-wide matrix, one 40-wide matrix and a norm vector, in Q8_0.
    fn small_file() -> GgufFile {
        let mut writer = GgufWriter::new();
        writer.add_metadata("general.architecture", "llama");
        writer.add_metadata("llama.block_count", 1u32);
        let wave = |n: usize| (0..n).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>();
        writer
            .add_f32_tensor("blk.0.attn_q.weight", &[64, 2], TensorType::F32, &wave(128))
            .unwrap();
        writer
            .add_f32_tensor("blk.0.ffn_up.weight", &[40, 2], TensorType::F32, &wave(80))
            .unwrap();
        writer
            .add_f32_tensor("blk.0.attn_norm.weight", &[64], TensorType::F32, &wave(64))
            .unwrap();
        GgufFile::from_bytes(writer.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn compress_converts_matrices_keeps_vectors_and_labels_the_file() {
        let file = small_file();
        let out = compress(&file, Scheme::Uniform(TensorType::Q8_0)).unwrap();
        let out = GgufFile::from_bytes(out.to_bytes().unwrap()).unwrap();
        let dtype = |name: &str| out.tensor_info(name).unwrap().dtype;
        assert_eq!(dtype("blk.0.attn_q.weight"), TensorType::Q8_0);
        assert_eq!(dtype("blk.0.ffn_up.weight"), TensorType::F16);
        assert_eq!(dtype("blk.0.attn_norm.weight"), TensorType::F32);
        assert_eq!(out.get_u32(FILE_TYPE_KEY).unwrap(), 7);
        // The converted values are the originals within Q8_0's half step (max |v| / 254).
        let before = file
            .tensor("blk.0.attn_q.weight")
            .unwrap()
            .to_f32()
            .unwrap();
        let after = out.tensor("blk.0.attn_q.weight").unwrap().to_f32().unwrap();
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() <= 1.0 / 254.0 + 1e-3, "{a} vs {b}");
        }
    }
}
