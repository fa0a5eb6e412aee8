//! Metadata values and their on-disk type tags.

use std::fmt;

/// The type tag GGUF stores in front of every metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ValueType {
    /// Unsigned 8-bit integer.
    U8 = 0,
    /// Signed 8-bit integer.
    I8 = 1,
    /// Unsigned 16-bit integer.
    U16 = 2,
    /// Signed 16-bit integer.
    I16 = 3,
    /// Unsigned 32-bit integer.
    U32 = 4,
    /// Signed 32-bit integer.
    I32 = 5,
    /// 32-bit IEEE float.
    F32 = 6,
    /// Boolean stored as one byte (0 or 1).
    Bool = 7,
    /// Length-prefixed UTF-8 string.
    String = 8,
    /// Typed array: element type, count, then the elements.
    Array = 9,
    /// Unsigned 64-bit integer.
    U64 = 10,
    /// Signed 64-bit integer.
    I64 = 11,
    /// 64-bit IEEE float.
    F64 = 12,
}

impl ValueType {
    /// Decodes an on-disk type tag; `None` for ids GGUF does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::U8,
            1 => Self::I8,
            2 => Self::U16,
            3 => Self::I16,
            4 => Self::U32,
            5 => Self::I32,
            6 => Self::F32,
            7 => Self::Bool,
            8 => Self::String,
            9 => Self::Array,
            10 => Self::U64,
            11 => Self::I64,
            12 => Self::F64,
            _ => return None,
        })
    }

    /// The on-disk type tag.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Lower-case name of the type, as used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I8 => "i8",
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::F32 => "f32",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Array => "array",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value, as stored in a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// Unsigned 8-bit integer.
    U8(u8),
    /// Signed 8-bit integer.
    I8(i8),
    /// Unsigned 16-bit integer.
    U16(u16),
    /// Signed 16-bit integer.
    I16(i16),
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Signed 32-bit integer.
    I32(i32),
    /// 32-bit float.
    F32(f32),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Homogeneous array. Every item has type `element_type`; items of an
    /// array of arrays may each have their own inner element type.
    Array {
        /// Type of every item (kept so empty arrays round-trip exactly).
        element_type: ValueType,
        /// The items.
        items: Vec<MetadataValue>,
    },
    /// Unsigned 64-bit integer.
    U64(u64),
    /// Signed 64-bit integer.
    I64(i64),
    /// 64-bit float.
    F64(f64),
}

impl MetadataValue {
    /// The on-disk type tag of this value.
    pub fn value_type(&self) -> ValueType {
        match self {
            Self::U8(_) => ValueType::U8,
            Self::I8(_) => ValueType::I8,
            Self::U16(_) => ValueType::U16,
            Self::I16(_) => ValueType::I16,
            Self::U32(_) => ValueType::U32,
            Self::I32(_) => ValueType::I32,
            Self::F32(_) => ValueType::F32,
            Self::Bool(_) => ValueType::Bool,
            Self::String(_) => ValueType::String,
            Self::Array { .. } => ValueType::Array,
            Self::U64(_) => ValueType::U64,
            Self::I64(_) => ValueType::I64,
            Self::F64(_) => ValueType::F64,
        }
    }

    /// Builds an array value from items that all have type `element_type`.
    pub fn array(element_type: ValueType, items: Vec<MetadataValue>) -> Self {
        Self::Array {
            element_type,
            items,
        }
    }

    /// Any integer value, widened to `i128` so every GGUF integer fits.
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Any integer value that fits in `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_integer().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer value that fits in `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_integer().and_then(|v| u64::try_from(v).ok())
    }

    /// Any integer value that fits in `i32`.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_integer().and_then(|v| i32::try_from(v).ok())
    }

    /// A float value (`f64` values are narrowed to `f32`).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A float value (`f32` values are widened exactly).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A boolean value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The items of an array value.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            Self::Array { items, .. } => Some(items),
            _ => None,
        }
    }

    /// An array of strings, borrowed.
    pub fn as_string_array(&self) -> Option<Vec<&str>> {
        self.as_array()?.iter().map(Self::as_str).collect()
    }

    /// An array of floats.
    pub fn as_f32_array(&self) -> Option<Vec<f32>> {
        self.as_array()?.iter().map(Self::as_f32).collect()
    }

    /// An array of integers that all fit in `i32`.
    pub fn as_i32_array(&self) -> Option<Vec<i32>> {
        self.as_array()?.iter().map(Self::as_i32).collect()
    }

    /// An array of integers that all fit in `u32`.
    pub fn as_u32_array(&self) -> Option<Vec<u32>> {
        self.as_array()?.iter().map(Self::as_u32).collect()
    }

    /// A short description for error messages: the type, plus the value for
    /// scalars and the length for strings and arrays.
    pub fn describe(&self) -> String {
        match self {
            Self::String(s) => format!("string of {} bytes", s.len()),
            Self::Array {
                element_type,
                items,
            } => format!("array of {} {element_type}", items.len()),
            Self::F32(v) => format!("f32 {v}"),
            Self::F64(v) => format!("f64 {v}"),
            Self::Bool(v) => format!("bool {v}"),
            other => format!(
                "{} {}",
                other.value_type(),
                other.as_integer().expect("remaining variants are integers")
            ),
        }
    }
}

macro_rules! impl_from_scalar {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for MetadataValue {
            fn from(v: $ty) -> Self {
                Self::$variant(v)
            }
        }

        impl From<Vec<$ty>> for MetadataValue {
            fn from(items: Vec<$ty>) -> Self {
                Self::Array {
                    element_type: ValueType::$variant,
                    items: items.into_iter().map(Self::$variant).collect(),
                }
            }
        }
    )*};
}

impl_from_scalar!(
    u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32,
    f32 => F32, bool => Bool, u64 => U64, i64 => I64, f64 => F64, String => String,
);

impl From<&str> for MetadataValue {
    fn from(s: &str) -> Self {
        Self::String(s.to_owned())
    }
}

impl From<Vec<&str>> for MetadataValue {
    fn from(items: Vec<&str>) -> Self {
        items
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into()
    }
}

impl From<&[&str]> for MetadataValue {
    fn from(items: &[&str]) -> Self {
        items.to_vec().into()
    }
}
