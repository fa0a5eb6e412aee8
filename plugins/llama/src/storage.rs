//! How a model's tensors are stored on the device ([`Storage`]): the type of each weight
//! matrix — as the file stores it, or converted as it loads (the `weights` setting), which is
//! how an F32 or F16 model runs compressed without a rewritten file and how a quantized one is
//! made smaller still or less lossy — and the type of the KV cache (the `kv_type` setting).
//!
//! Matrices computed by one kernel (a layer's q, k and v projections; its gate and up
//! projections) share one type: a group the file stores in several types is uploaded as f32 —
//! exact, every type dequantizes to f32 — unless a conversion is asked for.

use std::borrow::Cow;

use pio_gguf::{requantize::fitting_type, TensorView};
use pio_gpu::{KvType, MatrixShape, WeightDtype};

use crate::error::{Error, Result};

/// How a model's weight matrices and KV cache are stored on the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Storage {
    /// The weight matrices.
    pub weights: WeightStorage,
    /// The KV cache (the model's own and the batched sequences' pool).
    pub kv: KvType,
}

/// How weight matrices are stored on the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// Each matrix in the type the file stores it in.
    #[default]
    AsStored,
    /// Every matrix converted to this type at load; a matrix whose rows its blocks do not tile
    /// takes llama.cpp's fallback ([`fitting_type`]).
    Convert(WeightDtype),
}

impl WeightStorage {
    /// The setting's name for [`WeightStorage::AsStored`].
    pub const AS_STORED: &'static str = "as-stored";

    /// The storage a `weights` setting names: [`WeightStorage::AS_STORED`] or a type the
    /// kernels read (`f32`, `f16`, `q8_0`, `q6_k`, `q5_1`, `q5_k`, `q5_0`, `q4_1`, `q4_k`,
    /// `q4_0`).
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        if name == Self::AS_STORED {
            return Ok(Self::AsStored);
        }
        WeightDtype::from_name(name)
            .map(Self::Convert)
            .ok_or_else(|| {
                let names: Vec<_> = WeightDtype::ALL.iter().map(|d| d.name()).collect();
                format!(
                    "`{name}` is not `{}` or one of {}",
                    Self::AS_STORED,
                    names.join(", ")
                )
            })
    }

    /// The setting's name of this storage.
    pub fn name(self) -> &'static str {
        match self {
            Self::AsStored => Self::AS_STORED,
            Self::Convert(dtype) => dtype.name(),
        }
    }

    /// The device type of a group of matrices computed by one kernel (rows of `cols` values;
    /// a single matrix is a group of one).
    pub fn group_dtype(self, tensors: &[&TensorView]) -> Result<WeightDtype> {
        let stored = tensors
            .iter()
            .map(|t| stored_dtype(t))
            .collect::<Result<Vec<_>>>()?;
        let cols = tensors[0].info.dims[0];
        Ok(match self {
            Self::AsStored if stored.iter().all(|&d| d == stored[0]) => stored[0],
            Self::AsStored => WeightDtype::F32,
            Self::Convert(wanted) => {
                WeightDtype::from_gguf_type(fitting_type(wanted.gguf_type(), cols))
                    .expect("fitting_type falls back to types the kernels read")
            }
        })
    }

    /// The bytes of each of `tensors` (a group, see [`WeightStorage::group_dtype`]) in the
    /// group's device type: borrowed from the file where it already stores them so.
    pub fn group_bytes<'a>(
        self,
        tensors: &[&TensorView<'a>],
    ) -> Result<(WeightDtype, Vec<Cow<'a, [u8]>>)> {
        let dtype = self.group_dtype(tensors)?;
        let bytes = tensors
            .iter()
            .map(|t| convert(t, dtype))
            .collect::<Result<_>>()?;
        Ok((dtype, bytes))
    }

    /// Device bytes of a group once repacked (`pio_gpu::QuantMatrix`: rows padded to
    /// [`pio_gpu::ROW_GROUP`]).
    pub fn group_device_bytes(self, tensors: &[&TensorView]) -> Result<u64> {
        let shape = MatrixShape {
            dtype: self.group_dtype(tensors)?,
            rows: tensors.iter().map(|t| rows_of(t)).sum(),
            cols: tensors[0].info.dims[0] as usize,
        };
        Ok(shape.device_bytes())
    }
}

/// The kernels' name for the type the file stores `t` in.
pub fn stored_dtype(t: &TensorView) -> Result<WeightDtype> {
    WeightDtype::from_gguf_type(t.info.dtype).ok_or_else(|| Error::UnsupportedTensorType {
        name: t.info.name.clone(),
        dtype: t.info.dtype.to_string(),
    })
}

fn rows_of(t: &TensorView) -> usize {
    t.info.dims[1..].iter().product::<u64>() as usize
}

/// `t`'s bytes in `dtype`: the file's own, or dequantized and quantized again.
fn convert<'a>(t: &TensorView<'a>, dtype: WeightDtype) -> Result<Cow<'a, [u8]>> {
    if stored_dtype(t)? == dtype {
        return Ok(Cow::Borrowed(t.data));
    }
    let values = t.to_f32()?;
    let bytes = pio_gpu::quantize(dtype, &values).map_err(|e| {
        Error::InvalidModel(format!(
            "tensor `{}` cannot be stored as {}: {e}",
            t.info.name,
            dtype.name()
        ))
    })?;
    Ok(Cow::Owned(bytes))
}

#[cfg(test)]
mod tests {
    use pio_gguf::{GgufFile, GgufWriter, TensorType};

    use super::*;

    fn file() -> GgufFile {
        let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        let mut w = GgufWriter::new();
        for (name, cols, dtype, f) in [
            ("q", 256, TensorType::Q4_1, 0.3),
            ("k", 256, TensorType::Q4_1, 0.7),
            ("v", 256, TensorType::Q8_0, 1.1),
            ("narrow", 64, TensorType::F16, 0.5),
        ] {
            w.add_f32_tensor(name, &[cols, 4], dtype, &wave(4 * cols as usize, f))
                .unwrap();
        }
        GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for name in ["as-stored", "f16", "q8_0", "q4_k"] {
            assert_eq!(WeightStorage::from_name(name).unwrap().name(), name);
        }
        let error = WeightStorage::from_name("q3_k").unwrap_err();
        assert!(error.contains("q3_k"), "{error}");
        assert!(
            error.contains("q8_0") && error.contains("as-stored"),
            "{error}"
        );
    }

    #[test]
    fn groups_share_one_type() {
        let file = file();
        let t = |name| file.tensor(name).unwrap();
        let (q, k, v, narrow) = (t("q"), t("k"), t("v"), t("narrow"));
        let stored = WeightStorage::AsStored;
        assert_eq!(stored.group_dtype(&[&q, &k]).unwrap(), WeightDtype::Q4_1);
        // Mixed types: f32, exact.
        assert_eq!(stored.group_dtype(&[&q, &k, &v]).unwrap(), WeightDtype::F32);
        let (_, bytes) = stored.group_bytes(&[&q, &v]).unwrap();
        assert!(matches!(bytes[0], Cow::Owned(_)));
        let exact: Vec<f32> = bytemuck_f32(&bytes[1]);
        assert_eq!(exact, v.to_f32().unwrap());

        let q8 = WeightStorage::Convert(WeightDtype::Q8_0);
        let (dtype, bytes) = q8.group_bytes(&[&q, &k, &v]).unwrap();
        assert_eq!(dtype, WeightDtype::Q8_0);
        assert!(matches!(bytes[2], Cow::Borrowed(_)), "v is already q8_0");
        assert_eq!(bytes[0].len(), 4 * WeightDtype::Q8_0.gguf_row_bytes(256));
        // A K-quant cannot tile 64-wide rows: llama.cpp's fallback.
        let q6k = WeightStorage::Convert(WeightDtype::Q6_K);
        assert_eq!(q6k.group_dtype(&[&narrow]).unwrap(), WeightDtype::Q8_0);
        assert_eq!(q6k.group_dtype(&[&q]).unwrap(), WeightDtype::Q6_K);
        // 4 + 4 rows, padded to one row group of 8: 8 rows x 8 blocks x 9 words.
        assert_eq!(q8.group_device_bytes(&[&q, &k]).unwrap(), 8 * 8 * 9 * 4);
    }

    fn bytemuck_f32(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}
