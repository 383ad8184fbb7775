//! Header parsing: buffered reads with a position, bounds checks against the file size, typed errors.

use super::{try_vec, GgufValue, GgufValueType, MAX_ARRAY_DEPTH};
use crate::error::{Error, GgufError, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// Buffered header reading with a position, bounds checks against the file size, and typed errors.
pub(super) struct HeaderReader<'a> {
    pub(super) inner: BufReader<File>,
    pub(super) pos: u64,
    pub(super) len: u64,
    pub(super) path: &'a Path,
}

impl HeaderReader<'_> {
    pub(super) fn error(&self, reason: String) -> Error {
        Error::Gguf(GgufError::Invalid {
            path: self.path.display().to_string(),
            reason,
        })
    }

    pub(super) fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    pub(super) fn truncated(&self, needed: u64, what: &str) -> Error {
        self.error(format!(
            "truncated header: {what} needs {needed} bytes at offset {}, but the file has {} bytes",
            self.pos, self.len
        ))
    }

    /// Fails unless `count` items of at least `min_bytes` each can fit in the rest of the file.
    pub(super) fn check_count(&self, count: u64, min_bytes: u64, what: &str) -> Result<()> {
        match count.checked_mul(min_bytes) {
            Some(bytes) if bytes <= self.remaining() => Ok(()),
            _ => Err(self.error(format!(
                "truncated or corrupt header: {count} {what} at offset {} cannot fit in the remaining {} bytes of the file",
                self.pos,
                self.remaining()
            ))),
        }
    }

    pub(super) fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let needed = buf.len() as u64;
        if needed > self.remaining() {
            return Err(self.truncated(needed, what));
        }
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(needed, what)
            } else {
                Error::io(self.path, e)
            }
        })?;
        self.pos += needed;
        Ok(())
    }

    pub(super) fn bytes_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    pub(super) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes_array(what)?))
    }

    pub(super) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes_array(what)?))
    }

    pub(super) fn string_bytes(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(self.error(format!(
                "truncated or corrupt header: {what} claims {len} bytes at offset {}, but only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let mut buf = try_vec::<u8>(len, || format!("{what} in the header of {}", self.path.display()))?;
        buf.resize(len as usize, 0);
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    /// A key or tensor name: must be UTF-8.
    pub(super) fn string(&mut self, what: &str) -> Result<String> {
        let bytes = self.string_bytes(what)?;
        String::from_utf8(bytes).map_err(|e| self.error(format!("{what} is not valid UTF-8: {e}")))
    }

    pub(super) fn value(&mut self, tag: u32, key: &str, depth: u32) -> Result<GgufValue> {
        let ty = GgufValueType::from_id(tag)
            .ok_or_else(|| self.error(format!("metadata `{key}` has unknown value type {tag}")))?;
        let what = format!("the value of metadata `{key}`");
        Ok(match ty {
            GgufValueType::U8 => GgufValue::U8(self.bytes_array::<1>(&what)?[0]),
            GgufValueType::I8 => GgufValue::I8(self.bytes_array::<1>(&what)?[0] as i8),
            GgufValueType::U16 => GgufValue::U16(u16::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::I16 => GgufValue::I16(i16::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::U32 => GgufValue::U32(u32::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::I32 => GgufValue::I32(i32::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::U64 => GgufValue::U64(u64::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::I64 => GgufValue::I64(i64::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::F32 => GgufValue::F32(f32::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::F64 => GgufValue::F64(f64::from_le_bytes(self.bytes_array(&what)?)),
            GgufValueType::Bool => match self.bytes_array::<1>(&what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                other => return Err(self.error(format!("metadata `{key}` is a bool with byte {other}"))),
            },
            GgufValueType::String => {
                GgufValue::String(String::from_utf8_lossy(&self.string_bytes(&what)?).into_owned())
            }
            GgufValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.error(format!(
                        "metadata `{key}` nests arrays deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let elem_tag = self.u32(&format!("the element type of metadata `{key}`"))?;
                let elem = GgufValueType::from_id(elem_tag).ok_or_else(|| {
                    self.error(format!(
                        "metadata `{key}` is an array of unknown value type {elem_tag}"
                    ))
                })?;
                let count = self.u64(&format!("the length of metadata `{key}`"))?;
                self.check_count(
                    count,
                    elem.min_bytes(),
                    &format!("elements of metadata array `{key}`"),
                )?;
                let mut values = try_vec::<GgufValue>(count, || {
                    format!(
                        "metadata array `{key}` ({count} values) in {}",
                        self.path.display()
                    )
                })?;
                for _ in 0..count {
                    values.push(self.value(elem_tag, key, depth + 1)?);
                }
                GgufValue::Array { elem, values }
            }
        })
    }
}
