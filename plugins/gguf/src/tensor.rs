//! Tensor element types, tensor descriptors and borrowed tensor data.

use std::fmt;

use crate::error::{GgufError, Result};
use crate::quant;

/// GGML tensor element types, by their on-disk id.
///
/// Ids GGML has retired or that this crate does not know are kept as
/// [`TensorType::Other`] so that errors can name them; their sizes are unknown.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    /// 32-bit float.
    F32,
    /// IEEE half-precision float.
    F16,
    /// 32-element blocks: f16 scale, 4-bit quants centred on 8.
    Q4_0,
    /// 32-element blocks: f16 scale and minimum, 4-bit quants.
    Q4_1,
    /// 32-element blocks: f16 scale, 5-bit quants.
    Q5_0,
    /// 32-element blocks: f16 scale and minimum, 5-bit quants.
    Q5_1,
    /// 32-element blocks: f16 scale, 8-bit quants.
    Q8_0,
    /// 32-element blocks: f16 scale and sum, 8-bit quants.
    Q8_1,
    /// 256-element k-quant, 2 bits.
    Q2_K,
    /// 256-element k-quant, 3 bits.
    Q3_K,
    /// 256-element k-quant, 4 bits.
    Q4_K,
    /// 256-element k-quant, 5 bits.
    Q5_K,
    /// 256-element k-quant, 6 bits.
    Q6_K,
    /// 256-element k-quant, 8 bits (intermediate format).
    Q8_K,
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS,
    /// i-quant, 2.31 bits per weight.
    IQ2_XS,
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS,
    /// i-quant, 1.56 bits per weight.
    IQ1_S,
    /// 32-element non-linear 4-bit quant.
    IQ4_NL,
    /// i-quant, 3.44 bits per weight.
    IQ3_S,
    /// i-quant, 2.5 bits per weight.
    IQ2_S,
    /// 256-element non-linear 4-bit quant.
    IQ4_XS,
    /// 8-bit signed integer.
    I8,
    /// 16-bit signed integer.
    I16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 64-bit float.
    F64,
    /// i-quant, 1.75 bits per weight.
    IQ1_M,
    /// bfloat16.
    BF16,
    /// Ternary quant, 1.69 bits per weight.
    TQ1_0,
    /// Ternary quant, 2.06 bits per weight.
    TQ2_0,
    /// Microscaling FP4.
    MXFP4,
    /// An id this crate does not know.
    Other(u32),
}

/// Every known type with its id, block size (elements) and type size (bytes per block).
const KNOWN: &[(TensorType, u32, &str, u64, u64)] = &[
    (TensorType::F32, 0, "F32", 1, 4),
    (TensorType::F16, 1, "F16", 1, 2),
    (TensorType::Q4_0, 2, "Q4_0", 32, 18),
    (TensorType::Q4_1, 3, "Q4_1", 32, 20),
    (TensorType::Q5_0, 6, "Q5_0", 32, 22),
    (TensorType::Q5_1, 7, "Q5_1", 32, 24),
    (TensorType::Q8_0, 8, "Q8_0", 32, 34),
    (TensorType::Q8_1, 9, "Q8_1", 32, 36),
    (TensorType::Q2_K, 10, "Q2_K", 256, 84),
    (TensorType::Q3_K, 11, "Q3_K", 256, 110),
    (TensorType::Q4_K, 12, "Q4_K", 256, 144),
    (TensorType::Q5_K, 13, "Q5_K", 256, 176),
    (TensorType::Q6_K, 14, "Q6_K", 256, 210),
    (TensorType::Q8_K, 15, "Q8_K", 256, 292),
    (TensorType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (TensorType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (TensorType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (TensorType::IQ1_S, 19, "IQ1_S", 256, 50),
    (TensorType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (TensorType::IQ3_S, 21, "IQ3_S", 256, 110),
    (TensorType::IQ2_S, 22, "IQ2_S", 256, 82),
    (TensorType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (TensorType::I8, 24, "I8", 1, 1),
    (TensorType::I16, 25, "I16", 1, 2),
    (TensorType::I32, 26, "I32", 1, 4),
    (TensorType::I64, 27, "I64", 1, 8),
    (TensorType::F64, 28, "F64", 1, 8),
    (TensorType::IQ1_M, 29, "IQ1_M", 256, 56),
    (TensorType::BF16, 30, "BF16", 1, 2),
    (TensorType::TQ1_0, 34, "TQ1_0", 256, 54),
    (TensorType::TQ2_0, 35, "TQ2_0", 256, 66),
    (TensorType::MXFP4, 39, "MXFP4", 32, 17),
];

impl TensorType {
    fn entry(self) -> Option<&'static (TensorType, u32, &'static str, u64, u64)> {
        KNOWN.iter().find(|e| e.0 == self)
    }

    /// Decodes an on-disk type id; unknown ids become [`TensorType::Other`].
    pub fn from_id(id: u32) -> Self {
        KNOWN
            .iter()
            .find(|e| e.1 == id)
            .map_or(Self::Other(id), |e| e.0)
    }

    /// The on-disk type id.
    pub fn id(self) -> u32 {
        match self {
            Self::Other(id) => id,
            known => known.entry().expect("every named variant is in KNOWN").1,
        }
    }

    /// GGML's name for the type, e.g. `"Q4_1"`; `"unknown"` for [`TensorType::Other`].
    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |e| e.2)
    }

    /// The type GGML calls `name` (case-insensitive), e.g. `"q8_0"`.
    pub fn from_name(name: &str) -> Option<Self> {
        KNOWN
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }

    /// Elements per block, or `None` for an unknown type.
    pub fn block_size(self) -> Option<u64> {
        self.entry().map(|e| e.3)
    }

    /// Bytes per block, or `None` for an unknown type.
    pub fn type_size(self) -> Option<u64> {
        self.entry().map(|e| e.4)
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Other(id) => write!(f, "unknown tensor type id {id}"),
            known => f.write_str(known.name()),
        }
    }
}

/// A tensor descriptor from the file's tensor-info table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the innermost, contiguous
    /// dimension (the columns of a weight matrix).
    pub dims: Vec<u64>,
    /// Element type.
    pub dtype: TensorType,
    /// Offset of the data relative to the start of the data section (of the shard holding the
    /// tensor, in a split model).
    pub offset: u64,
}

impl TensorInfo {
    /// Total number of elements, or `None` if the product overflows `u64`.
    pub fn n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Number of rows: the product of every dimension but the first.
    pub fn n_rows(&self) -> Option<u64> {
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Size of the tensor data in bytes.
    ///
    /// Fails if the type is unknown, the row length (`dims[0]`) is not a
    /// multiple of the type's block size, or the size overflows. The error
    /// text does not name the tensor; callers add that.
    pub fn byte_size(&self) -> std::result::Result<u64, String> {
        let (Some(block), Some(type_size)) = (self.dtype.block_size(), self.dtype.type_size())
        else {
            return Err(format!("{} has no known size", self.dtype));
        };
        let cols = self.dims.first().copied().unwrap_or(1);
        if cols % block != 0 {
            return Err(format!(
                "row length {cols} is not a multiple of the {} block size {block}",
                self.dtype
            ));
        }
        self.n_elements()
            .and_then(|n| (n / block).checked_mul(type_size))
            .ok_or_else(|| format!("size of dims {:?} overflows", self.dims))
    }

    /// Bytes per row (`dims[0]` elements), or `None` if [`Self::byte_size`] would fail or the
    /// row size overflows `u64`.
    pub fn row_bytes(&self) -> Option<u64> {
        let (block, type_size) = (self.dtype.block_size()?, self.dtype.type_size()?);
        let cols = self.dims.first().copied().unwrap_or(1);
        // Checked: a tensor with a zero dimension is empty (byte size 0) and so passes every
        // check at open time, whatever its other dimensions, so `cols` can be near `u64::MAX`.
        if cols % block != 0 {
            return None;
        }
        (cols / block).checked_mul(type_size)
    }
}

/// A tensor's descriptor together with its bytes, borrowed from the file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// The descriptor.
    pub info: &'a TensorInfo,
    /// Exactly [`TensorInfo::byte_size`] bytes of raw data, in the file's layout.
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// Dequantizes (or converts) the whole tensor to `f32`.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = self
            .info
            .n_elements()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| GgufError::BadLength {
                dtype: self.info.dtype,
                what: format!("dims {:?} do not fit in memory", self.info.dims),
            })?;
        let mut out = vec![0.0; n];
        quant::dequantize(self.info.dtype, self.data, &mut out)?;
        Ok(out)
    }

    /// The raw bytes of row `index` (a run of `dims[0]` elements), or `None`
    /// if `index` is past the last row.
    pub fn row(&self, index: u64) -> Option<&'a [u8]> {
        let row_bytes = usize::try_from(self.info.row_bytes()?).ok()?;
        let start = usize::try_from(index).ok()?.checked_mul(row_bytes)?;
        self.data.get(start..start.checked_add(row_bytes)?)
    }
}
