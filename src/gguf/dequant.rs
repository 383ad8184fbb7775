//! Dequantization of ggml blocks into `f32`.
//!
//! The block layouts follow ggml's `ggml-common.h` / `ggml-quants.c` (`dequantize_row_*`). Each value is
//! computed with the same f32 operations in the same order as ggml's reference C code (`d·q`, `d·q + m`,
//! `(d·sc)·q − dmin·m`), so results are bit-identical to it and to the `gguf` Python package.

use super::types::GgmlType;

/// IEEE half → single precision, exact for every input (subnormals, infinities, NaN payloads).
#[inline]
pub(crate) fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    match exponent {
        0 => {
            // Zero or subnormal: mantissa · 2^-24, exact in f32.
            let magnitude = mantissa as f32 * f32::from_bits(0x3380_0000); // 2^-24
            f32::from_bits(sign | magnitude.to_bits())
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13)),
    }
}

#[inline]
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

/// Dequantizes whole blocks of `ty` from `bytes` into `out`.
///
/// The caller guarantees `out.len()` is a multiple of the block size and
/// `bytes.len() == out.len() / block_size · block_bytes`. Returns `false` for a type this module cannot
/// dequantize.
pub(crate) fn dequantize_blocks(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> bool {
    let block_bytes = ty.block_bytes() as usize;
    let block_size = ty.block_size() as usize;
    debug_assert_eq!(out.len() % block_size, 0);
    debug_assert_eq!(bytes.len(), out.len() / block_size * block_bytes);
    let blocks = bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block_size));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
        }
        GgmlType::F64 => blocks.for_each(|(b, y)| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(b);
            y[0] = f64::from_le_bytes(raw) as f32;
        }),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| q6_k(b, y)),
        _ => return false,
    }
    true
}

/// `block_q4_0 { f16 d; u8 qs[16]; }`: low nibbles are values 0..16, high nibbles 16..32; `x = d·(q − 8)`.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for (j, &q) in qs.iter().enumerate() {
        y[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `block_q4_1 { f16 d; f16 m; u8 qs[16]; }`: `x = d·q + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    for (j, &q) in qs.iter().enumerate() {
        y[j] = (q & 0x0f) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `block_q5_0 { f16 d; u8 qh[4]; u8 qs[16]; }`: bit `j` of the little-endian `qh` is the fifth bit of
/// value `j`; `x = d·(q − 16)`.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for (j, &q) in qs.iter().enumerate() {
        let high_lo = (((qh >> j) & 1) << 4) as u8;
        let high_hi = (((qh >> (j + 16)) & 1) << 4) as u8;
        y[j] = (((q & 0x0f) | high_lo) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) | high_hi) as i32 - 16) as f32 * d;
    }
}

/// `block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16]; }`: `x = d·q + m`.
fn q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for (j, &q) in qs.iter().enumerate() {
        let high_lo = (((qh >> j) & 1) << 4) as u8;
        let high_hi = (((qh >> (j + 16)) & 1) << 4) as u8;
        y[j] = ((q & 0x0f) | high_lo) as f32 * d + m;
        y[j + 16] = ((q >> 4) | high_hi) as f32 * d + m;
    }
}

/// `block_q8_0 { f16 d; i8 qs[32]; }`: `x = d·q`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (out, &q) in y.iter_mut().zip(&b[2..34]) {
        *out = (q as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) packed in the 12 `scales` bytes of Q4_K / Q5_K:
/// sub-blocks 0..4 use the low 6 bits of bytes `j` (scale) and `j + 4` (min); sub-blocks 4..8 take their low
/// 4 bits from byte `j + 4` (scale: low nibble, min: high nibble) and their top 2 bits from the top bits of
/// bytes `j − 4` (scale) and `j` (min).
#[inline]
fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// `block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`: four groups of 64 values; group `g` uses
/// 32 bytes of `qs`, low nibbles for sub-block `2g`, high nibbles for `2g + 1`; `x = (d·sc)·q − dmin·m`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for group in 0..4 {
        let (sc_lo, m_lo) = k_scale_min(scales, 2 * group);
        let (sc_hi, m_hi) = k_scale_min(scales, 2 * group + 1);
        let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
        let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
        let q = &qs[32 * group..32 * group + 32];
        let (y_lo, y_hi) = y[64 * group..64 * group + 64].split_at_mut(32);
        for l in 0..32 {
            y_lo[l] = d_lo * (q[l] & 0x0f) as f32 - min_lo;
            y_hi[l] = d_hi * (q[l] >> 4) as f32 - min_hi;
        }
    }
}

/// `block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`: as Q4_K, and bit `k` of
/// `qh[l]` is the fifth bit of value `l` of sub-block `k`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for group in 0..4 {
        let (sc_lo, m_lo) = k_scale_min(scales, 2 * group);
        let (sc_hi, m_hi) = k_scale_min(scales, 2 * group + 1);
        let (d_lo, min_lo) = (d * sc_lo as f32, dmin * m_lo as f32);
        let (d_hi, min_hi) = (d * sc_hi as f32, dmin * m_hi as f32);
        let q = &qs[32 * group..32 * group + 32];
        let (bit_lo, bit_hi) = (1u8 << (2 * group), 2u8 << (2 * group));
        let (y_lo, y_hi) = y[64 * group..64 * group + 64].split_at_mut(32);
        for l in 0..32 {
            let high_lo = if qh[l] & bit_lo != 0 { 16 } else { 0 };
            let high_hi = if qh[l] & bit_hi != 0 { 16 } else { 0 };
            y_lo[l] = d_lo * ((q[l] & 0x0f) + high_lo) as f32 - min_lo;
            y_hi[l] = d_hi * ((q[l] >> 4) + high_hi) as f32 - min_hi;
        }
    }
}

/// `block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`: two halves of 128 values; in half `h`,
/// value `l + 32k` (`l` in 0..32, `k` in 0..4) takes its low 4 bits from `ql[64h + l + 32·(k & 1)]` (low
/// nibble for `k < 2`, high otherwise) and its top 2 bits from bits `2k..2k+2` of `qh[32h + l]`;
/// `x = (d·sc)·(q − 32)` with `sc = scales[8h + l/16 + 2k]`.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
