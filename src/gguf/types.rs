//! ggml tensor types and GGUF metadata value types, with their on-disk ids and block layouts.

use std::fmt;

macro_rules! ggml_types {
    ($( $(#[$doc:meta])* $variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal; )*) => {
        /// A ggml tensor element type, as stored in a GGUF tensor info (a `u32` id).
        ///
        /// Every type the ggml library currently knows is listed (with its block size and bytes per block, so
        /// the layout of a file can be checked even for types this crate cannot dequantize); ids that ggml
        /// has retired or not yet assigned are rejected when a file is opened.
        /// [`GgmlType::is_dequantizable`] says which ones [`GgufFile::tensor`](super::GgufFile::tensor)
        /// can turn into floats.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $( $(#[$doc])* $variant, )*
        }

        impl GgmlType {
            /// Every type, in the order of their ids.
            pub const ALL: &'static [GgmlType] = &[$( GgmlType::$variant, )*];

            /// The type for an on-disk id, or `None` for an id ggml does not (or no longer) define.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $( $id => Some(GgmlType::$variant), )*
                    _ => None,
                }
            }

            /// The on-disk id.
            pub fn id(self) -> u32 {
                match self {
                    $( GgmlType::$variant => $id, )*
                }
            }

            /// ggml's name for the type (`"Q4_K"`, `"F32"`, …).
            pub fn name(self) -> &'static str {
                match self {
                    $( GgmlType::$variant => $name, )*
                }
            }

            /// Elements per block (1 for plain element types, 32 or 256 for most quantized ones).
            pub fn block_size(self) -> u64 {
                match self {
                    $( GgmlType::$variant => $block, )*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> u64 {
                match self {
                    $( GgmlType::$variant => $bytes, )*
                }
            }
        }
    };
}

ggml_types! {
    /// IEEE 754 single precision.
    F32 = 0, "F32", 1, 4;
    /// IEEE 754 half precision.
    F16 = 1, "F16", 1, 2;
    /// 32 4-bit values with one f16 scale `d`: `x = d·(q − 8)`.
    Q4_0 = 2, "Q4_0", 32, 18;
    /// 32 4-bit values with f16 scale `d` and offset `m`: `x = d·q + m`.
    Q4_1 = 3, "Q4_1", 32, 20;
    /// 32 5-bit values with one f16 scale `d`: `x = d·(q − 16)`.
    Q5_0 = 6, "Q5_0", 32, 22;
    /// 32 5-bit values with f16 scale `d` and offset `m`: `x = d·q + m`.
    Q5_1 = 7, "Q5_1", 32, 24;
    /// 32 signed bytes with one f16 scale `d`: `x = d·q`.
    Q8_0 = 8, "Q8_0", 32, 34;
    /// Q8_0 with an f32 scale and a precomputed sum (an intermediate format of ggml's dot products).
    Q8_1 = 9, "Q8_1", 32, 40;
    /// 2-bit k-quant (256-element super-blocks).
    Q2_K = 10, "Q2_K", 256, 84;
    /// 3-bit k-quant.
    Q3_K = 11, "Q3_K", 256, 110;
    /// 4-bit k-quant: 8 sub-blocks of 32 with 6-bit scales and mins, f16 super-scales `d`, `dmin`:
    /// `x = d·sc·q − dmin·m`.
    Q4_K = 12, "Q4_K", 256, 144;
    /// 5-bit k-quant, as Q4_K with a fifth bit per value.
    Q5_K = 13, "Q5_K", 256, 176;
    /// 6-bit k-quant: 16 sub-blocks of 16 with signed 8-bit scales and one f16 super-scale `d`:
    /// `x = d·sc·(q − 32)`.
    Q6_K = 14, "Q6_K", 256, 210;
    /// 8-bit k-quant (an intermediate format of ggml's dot products).
    Q8_K = 15, "Q8_K", 256, 292;
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    /// i-quant, 2.31 bits per weight.
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    /// i-quant, 1.56 bits per weight.
    IQ1_S = 19, "IQ1_S", 256, 50;
    /// i-quant, 4.5 bits per weight, non-linear grid.
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    /// i-quant, 3.44 bits per weight.
    IQ3_S = 21, "IQ3_S", 256, 110;
    /// i-quant, 2.5 bits per weight.
    IQ2_S = 22, "IQ2_S", 256, 82;
    /// i-quant, 4.25 bits per weight.
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    /// 8-bit signed integer.
    I8 = 24, "I8", 1, 1;
    /// 16-bit signed integer.
    I16 = 25, "I16", 1, 2;
    /// 32-bit signed integer.
    I32 = 26, "I32", 1, 4;
    /// 64-bit signed integer.
    I64 = 27, "I64", 1, 8;
    /// IEEE 754 double precision.
    F64 = 28, "F64", 1, 8;
    /// i-quant, 1.75 bits per weight.
    IQ1_M = 29, "IQ1_M", 256, 56;
    /// bfloat16 (the upper half of an f32).
    BF16 = 30, "BF16", 1, 2;
    /// ternary quant, 1.69 bits per weight.
    TQ1_0 = 34, "TQ1_0", 256, 54;
    /// ternary quant, 2.06 bits per weight.
    TQ2_0 = 35, "TQ2_0", 256, 66;
    /// microscaling FP4 (32 e2m1 values with an e8m0 scale).
    MXFP4 = 39, "MXFP4", 32, 17;
    /// NVIDIA FP4 (64 e2m1 values with fp8 scales).
    NVFP4 = 40, "NVFP4", 64, 36;
    /// 1-bit quant (128-element blocks).
    Q1_0 = 41, "Q1_0", 128, 18;
}

impl GgmlType {
    /// Whether [`GgufFile::tensor`](super::GgufFile::tensor) can dequantize this type:
    /// F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K.
    pub fn is_dequantizable(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | F64 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ggml's name of a type ([`GgmlType::name`]), in any letter case: `"q8_0"` → [`GgmlType::Q8_0`].
impl std::str::FromStr for GgmlType {
    type Err = crate::Error;

    /// # Errors
    /// [`InputError::InvalidParameter`](crate::InputError::InvalidParameter) (`ggml type`) naming the text,
    /// for a name ggml does not define.
    fn from_str(name: &str) -> crate::Result<Self> {
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                crate::Error::Input(crate::InputError::InvalidParameter {
                    name: "ggml type",
                    value: crate::ParamValue::Text(format!("{name:?}")),
                    requirement: "must be a ggml type name (F32, F16, BF16, Q8_0, Q4_K, …)",
                })
            })
    }
}

/// The type tag of a GGUF metadata value (a `u32` on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    /// `u8` (tag 0).
    U8,
    /// `i8` (tag 1).
    I8,
    /// `u16` (tag 2).
    U16,
    /// `i16` (tag 3).
    I16,
    /// `u32` (tag 4).
    U32,
    /// `i32` (tag 5).
    I32,
    /// `f32` (tag 6).
    F32,
    /// `bool`, one byte 0 or 1 (tag 7).
    Bool,
    /// UTF-8 string: `u64` length, then the bytes (tag 8).
    String,
    /// Array: `u32` element tag, `u64` length, then the elements (tag 9).
    Array,
    /// `u64` (tag 10).
    U64,
    /// `i64` (tag 11).
    I64,
    /// `f64` (tag 12).
    F64,
}

impl GgufValueType {
    /// The type for an on-disk tag, or `None` for an unknown tag.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgufValueType::*;
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

    /// The on-disk tag.
    pub fn id(self) -> u32 {
        use GgufValueType::*;
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

    /// The smallest number of bytes a value of this type occupies on disk (used to bound counts read from a
    /// possibly corrupt header before allocating).
    pub(crate) fn min_bytes(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufValueType::*;
        f.write_str(match self {
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
        })
    }
}
