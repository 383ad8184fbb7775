//! Preference records from JSON Lines.
//!
//! One JSON object per line, in either of the forms the ecosystem (TRL, alignment-handbook) uses:
//!
//! ```text
//! {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."}
//! {"prompt": [{"role": "user", "content": "What is 2+2?"}],
//!  "chosen": [{"role": "assistant", "content": "4."}],
//!  "rejected": [{"role": "assistant", "content": "5."}]}
//! ```
//!
//! In the conversational form `prompt` may be omitted: the prompt is then the longest common prefix of the
//! `chosen` and `rejected` conversations (TRL's "implicit prompt"), and the responses are what follows it.
//! Other keys are ignored. Whitespace-only lines are skipped (they hold no record).
//!
//! # Malformed records
//! Bad JSON, a missing or mistyped field, an empty response (no characters other than whitespace, or no
//! message), or a plain prompt mixed with conversational responses is a [`DataError::Record`] naming the file
//! and the 1-based line — or, with [`OnMalformed::Skip`], the record is skipped and listed in
//! [`PreferenceDataset::skipped`]. Never a panic, never a silent drop.

use crate::error::{DataError, Error, Result};
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `"system"`, `"user"`, `"assistant"`, … (passed to the chat template as is).
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A prompt or a response: plain text, or a list of chat messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// Plain text, used as is.
    Plain(String),
    /// Chat messages; the tokenizer's chat template turns them into text.
    Conversation(Vec<Message>),
}

/// One preference pair: a prompt, the preferred (`chosen`) and the dispreferred (`rejected`) response.
///
/// Invariants (checked by [`PreferenceRecord::from_json`] and [`PreferenceRecord::new`]): the three parts are
/// all plain or all conversational, and neither response is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceRecord {
    /// The prompt (may be empty).
    pub prompt: Text,
    /// The preferred response.
    pub chosen: Text,
    /// The dispreferred response.
    pub rejected: Text,
}

impl PreferenceRecord {
    /// A record from its parts, checked as described on the type.
    ///
    /// # Errors
    /// [`DataError::Record`] with file `<record>` and line 1 when the invariants do not hold.
    pub fn new(prompt: Text, chosen: Text, rejected: Text) -> Result<Self> {
        Self::checked(prompt, chosen, rejected).map_err(|message| {
            Error::Data(DataError::Record {
                file: "<record>".into(),
                line: 1,
                message,
            })
        })
    }

    /// Parses one JSON object (see the [module docs](self) for the accepted forms).
    ///
    /// # Errors
    /// [`DataError::Record`] with file `<json>` and line 1 describing the problem ([`PreferenceDataset`] reports
    /// the real file and line).
    pub fn from_json(line: &str) -> Result<Self> {
        Self::parse(line).map_err(|message| {
            Error::Data(DataError::Record {
                file: "<json>".into(),
                line: 1,
                message,
            })
        })
    }

    fn checked(prompt: Text, chosen: Text, rejected: Text) -> std::result::Result<Self, String> {
        let conversational = matches!(prompt, Text::Conversation(_));
        for (name, part) in [("chosen", &chosen), ("rejected", &rejected)] {
            if matches!(part, Text::Conversation(_)) != conversational {
                return Err(format!(
                    "`prompt` and `{name}` must both be strings or both be message lists"
                ));
            }
            if is_empty_text(part) {
                return Err(format!("`{name}` is an empty response"));
            }
        }
        Ok(Self {
            prompt,
            chosen,
            rejected,
        })
    }

    fn parse(line: &str) -> std::result::Result<Self, String> {
        let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let object = value
            .as_object()
            .ok_or_else(|| "expected a JSON object with `prompt`, `chosen` and `rejected`".to_string())?;
        let field = |name: &str| -> std::result::Result<Text, String> {
            let value = object
                .get(name)
                .ok_or_else(|| format!("missing field `{name}`"))?;
            parse_text(name, value)
        };
        let chosen = field("chosen")?;
        let rejected = field("rejected")?;
        match object.get("prompt") {
            Some(prompt) => Self::checked(parse_text("prompt", prompt)?, chosen, rejected),
            None => match (chosen, rejected) {
                (Text::Conversation(chosen), Text::Conversation(rejected)) => {
                    let shared = chosen
                        .iter()
                        .zip(&rejected)
                        .take_while(|(c, r)| c == r)
                        .count()
                        .min(chosen.len().saturating_sub(1))
                        .min(rejected.len().saturating_sub(1));
                    if shared == 0 {
                        return Err(
                            "missing field `prompt`, and `chosen` and `rejected` share no leading \
                                    messages to take it from"
                                .to_string(),
                        );
                    }
                    Self::checked(
                        Text::Conversation(chosen[..shared].to_vec()),
                        Text::Conversation(chosen[shared..].to_vec()),
                        Text::Conversation(rejected[shared..].to_vec()),
                    )
                }
                _ => Err("missing field `prompt`".to_string()),
            },
        }
    }
}

fn is_empty_text(text: &Text) -> bool {
    match text {
        Text::Plain(s) => s.trim().is_empty(),
        Text::Conversation(messages) => messages.iter().all(|m| m.content.trim().is_empty()),
    }
}

fn parse_text(name: &str, value: &Value) -> std::result::Result<Text, String> {
    match value {
        Value::String(s) => Ok(Text::Plain(s.clone())),
        Value::Array(items) => {
            let mut messages = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let get = |key: &str| -> std::result::Result<String, String> {
                    item.get(key)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("`{name}[{i}]` needs a string `{key}`"))
                };
                messages.push(Message {
                    role: get("role")?,
                    content: get("content")?,
                });
            }
            Ok(Text::Conversation(messages))
        }
        other => Err(format!(
            "`{name}` must be a string or a list of {{\"role\", \"content\"}} messages, found {}",
            json_kind(other)
        )),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What to do with a malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMalformed {
    /// Stop with a [`DataError::Record`] naming the file and line (the default).
    #[default]
    Error,
    /// Skip it and list it in [`PreferenceDataset::skipped`].
    Skip,
}

/// A record that was skipped under [`OnMalformed::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// 1-based line number.
    pub line: usize,
    /// Why it was skipped.
    pub reason: String,
}

/// Preference records read from JSON Lines, with their line numbers and the skipped ones.
#[derive(Debug, Clone, Default)]
pub struct PreferenceDataset {
    /// The file (or source name) the records came from.
    pub source: String,
    /// The records, in file order. Record `i` is what trainers and caches call index `i`.
    pub records: Vec<PreferenceRecord>,
    /// `lines[i]`: the 1-based line of `records[i]`.
    pub lines: Vec<usize>,
    /// Malformed records skipped under [`OnMalformed::Skip`] (empty under [`OnMalformed::Error`]).
    pub skipped: Vec<SkippedRecord>,
}

impl PreferenceDataset {
    /// Reads a JSON Lines file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`DataError::Record`] (file:line) for a malformed record under
    /// [`OnMalformed::Error`], or for a line that is not valid UTF-8.
    pub fn from_jsonl(path: impl AsRef<Path>, on_malformed: OnMalformed) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_reader(
            std::io::BufReader::new(file),
            &path.display().to_string(),
            on_malformed,
        )
    }

    /// Reads JSON Lines from any buffered reader; `source` names it in errors.
    ///
    /// # Errors
    /// As [`PreferenceDataset::from_jsonl`].
    pub fn from_reader(reader: impl BufRead, source: &str, on_malformed: OnMalformed) -> Result<Self> {
        let mut dataset = Self {
            source: source.to_string(),
            ..Self::default()
        };
        for (i, line) in reader.lines().enumerate() {
            let line_no = i + 1;
            let parsed = match line {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => PreferenceRecord::parse(&line),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(format!("not valid UTF-8: {e}")),
                Err(e) => return Err(Error::io(source, e)),
            };
            match (parsed, on_malformed) {
                (Ok(record), _) => {
                    dataset.records.push(record);
                    dataset.lines.push(line_no);
                }
                (Err(reason), OnMalformed::Skip) => dataset.skipped.push(SkippedRecord {
                    line: line_no,
                    reason,
                }),
                (Err(message), OnMalformed::Error) => {
                    return Err(Error::Data(DataError::Record {
                        file: source.to_string(),
                        line: line_no,
                        message,
                    }))
                }
            }
        }
        Ok(dataset)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
