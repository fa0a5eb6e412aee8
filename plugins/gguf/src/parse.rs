//! Parsing one GGUF file's bytes: header, metadata (in file order), tensor infos and where the
//! data section starts. Knows nothing of paths or of split models.

use std::collections::HashSet;
use std::fmt::Display;

use crate::tensor::{TensorInfo, TensorType};
use crate::value::{MetadataValue, ValueType};

/// The four magic bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Metadata key holding the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Alignment used when the file does not set [`ALIGNMENT_KEY`].
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Largest number of dimensions a GGML tensor has.
pub const MAX_DIMS: u32 = 4;

/// Deepest nesting of arrays accepted, so a crafted file cannot exhaust the stack.
const MAX_ARRAY_DEPTH: u32 = 8;

/// A parse failure before it is tied to a file name.
pub struct ParseError {
    /// Byte offset where the problem was detected.
    pub offset: usize,
    /// Human-readable description of the problem.
    pub what: String,
}

/// Why a file could not be parsed.
pub enum Failure {
    /// A GGUF version this crate does not read.
    Version(u32),
    /// Anything else: bad magic, truncation, an impossible count or value.
    Malformed(ParseError),
}

impl From<ParseError> for Failure {
    fn from(e: ParseError) -> Self {
        Self::Malformed(e)
    }
}

type ParseResult<T> = std::result::Result<T, ParseError>;

/// One file's header, as read.
pub struct Parsed {
    /// GGUF format version (2 or 3).
    pub version: u32,
    /// Alignment of tensor data.
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Every key-value pair, in file order (keys are unique).
    pub metadata: Vec<(String, MetadataValue)>,
    /// Tensor descriptors, in file order (names are unique).
    pub tensors: Vec<TensorInfo>,
}

/// Parses the header of the GGUF file whose bytes are `bytes`.
pub fn parse(bytes: &[u8]) -> std::result::Result<Parsed, Failure> {
    Parser::new(bytes).parse()
}

/// A bounds-checked little-endian cursor over the file bytes.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn error(&self, what: impl Into<String>) -> ParseError {
        ParseError {
            offset: self.pos,
            what: what.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Display) -> ParseResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.error(format!(
                "file truncated reading {what}: need {n} bytes, {} left",
                self.remaining()
            )));
        }
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &dyn Display) -> ParseResult<[u8; N]> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &dyn Display) -> ParseResult<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Display) -> ParseResult<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads an element count and checks that `count` items of at least
    /// `min_item_size` bytes each fit in the rest of the file.
    fn count(&mut self, min_item_size: usize, what: &dyn Display) -> ParseResult<usize> {
        let start = self.pos;
        let count = self.u64(what)?;
        let fits = usize::try_from(count).ok().filter(|&c| {
            c.checked_mul(min_item_size)
                .is_some_and(|n| n <= self.remaining())
        });
        fits.ok_or_else(|| ParseError {
            offset: start,
            what: format!(
                "{what}: count {count} cannot fit in the {} bytes left in the file",
                self.remaining()
            ),
        })
    }

    fn string(&mut self, what: &dyn Display) -> ParseResult<String> {
        let start = self.pos;
        let len = self.count(1, &format_args!("length of {what}"))?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ParseError {
            offset: start,
            what: format!("{what} is not valid UTF-8: {e}"),
        })
    }

    fn value_type(&mut self, what: &dyn Display) -> ParseResult<ValueType> {
        let start = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| ParseError {
            offset: start,
            what: format!("{what}: unknown metadata value type {id}"),
        })
    }

    fn parse(mut self) -> std::result::Result<Parsed, Failure> {
        let magic: [u8; 4] = self.array(&"magic")?;
        if magic != GGUF_MAGIC {
            return Err(ParseError {
                offset: 0,
                what: format!("bad magic {magic:02x?}, expected \"GGUF\" (not a GGUF file)"),
            }
            .into());
        }
        let version = self.u32(&"version")?;
        if !(2..=3).contains(&version) {
            return Err(Failure::Version(version));
        }
        // Minimum on-disk sizes: a tensor info is an empty name (8), one
        // dimension (4 + 8), a type (4) and an offset (8); a key-value pair
        // is an empty key (8), a type (4) and at least one byte of value.
        let n_tensors = self.count(32, &"tensor count")?;
        let n_kv = self.count(13, &"metadata count")?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut keys = HashSet::with_capacity(n_kv);
        for i in 0..n_kv {
            let key_start = self.pos;
            let key = self.string(&format_args!("metadata key #{i}"))?;
            let what = format!("metadata `{key}`");
            let ty = self.value_type(&what)?;
            let value = self.value(ty, 0, &what)?;
            if !keys.insert(key.clone()) {
                return Err(ParseError {
                    offset: key_start,
                    what: format!("duplicate metadata key `{key}`"),
                }
                .into());
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(key, _)| key == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, value)) => value
                .as_u32()
                .map(u64::from)
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| {
                    self.error(format!(
                        "`{ALIGNMENT_KEY}` must be a power of two, found {}",
                        value.describe()
                    ))
                })?,
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = HashSet::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let info_start = self.pos;
            let tensor = self.tensor_info(i)?;
            if !names.insert(tensor.name.clone()) {
                return Err(ParseError {
                    offset: info_start,
                    what: format!("duplicate tensor name `{}`", tensor.name),
                }
                .into());
            }
            tensors.push(tensor);
        }

        let data_offset = (self.pos as u64).next_multiple_of(alignment);
        Ok(Parsed {
            version,
            alignment,
            data_offset,
            metadata,
            tensors,
        })
    }

    fn value(
        &mut self,
        ty: ValueType,
        depth: u32,
        what: &dyn Display,
    ) -> ParseResult<MetadataValue> {
        Ok(match ty {
            ValueType::U8 => MetadataValue::U8(u8::from_le_bytes(self.array(what)?)),
            ValueType::I8 => MetadataValue::I8(i8::from_le_bytes(self.array(what)?)),
            ValueType::U16 => MetadataValue::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => MetadataValue::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => MetadataValue::U32(u32::from_le_bytes(self.array(what)?)),
            ValueType::I32 => MetadataValue::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => MetadataValue::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => MetadataValue::U64(u64::from_le_bytes(self.array(what)?)),
            ValueType::I64 => MetadataValue::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => MetadataValue::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let start = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => MetadataValue::Bool(false),
                    1 => MetadataValue::Bool(true),
                    b => {
                        return Err(ParseError {
                            offset: start,
                            what: format!("{what}: invalid bool byte {b}"),
                        })
                    }
                }
            }
            ValueType::String => MetadataValue::String(self.string(what)?),
            ValueType::Array => {
                let element_type = self.value_type(&format_args!("element type of {what}"))?;
                if element_type == ValueType::Array && depth + 1 >= MAX_ARRAY_DEPTH {
                    return Err(self.error(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    )));
                }
                let count = self.count(
                    min_value_size(element_type),
                    &format_args!("element count of {what}"),
                )?;
                let items = (0..count)
                    .map(|i| self.value(element_type, depth + 1, &format_args!("{what}[{i}]")))
                    .collect::<ParseResult<_>>()?;
                MetadataValue::Array {
                    element_type,
                    items,
                }
            }
        })
    }

    fn tensor_info(&mut self, index: usize) -> ParseResult<TensorInfo> {
        let name = self.string(&format_args!("name of tensor #{index}"))?;
        let what = format!("tensor `{name}`");
        let dims_start = self.pos;
        let n_dims = self.u32(&what)?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(ParseError {
                offset: dims_start,
                what: format!("{what}: {n_dims} dimensions (expected 1 to {MAX_DIMS})"),
            });
        }
        let dims = (0..n_dims)
            .map(|_| self.u64(&what))
            .collect::<ParseResult<Vec<_>>>()?;
        let dtype = TensorType::from_id(self.u32(&what)?);
        let offset = self.u64(&what)?;
        let info = TensorInfo {
            name,
            dims,
            dtype,
            offset,
        };
        if info.n_elements().is_none() {
            return Err(self.error(format!(
                "tensor `{}`: element count of dims {:?} overflows",
                info.name, info.dims
            )));
        }
        Ok(info)
    }
}

/// Fewest bytes one value of type `ty` occupies on disk.
fn min_value_size(ty: ValueType) -> usize {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        ValueType::Array => 12,
    }
}
