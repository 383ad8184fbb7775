//! Chat templates (feature `chat-template`, on by default): the Jinja template a model ships — GGUF
//! `tokenizer.chat_template`, or `chat_template` of a Hugging Face `tokenizer_config.json` (or its
//! `chat_template.jinja`) — rendered to the exact text transformers'
//! `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)` produces.
//!
//! [`JinjaTemplate`] renders with [`minijinja`] set up as transformers sets up Jinja2
//! (`transformers/utils/chat_template_utils.py`):
//! - `trim_blocks` and `lstrip_blocks` on, a single trailing newline of the template dropped, `{% break %}` /
//!   `{% continue %}`;
//! - the context: `messages` (a list of `{"role", "content"}` maps), `tools` = `none`, `documents` = `none`,
//!   `add_generation_prompt`, the special tokens the tokenizer has (`bos_token`, `eos_token`, `unk_token`,
//!   `pad_token`, as strings; absent ones are undefined), then the caller's extra variables
//!   ([`JinjaTemplate::render_with`], e.g. `date_string`, `enable_thinking`), which replace special tokens of the
//!   same name;
//! - `raise_exception(message)` fails the render with [`DataError::ChatTemplate`] carrying the message;
//!   `strftime_now(format)` is the current time in UTC ([`strftime`]: `%Y %m %d %H %M %S %y %b %B %a %A %j %I
//!   %p %%`); the `tojson` filter is Python's `json.dumps(x, ensure_ascii=False, indent=…, separators=…,
//!   sort_keys=…)`, not Jinja2's HTML-escaping one;
//! - Python's string and dict methods (`.strip()`, `.startswith()`, `.split()`, `.items()`, …) through
//!   `minijinja-contrib`'s `pycompat`; values printed as Python prints them (`True`, `False`, `None`, floats as
//!   `repr`, lists and dicts as `repr`: `[1, 'a', None]`).
//!
//! Not supported: transformers' `{% generation %}` block (assistant-token masks) and
//! `continue_final_message`.

mod python;

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};

use crate::error::{DataError, Error, Result};

pub use python::strftime;

/// The special tokens a chat template can read, as strings (`bos_token`, `eos_token`, `unk_token`,
/// `pad_token` in the template).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `bos_token`, e.g. `"<|begin_of_text|>"`.
    pub bos: Option<String>,
    /// `eos_token`, e.g. `"<|eot_id|>"`.
    pub eos: Option<String>,
    /// `unk_token`.
    pub unk: Option<String>,
    /// `pad_token`.
    pub pad: Option<String>,
}

impl SpecialTokens {
    fn entries(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [
            ("bos_token", &self.bos),
            ("eos_token", &self.eos),
            ("unk_token", &self.unk),
            ("pad_token", &self.pad),
        ]
        .into_iter()
        .filter_map(|(name, token)| token.as_ref().map(|t| (name, t)))
    }
}

/// The names the renderer itself sets; extra variables may not take them.
const RESERVED: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// A compiled Jinja chat template with the special tokens it renders with (see the [module docs](self)).
#[derive(Clone)]
pub struct JinjaTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    special: SpecialTokens,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("origin", &self.origin)
            .field("source_len", &self.source.len())
            .field("special", &self.special)
            .finish()
    }
}

const TEMPLATE_NAME: &str = "chat_template";

impl JinjaTemplate {
    /// Compiles `source`; `origin` names it in errors (e.g. `"tokenizer.chat_template of model.gguf"`).
    ///
    /// # Errors
    /// [`DataError::ChatTemplate`] if the template does not compile (the parser's message and line).
    pub fn new(source: impl Into<String>, origin: impl Into<String>, special: SpecialTokens) -> Result<Self> {
        let (source, origin) = (source.into(), origin.into());
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson_filter);
        env.set_formatter(|out, state, value| match python::python_str(value) {
            Some(text) => out.write_str(&text).map_err(|_| {
                minijinja::Error::new(ErrorKind::WriteFailure, "writing the rendered text failed")
            }),
            None => minijinja::escape_formatter(out, state, value),
        });
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| template_error(&origin, &e))?;
        Ok(Self {
            env,
            source,
            origin,
            special,
        })
    }

    /// The template and special tokens of a Hugging Face tokenizer folder's `tokenizer_config.json`:
    /// `chat_template` (a string, or a list of `{"name", "template"}` of which the one named `"default"`),
    /// else the file `chat_template.jinja` beside it; `bos_token` / `eos_token` / `unk_token` / `pad_token`
    /// (a string or `{"content": …}`).
    ///
    /// # Errors
    /// [`Error::Io`] if a file cannot be read; [`DataError::ChatTemplate`] for invalid JSON, a template or
    /// special token of another JSON type, no template at all, or a template that does not compile.
    pub fn from_tokenizer_config(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let fail = |message: String| chat_error(&origin, message);
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {e}")))?;
        let token = |name: &str| -> Result<Option<String>> {
            match config.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => match other.get("content").and_then(serde_json::Value::as_str) {
                    Some(s) => Ok(Some(s.to_string())),
                    None => Err(fail(format!(
                        "`{name}` must be a string or {{\"content\": string}}, found {other}"
                    ))),
                },
            }
        };
        let special = SpecialTokens {
            bos: token("bos_token")?,
            eos: token("eos_token")?,
            unk: token("unk_token")?,
            pad: token("pad_token")?,
        };
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(serde_json::Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(serde_json::Value::as_str))
                .map(str::to_string)
                .ok_or_else(|| {
                    fail("`chat_template` is a list without a template named \"default\"".into())
                })?,
            Some(other) => {
                return Err(fail(format!(
                    "`chat_template` must be a string or a list of {{\"name\", \"template\"}}, found {other}"
                )))
            }
            None => {
                let jinja = path.with_file_name("chat_template.jinja");
                if !jinja.is_file() {
                    return Err(fail(format!(
                        "no `chat_template` and no {} beside it",
                        jinja.display()
                    )));
                }
                std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?
            }
        };
        Self::new(source, origin, special)
    }

    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from (as given to [`JinjaTemplate::new`]).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The special tokens the template renders with.
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Renders `messages` (`(role, content)` pairs, in order); with `add_generation_prompt`, the template
    /// appends its assistant-turn opener. Equals transformers' `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=…)` on the same template and special tokens.
    ///
    /// # Errors
    /// [`DataError::ChatTemplate`] if rendering fails (the template's `raise_exception`, an operation on
    /// an undefined value, an unsupported filter or method).
    pub fn render<'m>(
        &self,
        messages: impl IntoIterator<Item = (&'m str, &'m str)>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`JinjaTemplate::render`] with extra template variables (transformers' `**kwargs` of
    /// `apply_chat_template`), e.g. `{"date_string": "26 Jul 2024"}` for Llama 3.x or
    /// `{"enable_thinking": false}` for Qwen3. They replace special tokens of the same name.
    ///
    /// # Errors
    /// As [`JinjaTemplate::render`]; also [`DataError::ChatTemplate`] for an extra variable named
    /// `messages`, `tools`, `documents` or `add_generation_prompt` (the renderer sets those).
    pub fn render_with<'m>(
        &self,
        messages: impl IntoIterator<Item = (&'m str, &'m str)>,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        for (name, token) in self.special.entries() {
            context.insert(name.to_string(), Value::from(token.as_str()));
        }
        for (name, value) in extra {
            if RESERVED.contains(&name.as_str()) {
                return Err(chat_error(
                    &self.origin,
                    format!("the extra variable `{name}` is set by the renderer itself"),
                ));
            }
            context.insert(name.clone(), Value::from_serialize(value));
        }
        let messages: Vec<Value> = messages
            .into_iter()
            // In this order, as Python's dicts keep it (`messages | tojson` shows it).
            .map(|(role, content)| {
                Value::from_iter([("role", Value::from(role)), ("content", Value::from(content))])
            })
            .collect();
        context.insert("messages".into(), Value::from(messages));
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        context.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| template_error(&self.origin, &e))?;
        template
            .render(Value::from_serialize(&context))
            .map_err(|e| template_error(&self.origin, &e))
    }
}

fn chat_error(origin: &str, message: String) -> Error {
    Error::Data(DataError::ChatTemplate {
        origin: origin.to_string(),
        message,
    })
}

/// A minijinja error as [`DataError::ChatTemplate`]: its message, the line, and the causes.
fn template_error(origin: &str, error: &minijinja::Error) -> Error {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    chat_error(origin, message)
}

/// The template's `raise_exception(message)`: fails the render with the message.
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {message}"),
    ))
}

/// The template's `strftime_now(format)`: the current UTC time.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    strftime(&format, now.as_secs() as i64)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// The `tojson` filter: `x | tojson(indent=…, separators=…, sort_keys=…, ensure_ascii=…)`.
fn tojson_filter(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let separators = match separators.as_deref() {
        None => None,
        Some([item, key]) => Some((item.clone(), key.clone())),
        Some(other) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: separators must be two strings, got {}", other.len()),
            ))
        }
    };
    let options = python::JsonOptions {
        indent,
        separators,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    python::tojson_with(&value, &options)
        .map(Value::from)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e))
}
