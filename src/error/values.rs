//! Values carried by error variants: the value of an invalid parameter and the
//! mismatches between two parameter sets.

use std::collections::BTreeMap;
use std::fmt;

use super::{readable, Error, Result, WeightsError};

/// The value of a parameter in [`InputError::InvalidParameter`](super::InputError::InvalidParameter), as it was given.
///
/// `Display`: a [`ParamValue::Number`] in readable form (Rust's shortest round-trip form for magnitudes in
/// `[1e-4, 1e16)` and zero, scientific notation outside: `1e-300`, not 300 digits), a
/// [`ParamValue::Count`] in decimal, a [`ParamValue::Text`] as written.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ParamValue {
    /// A real number (β, a learning rate, a ratio, …).
    Number(f64),
    /// A count, size or index (steps, a batch size, a rank, …).
    Count(u64),
    /// A value that is no number, in words or as written (e.g. `[]` for an empty list).
    Text(String),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Number(value) => f.write_str(&readable(*value)),
            ParamValue::Count(value) => write!(f, "{value}"),
            ParamValue::Text(text) => f.write_str(text),
        }
    }
}

impl From<f64> for ParamValue {
    fn from(value: f64) -> Self {
        ParamValue::Number(value)
    }
}

impl From<u64> for ParamValue {
    fn from(value: u64) -> Self {
        ParamValue::Count(value)
    }
}

impl From<usize> for ParamValue {
    fn from(value: usize) -> Self {
        ParamValue::Count(value as u64)
    }
}

impl From<&str> for ParamValue {
    fn from(text: &str) -> Self {
        ParamValue::Text(text.to_string())
    }
}

impl From<String> for ParamValue {
    fn from(text: String) -> Self {
        ParamValue::Text(text)
    }
}

/// A parameter whose shape differs from the expected one, in a [`ParameterMismatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The parameter's name.
    pub name: String,
    /// The shape that was expected.
    pub expected: Vec<i64>,
    /// The shape that was found.
    pub got: Vec<i64>,
}

/// How a set of named parameters differs from the set a model expects, in [`WeightsError::Parameters`].
/// Each list is sorted by name.
///
/// `Display` lists the first [`ParameterMismatch::SHOWN`] names of each kind, then how many more, e.g.
/// "missing `a`, `b`; unexpected `c` (not parameters of this model: wrong architecture or config?); `d` has
/// shape [2, 3], expected [3, 2]; given twice `e`".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterMismatch {
    /// Expected parameters that are absent.
    pub missing: Vec<String>,
    /// Parameters present that the model does not have.
    pub unexpected: Vec<String>,
    /// Parameters present with another shape than expected.
    pub mismatched: Vec<ShapeMismatch>,
    /// Parameters given more than once.
    pub duplicated: Vec<String>,
}

impl ParameterMismatch {
    /// How many names of each kind `Display` shows.
    pub const SHOWN: usize = 8;

    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mismatched.is_empty()
            && self.duplicated.is_empty()
    }

    /// Compares `given` (name, shape) pairs with `expected` (name → shape): every expected name present
    /// once with its shape, nothing else; a name given twice is listed in `duplicated` (and compared once).
    #[cfg_attr(
        not(any(feature = "train", feature = "gemma", feature = "llama", feature = "lora")),
        allow(dead_code)
    )]
    pub(crate) fn compare<'a>(
        expected: &BTreeMap<String, Vec<i64>>,
        given: impl IntoIterator<Item = (&'a str, Vec<i64>)>,
    ) -> Self {
        let mut mismatch = ParameterMismatch::default();
        let mut seen = std::collections::HashSet::new();
        for (name, shape) in given {
            if !seen.insert(name) {
                mismatch.duplicated.push(name.to_string());
                continue;
            }
            match expected.get(name) {
                None => mismatch.unexpected.push(name.to_string()),
                Some(want) if *want != shape => mismatch.mismatched.push(ShapeMismatch {
                    name: name.to_string(),
                    expected: want.clone(),
                    got: shape,
                }),
                Some(_) => {}
            }
        }
        mismatch.missing = expected
            .keys()
            .filter(|name| !seen.contains(name.as_str()))
            .cloned()
            .collect();
        mismatch
    }

    /// `Ok(())` when nothing differs, else [`WeightsError::Parameters`] for `origin` (lists sorted by name).
    #[cfg_attr(
        not(any(feature = "train", feature = "gemma", feature = "llama", feature = "lora")),
        allow(dead_code)
    )]
    pub(crate) fn into_result(mut self, origin: &str, expected_by: &str) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        self.missing.sort();
        self.unexpected.sort();
        self.mismatched.sort_by(|a, b| a.name.cmp(&b.name));
        self.duplicated.sort();
        self.duplicated.dedup();
        Err(Error::Weights(WeightsError::Parameters {
            origin: origin.to_string(),
            expected_by: expected_by.to_string(),
            mismatch: Box::new(self),
        }))
    }
}

/// The first [`ParameterMismatch::SHOWN`] of `items`, comma-separated, then "and N more".
fn first_few<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    let mut text = items
        .iter()
        .take(ParameterMismatch::SHOWN)
        .map(show)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > ParameterMismatch::SHOWN {
        text.push_str(&format!(" and {} more", items.len() - ParameterMismatch::SHOWN));
    }
    text
}

impl fmt::Display for ParameterMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "missing {}",
                first_few(&self.missing, |n| format!("`{n}`"))
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "unexpected {} (not parameters of this model: wrong architecture or config?)",
                first_few(&self.unexpected, |n| format!("`{n}`"))
            ));
        }
        if !self.mismatched.is_empty() {
            parts.push(first_few(&self.mismatched, |m| {
                format!("`{}` has shape {:?}, expected {:?}", m.name, m.got, m.expected)
            }));
        }
        if !self.duplicated.is_empty() {
            parts.push(format!(
                "given twice {}",
                first_few(&self.duplicated, |n| format!("`{n}`"))
            ));
        }
        f.write_str(&parts.join("; "))
    }
}
