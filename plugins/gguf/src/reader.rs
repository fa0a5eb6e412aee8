//! Parsing a GGUF file: header, metadata, tensor infos and data placement.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{GgufError, Result};
use crate::tensor::{TensorInfo, TensorType, TensorView};
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

/// Where the file's bytes live.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in (memory-mapped) place.
pub struct GgufFile {
    path: PathBuf,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

macro_rules! typed_getters {
    ($($get:ident, $opt:ident -> $ty:ty, $conv:expr, $expected:literal;)*) => {$(
        #[doc = concat!("The value of `key` as ", $expected, "; errors name the key if it is absent or has another type.")]
        pub fn $get(&self, key: &str) -> Result<$ty> {
            self.$opt(key)?.ok_or_else(|| GgufError::MissingKey {
                path: self.path.clone(),
                key: key.to_owned(),
            })
        }

        #[doc = concat!("Like [`Self::", stringify!($get), "`], but `Ok(None)` when the key is absent.")]
        pub fn $opt(&self, key: &str) -> Result<Option<$ty>> {
            self.get(key)
                .map(|value| {
                    $conv(value).ok_or_else(|| GgufError::MetadataType {
                        path: self.path.clone(),
                        key: key.to_owned(),
                        expected: $expected,
                        found: value.describe(),
                    })
                })
                .transpose()
        }
    )*};
}

impl GgufFile {
    /// Memory-maps and parses the GGUF file at `path`.
    ///
    /// Every count, offset and size in the file is checked against the file
    /// length; a truncated or corrupt file gives an error naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        // Mapping an empty file fails on some platforms; it is malformed anyway.
        let storage = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. Model files are treated as
            // immutable while loaded; truncating one underneath a running
            // process is outside this crate's contract (as for every mmap user).
            Storage::Mapped(unsafe { Mmap::map(&file) }.map_err(io_err)?)
        };
        Self::parse(path.to_owned(), storage)
    }

    /// Parses GGUF data already in memory; errors name the file `<memory>`.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(PathBuf::from("<memory>"), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, storage: Storage) -> Result<Self> {
        let parsed = match Parser::new(storage.bytes()).parse() {
            Ok(parsed) => parsed,
            Err(Failure::Version(version)) => {
                return Err(GgufError::UnsupportedVersion { path, version })
            }
            Err(Failure::Malformed(ParseError { offset, what })) => {
                return Err(GgufError::Malformed {
                    path,
                    offset: offset as u64,
                    what,
                })
            }
        };
        let file = Self {
            path,
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata: parsed.metadata,
            tensor_index: parsed
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: parsed.tensors,
        };
        // Validate every tensor whose size is known now, so corruption is
        // reported at open time rather than on first use.
        for info in &file.tensors {
            if info.dtype.block_size().is_some() {
                file.view(info)?;
            }
        }
        Ok(file)
    }

    /// The path the file was opened from (`<memory>` for [`Self::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data, from `general.alignment` or the default 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, sorted by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// One metadata value, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    typed_getters! {
        get_u32, opt_u32 -> u32, MetadataValue::as_u32, "an integer that fits in u32";
        get_u64, opt_u64 -> u64, MetadataValue::as_u64, "an integer that fits in u64";
        get_i32, opt_i32 -> i32, MetadataValue::as_i32, "an integer that fits in i32";
        get_f32, opt_f32 -> f32, MetadataValue::as_f32, "a float";
        get_bool, opt_bool -> bool, MetadataValue::as_bool, "a bool";
        get_str, opt_str -> &str, MetadataValue::as_str, "a string";
        get_string_array, opt_string_array -> Vec<&str>, MetadataValue::as_string_array, "an array of strings";
        get_f32_array, opt_f32_array -> Vec<f32>, MetadataValue::as_f32_array, "an array of floats";
        get_i32_array, opt_i32_array -> Vec<i32>, MetadataValue::as_i32_array, "an array of integers that fit in i32";
        get_u32_array, opt_u32_array -> Vec<u32>, MetadataValue::as_u32_array, "an array of integers that fit in u32";
    }

    /// The model architecture (`general.architecture`), e.g. `llama`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor descriptors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor descriptor, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's descriptor and validated bytes.
    ///
    /// Fails if the tensor is absent, its type is unknown, its row length is
    /// not a multiple of the block size, or its data is misaligned or does
    /// not fit inside the file.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        self.view(info)
    }

    fn view<'a>(&'a self, info: &'a TensorInfo) -> Result<TensorView<'a>> {
        let invalid = |what: String| GgufError::InvalidTensor {
            path: self.path.clone(),
            name: info.name.clone(),
            what,
        };
        if let TensorType::Other(_) = info.dtype {
            return Err(invalid(format!("{} is not supported", info.dtype)));
        }
        let size = info.byte_size().map_err(invalid)?;
        if info.offset % self.alignment != 0 {
            return Err(invalid(format!(
                "data offset {} is not a multiple of the alignment {}",
                info.offset, self.alignment
            )));
        }
        let bytes = self.storage.bytes();
        let range = self
            .data_offset
            .checked_add(info.offset)
            .and_then(|start| Some(start..start.checked_add(size)?))
            .filter(|range| range.end <= bytes.len() as u64)
            .ok_or_else(|| {
                invalid(format!(
                    "data ({size} bytes at data offset {}) extends past the end of the {}-byte file",
                    info.offset,
                    bytes.len()
                ))
            })?;
        Ok(TensorView {
            info,
            data: &bytes[range.start as usize..range.end as usize],
        })
    }
}

/// A parse failure before it is tied to a file name.
struct ParseError {
    offset: usize,
    what: String,
}

enum Failure {
    Version(u32),
    Malformed(ParseError),
}

impl From<ParseError> for Failure {
    fn from(e: ParseError) -> Self {
        Self::Malformed(e)
    }
}

type ParseResult<T> = std::result::Result<T, ParseError>;

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
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

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key_start = self.pos;
            let key = self.string(&format_args!("metadata key #{i}"))?;
            let what = format!("metadata `{key}`");
            let ty = self.value_type(&what)?;
            let value = self.value(ty, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(ParseError {
                    offset: key_start,
                    what: format!("duplicate metadata key `{key}`"),
                }
                .into());
            }
        }

        let alignment = match metadata.get(ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some(value) => value
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
        let mut names = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let info_start = self.pos;
            let tensor = self.tensor_info(i)?;
            if names.insert(tensor.name.clone(), i).is_some() {
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
