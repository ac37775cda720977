//! Metadata values: the thirteen GGUF value types, scalars and (possibly nested) typed arrays.
//!
//! Arrays keep their element type (`Vec<u8>`, `Vec<String>`, ...) instead of a `Vec` of a generic
//! value enum, so an array of N one-byte elements costs N bytes of memory, not N enum slots.

use std::fmt;

/// The type tag GGUF stores before every metadata value (and before every array's elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// 0: unsigned 8-bit integer.
    U8,
    /// 1: signed 8-bit integer.
    I8,
    /// 2: unsigned 16-bit integer.
    U16,
    /// 3: signed 16-bit integer.
    I16,
    /// 4: unsigned 32-bit integer.
    U32,
    /// 5: signed 32-bit integer.
    I32,
    /// 6: 32-bit float.
    F32,
    /// 7: boolean stored as one byte (0 or 1).
    Bool,
    /// 8: UTF-8 string with a u64 byte length.
    String,
    /// 9: array: element type, u64 count, elements.
    Array,
    /// 10: unsigned 64-bit integer.
    U64,
    /// 11: signed 64-bit integer.
    I64,
    /// 12: 64-bit float.
    F64,
}

impl ValueType {
    /// The type with GGUF tag `id`, if there is one.
    pub fn from_id(id: u32) -> Option<Self> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The GGUF tag of this type.
    pub const fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// The fewest bytes one value of this type occupies in a file (a string is at least its
    /// 8-byte length, an array at least its 4-byte type and 8-byte count). Used to reject counts
    /// that cannot possibly fit in the bytes left before allocating anything.
    pub const fn min_encoded_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }

    /// A lower-case name for messages (`"u32"`, `"string"`, ...).
    pub const fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// An unsigned 8-bit integer.
    U8(u8),
    /// A signed 8-bit integer.
    I8(i8),
    /// An unsigned 16-bit integer.
    U16(u16),
    /// A signed 16-bit integer.
    I16(i16),
    /// An unsigned 32-bit integer.
    U32(u32),
    /// A signed 32-bit integer.
    I32(i32),
    /// A 32-bit float.
    F32(f32),
    /// A boolean.
    Bool(bool),
    /// A string.
    String(String),
    /// An array of values of one type.
    Array(MetadataArray),
    /// An unsigned 64-bit integer.
    U64(u64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A 64-bit float.
    F64(f64),
}

/// An array value: every element has the same type, kept in a typed vector.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataArray {
    /// Elements of type u8.
    U8(Vec<u8>),
    /// Elements of type i8.
    I8(Vec<i8>),
    /// Elements of type u16.
    U16(Vec<u16>),
    /// Elements of type i16.
    I16(Vec<i16>),
    /// Elements of type u32.
    U32(Vec<u32>),
    /// Elements of type i32.
    I32(Vec<i32>),
    /// Elements of type f32.
    F32(Vec<f32>),
    /// Elements of type bool.
    Bool(Vec<bool>),
    /// Elements of type string.
    String(Vec<String>),
    /// Elements that are themselves arrays (each may have its own element type).
    Array(Vec<MetadataArray>),
    /// Elements of type u64.
    U64(Vec<u64>),
    /// Elements of type i64.
    I64(Vec<i64>),
    /// Elements of type f64.
    F64(Vec<f64>),
}

impl MetadataValue {
    /// The GGUF type of the value.
    pub fn value_type(&self) -> ValueType {
        match self {
            MetadataValue::U8(_) => ValueType::U8,
            MetadataValue::I8(_) => ValueType::I8,
            MetadataValue::U16(_) => ValueType::U16,
            MetadataValue::I16(_) => ValueType::I16,
            MetadataValue::U32(_) => ValueType::U32,
            MetadataValue::I32(_) => ValueType::I32,
            MetadataValue::F32(_) => ValueType::F32,
            MetadataValue::Bool(_) => ValueType::Bool,
            MetadataValue::String(_) => ValueType::String,
            MetadataValue::Array(_) => ValueType::Array,
            MetadataValue::U64(_) => ValueType::U64,
            MetadataValue::I64(_) => ValueType::I64,
            MetadataValue::F64(_) => ValueType::F64,
        }
    }

    /// A description of the type for messages: `"u32"`, or `"array of string"`.
    pub fn type_description(&self) -> String {
        match self {
            MetadataValue::Array(a) => format!("array of {}", a.element_type()),
            other => other.value_type().name().to_string(),
        }
    }

    /// The value as an integer, if it is one of the integer types.
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetadataValue::U8(v) => v.into(),
            MetadataValue::I8(v) => v.into(),
            MetadataValue::U16(v) => v.into(),
            MetadataValue::I16(v) => v.into(),
            MetadataValue::U32(v) => v.into(),
            MetadataValue::I32(v) => v.into(),
            MetadataValue::U64(v) => v.into(),
            MetadataValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as a float, if it is a float or an integer type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetadataValue::F32(v) => Some(v.into()),
            MetadataValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&MetadataArray> {
        match self {
            MetadataValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl MetadataArray {
    /// The type of the elements.
    pub fn element_type(&self) -> ValueType {
        match self {
            MetadataArray::U8(_) => ValueType::U8,
            MetadataArray::I8(_) => ValueType::I8,
            MetadataArray::U16(_) => ValueType::U16,
            MetadataArray::I16(_) => ValueType::I16,
            MetadataArray::U32(_) => ValueType::U32,
            MetadataArray::I32(_) => ValueType::I32,
            MetadataArray::F32(_) => ValueType::F32,
            MetadataArray::Bool(_) => ValueType::Bool,
            MetadataArray::String(_) => ValueType::String,
            MetadataArray::Array(_) => ValueType::Array,
            MetadataArray::U64(_) => ValueType::U64,
            MetadataArray::I64(_) => ValueType::I64,
            MetadataArray::F64(_) => ValueType::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetadataArray::U8(v) => v.len(),
            MetadataArray::I8(v) => v.len(),
            MetadataArray::U16(v) => v.len(),
            MetadataArray::I16(v) => v.len(),
            MetadataArray::U32(v) => v.len(),
            MetadataArray::I32(v) => v.len(),
            MetadataArray::F32(v) => v.len(),
            MetadataArray::Bool(v) => v.len(),
            MetadataArray::String(v) => v.len(),
            MetadataArray::Array(v) => v.len(),
            MetadataArray::U64(v) => v.len(),
            MetadataArray::I64(v) => v.len(),
            MetadataArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as integers, if the element type is an integer type.
    pub fn to_i128_vec(&self) -> Option<Vec<i128>> {
        Some(match self {
            MetadataArray::U8(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I8(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U16(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I16(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U32(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I32(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::U64(v) => v.iter().map(|&x| x.into()).collect(),
            MetadataArray::I64(v) => v.iter().map(|&x| x.into()).collect(),
            _ => return None,
        })
    }

    /// The elements as floats, if the element type is a float or integer type.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        match self {
            MetadataArray::F32(v) => Some(v.iter().map(|&x| x.into()).collect()),
            MetadataArray::F64(v) => Some(v.clone()),
            _ => self
                .to_i128_vec()
                .map(|v| v.into_iter().map(|x| x as f64).collect()),
        }
    }
}
