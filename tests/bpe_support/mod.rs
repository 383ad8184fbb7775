//! The tokenizer fixtures: a fixture script run once per test binary ([`make_fixture`]) —
//! `scripts/make_bpe_fixture.py` ([`fixture`]: byte-level BPE tokenizers trained by the Python `tokenizers`
//! package, their GGUF files, and transformers' ids and chat-template renders in `expected.json`) or another —,
//! the project's Python scripts run with [`run_script`], and GGUF copies with changed tokenizer metadata for
//! the error tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;
use tch_rpo::gguf::{GgufFile, GgufValue, GgufValueType, GgufWriter};

/// The fixture folder and its `expected.json`.
pub struct Fixture {
    pub dir: PathBuf,
    pub expected: Value,
}

impl Fixture {
    /// `<dir>/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The GGUF file of a family (`llama-bpe`, `qwen2`, `smollm`, `gpt-2`).
    pub fn gguf(&self, family: &str) -> GgufFile {
        GgufFile::open(self.path(&format!("{family}.gguf"))).unwrap()
    }
}

/// Runs `scripts/<script> ARGS` in the project's Python (`.venv/bin/python`) with TZ=UTC (so that
/// `strftime_now` in Python and in Rust read the same date); panics with its stderr if it fails, and with what
/// to run when the environment is missing.
pub fn run_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash scripts/setup.sh` (it creates .venv with transformers, tokenizers, \
         sentencepiece, gguf)",
        python.display()
    );
    let out = std::process::Command::new(&python)
        .arg(root.join("scripts").join(script))
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{script} failed (`bash scripts/setup.sh` installs what it needs):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fixture folder `CARGO_TARGET_TMPDIR/<name>`, made afresh by `scripts/<script> <dir>`, with its
/// `expected.json`.
pub fn make_fixture(script: &str, name: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    run_script(script, &[&dir]);
    let expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    Fixture { dir, expected }
}

/// `scripts/make_bpe_fixture.py` run into `CARGO_TARGET_TMPDIR/bpe-fixture-<tag>` once per process.
pub fn fixture(tag: &str) -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| make_fixture("make_bpe_fixture.py", &format!("bpe-fixture-{tag}")))
}

/// A copy of `file`'s metadata (no tensors) with `changes` applied — `(key, Some(value))` sets or adds
/// a key, `(key, None)` removes it — written to `path` and opened.
pub fn mutated(file: &GgufFile, path: &Path, changes: &[(&str, Option<GgufValue>)]) -> GgufFile {
    let mut writer = GgufWriter::new();
    for (key, value) in file.metadata() {
        match changes.iter().find(|(k, _)| k == key) {
            Some((_, Some(new))) => writer.add_metadata(key.clone(), new.clone()).unwrap(),
            Some((_, None)) => {}
            None => writer.add_metadata(key.clone(), value.clone()).unwrap(),
        }
    }
    for (key, value) in changes {
        if let (None, Some(value)) = (file.get(key), value) {
            writer.add_metadata(key.to_string(), value.clone()).unwrap();
        }
    }
    writer.write(path).unwrap();
    GgufFile::open(path).unwrap()
}

/// A GGUF string array.
pub fn strings(values: &[String]) -> GgufValue {
    GgufValue::Array {
        elem: GgufValueType::String,
        values: values.iter().map(|s| GgufValue::String(s.clone())).collect(),
    }
}

/// A JSON array of token ids (as the fixture scripts write them).
pub fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}
