//! The two Python functions transformers gives chat templates, in Rust: `json.dumps` (the `tojson` filter) and
//! `datetime.strftime` (behind `strftime_now`).

use minijinja::value::{Value, ValueKind};

use crate::error::{Error, InputError, ParamValue, Result};

/// Options of Python's `json.dumps` that `tojson` passes through.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonOptions {
    /// `indent`: `None` for one line.
    pub indent: Option<usize>,
    /// `separators` (item, key); `None` for Python's default: `(", ", ": ")` on one line, `(",", ": ")`
    /// with an indent.
    pub separators: Option<(String, String)>,
    /// `sort_keys`.
    pub sort_keys: bool,
    /// `ensure_ascii` (transformers' default: false).
    pub ensure_ascii: bool,
}

/// `value` as transformers' `tojson` filter writes it: Python's `json.dumps(value, ensure_ascii=False, …)` —
/// by default `", "` between items and `": "` after keys, maps in insertion order, non-ASCII characters as
/// they are, integers without a decimal point, floats as Python's `repr` (`1.0`, `1e+20`, `NaN`). The error
/// names what JSON cannot hold (an undefined value, a list or map as a map key).
pub(crate) fn tojson_with(value: &Value, options: &JsonOptions) -> std::result::Result<String, String> {
    let mut out = String::new();
    write_json(value, options, 0, &mut out)?;
    Ok(out)
}

fn write_json(
    value: &Value,
    options: &JsonOptions,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), String> {
    match value.kind() {
        ValueKind::Undefined => return Err("an undefined value is not JSON serializable".into()),
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(value, out)?,
        ValueKind::String => write_string(value.as_str().unwrap_or_default(), options.ensure_ascii, out),
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter().map_err(|e| e.to_string())? {
                let item = value.get_item(&key).map_err(|e| e.to_string())?;
                entries.push((map_key(&key)?, item));
            }
            if options.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(entries.len(), '{', '}', options, depth, out, |i, out| {
                write_string(&entries[i].0, options.ensure_ascii, out);
                out.push_str(options.separators.as_ref().map_or(": ", |s| s.1.as_str()));
                write_json(&entries[i].1, options, depth + 1, out)
            })?;
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter().map_err(|e| e.to_string())?.collect();
            write_container(items.len(), '[', ']', options, depth, out, |i, out| {
                write_json(&items[i], options, depth + 1, out)
            })?;
        }
        other => return Err(format!("a value of kind {other} is not JSON serializable")),
    }
    Ok(())
}

/// `[a, b]` / `{…}` with Python's separators and indentation.
fn write_container(
    len: usize,
    open: char,
    close: char,
    options: &JsonOptions,
    depth: usize,
    out: &mut String,
    mut item: impl FnMut(usize, &mut String) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let default_sep = if options.indent.is_some() { "," } else { ", " };
    let item_sep = options.separators.as_ref().map_or(default_sep, |s| s.0.as_str());
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = options.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * level));
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(item_sep);
        }
        newline(out, depth + 1);
        item(i, out)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A map key as Python's `json.dumps` writes it: strings as they are; numbers, booleans and `None` as
/// their JSON text.
fn map_key(key: &Value) -> std::result::Result<String, String> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number => {
            let mut text = String::new();
            write_number(key, &mut text)?;
            Ok(text)
        }
        other => Err(format!("keys must be str, int, float, bool or None, not {other}")),
    }
}

/// Integers as integers; floats as Python's `repr`: `1.0`, `0.5`, `1e+20`, `NaN`, `Infinity`.
fn write_number(value: &Value, out: &mut String) -> std::result::Result<(), String> {
    let number = serde_json::to_value(value).map_err(|e| e.to_string())?;
    match number {
        serde_json::Value::Number(n) if !n.is_f64() => out.push_str(&n.to_string()),
        _ => {
            let x = f64::try_from(value.clone()).map_err(|e| e.to_string())?;
            out.push_str(&python_float_repr(x));
        }
    }
    Ok(())
}

/// Python's `repr(float)`: the shortest round-trip digits, scientific notation below 1e-4 and from 1e16 on
/// (`1e-05`, `1e+16`), a `.0` on integral values in between.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let magnitude = x.abs();
    if x == 0.0 || (1e-4..1e16).contains(&magnitude) {
        let text = format!("{x}");
        return if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        };
    }
    // Rust's `{:e}` gives the shortest digits as `1.5e-7`; Python writes `1.5e-07`.
    let text = format!("{x:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let (sign, digits) = match exponent.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exponent),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control characters as
/// `\u00XX`; with `ensure_ascii`, every non-ASCII character as `\uXXXX` (UTF-16 surrogate pairs above
/// U+FFFF).
fn write_string(text: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// How Jinja2 prints a value that is not a string: Python's `str()` — `True` / `False`, `None`, floats as
/// `repr` (`1e+20`), lists and dicts as `repr` (`[1, 'a', None]`, `{'k': 'v'}`; strings inside in quotes, with
/// `\\`, `\n`, `\r`, `\t` and other control characters escaped). `None` for the kinds minijinja prints as
/// Python does (strings, integers, undefined).
pub(crate) fn python_str(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Seq | ValueKind::Map => Some(python_repr(value)),
        ValueKind::Number if is_float(value) => Some(python_repr(value)),
        _ => None,
    }
}

fn is_float(value: &Value) -> bool {
    matches!(serde_json::to_value(value), Ok(serde_json::Value::Number(n)) if n.is_f64())
}

/// Python's `repr` of a value (see [`python_str`]).
fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::None | ValueKind::Undefined => "None".into(),
        ValueKind::Number if is_float(value) => f64::try_from(value.clone()).map_or_else(
            |_| value.to_string(),
            |x| match python_float_repr(x).as_str() {
                "NaN" => "nan".into(),
                "Infinity" => "inf".into(),
                "-Infinity" => "-inf".into(),
                other => other.into(),
            },
        ),
        ValueKind::String => python_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| it.map(|v| python_repr(&v)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .map(|keys| {
                    keys.map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_repr(&k), python_repr(&v))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => value.to_string(),
    }
}

/// Python's `repr(str)`: single quotes unless the text has a `'` and no `"`.
fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `unix_seconds` (seconds since 1970-01-01 00:00:00 UTC) formatted like Python's
/// `datetime.fromtimestamp(unix_seconds, timezone.utc).strftime(format)` in the C locale, for the
/// directives `%Y %m %d %H %M %S %y %b %B %a %A %j %I %p %%`.
///
/// # Errors
/// [`InputError::InvalidParameter`] naming `format` for another directive or a `%` at its end.
pub fn strftime(format: &str, unix_seconds: i64) -> Result<String> {
    let days = unix_seconds.div_euclid(86_400);
    let secs = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let directive = chars.next();
        let text = match directive {
            Some('Y') => year.to_string(),
            Some('m') => format!("{month:02}"),
            Some('d') => format!("{day:02}"),
            Some('H') => format!("{hour:02}"),
            Some('M') => format!("{minute:02}"),
            Some('S') => format!("{second:02}"),
            Some('y') => format!("{:02}", year.rem_euclid(100)),
            Some('b') => MONTHS[month as usize - 1][..3].to_string(),
            Some('B') => MONTHS[month as usize - 1].to_string(),
            Some('a') => WEEKDAYS[weekday][..3].to_string(),
            Some('A') => WEEKDAYS[weekday].to_string(),
            Some('j') => format!("{day_of_year:03}"),
            Some('I') => format!("{:02}", (hour + 11) % 12 + 1),
            Some('p') => if hour < 12 { "AM" } else { "PM" }.to_string(),
            Some('%') => "%".to_string(),
            other => {
                return Err(Error::Input(InputError::InvalidParameter {
                    name: "format",
                    value: ParamValue::Text(format!(
                        "{format:?} (with {})",
                        other.map_or("a % at the end".to_string(), |d| format!("%{d}"))
                    )),
                    requirement: "only the directives %Y %m %d %H %M %S %y %b %B %a %A %j %I %p %%",
                }))
            }
        };
        out.push_str(&text);
    }
    Ok(out)
}

/// (year, month 1–12, day 1–31) of the day `days` after 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to (year, month, day) (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values from Python 3.11:
    /// `datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S %y %b %B %a %A %j %I %p %%")`.
    #[test]
    fn strftime_matches_python() {
        let format = "%Y-%m-%d %H:%M:%S %y %b %B %a %A %j %I %p %%";
        let cases = [
            (0, "1970-01-01 00:00:00 70 Jan January Thu Thursday 001 12 AM %"),
            (
                951_825_600,
                "2000-02-29 12:00:00 00 Feb February Tue Tuesday 060 12 PM %",
            ),
            (
                1_721_952_000,
                "2024-07-26 00:00:00 24 Jul July Fri Friday 208 12 AM %",
            ),
            (
                1_798_761_599,
                "2026-12-31 23:59:59 26 Dec December Thu Thursday 365 11 PM %",
            ),
            (
                -1,
                "1969-12-31 23:59:59 69 Dec December Wed Wednesday 365 11 PM %",
            ),
        ];
        for (t, expected) in cases {
            assert_eq!(strftime(format, t).unwrap(), expected, "t = {t}");
        }
        assert_eq!(strftime("%d %b %Y", 1_721_952_000).unwrap(), "26 Jul 2024");
        assert!(strftime("%Q", 0).is_err());
        assert!(strftime("100%", 0).is_err());
    }

    #[test]
    fn float_repr_matches_python() {
        for (x, expected) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1.5e-7, "1.5e-07"),
            (-2.5e20, "-2.5e+20"),
            (0.0001, "0.0001"),
            (123456.789, "123456.789"),
        ] {
            assert_eq!(python_float_repr(x), expected);
        }
    }
}
