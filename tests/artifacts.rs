//! Artifacts survive being killed mid-write (issue 18): a child process — this test binary, re-entered
//! through `writer_child` with `TCH_RPO_ARTIFACT_WRITER=<kind>:<path>` — writes one artifact over and over
//! (a GGUF file, a `save_pretrained` folder, a trainer checkpoint, a reference cache) and is SIGKILLed at
//! random moments. After each kill the final name holds a complete artifact that loads and equals what
//! one generation of the writer wrote (or nothing); after a later completed write no temporary is left.
//! Also: refused paths write nothing, a rename that fails leaves no temporary.
#![cfg(feature = "gemma")]

mod export_support;

use export_support::TempDir;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};
use tch_rpo::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use tch_rpo::models::gemma::export::{save_gguf, save_pretrained, TokenizerSource};
use tch_rpo::models::gemma::{Gemma, GemmaConfig, LoadOptions, WeightSource};
use tch_rpo::train::checkpoint::{self, CheckpointData};
use tch_rpo::train::{var_store_parameters, ReferenceCache};

/// The environment variable that turns `writer_child` into a writer: `<kind>:<path>`.
const CHILD_ENV: &str = "TCH_RPO_ARTIFACT_WRITER";
/// The first generation the child writes.
const FIRST_ENV: &str = "TCH_RPO_ARTIFACT_FIRST";
/// Kills per artifact kind.
const KILLS: u64 = 5;
/// Values in a GGUF tensor, a checkpoint tensor and a reference cache (a write takes some milliseconds).
const VALUES: usize = 1 << 19;

/// The value `i` of generation `n` (exact in f32 and f64).
fn value(n: u64, i: usize) -> f64 {
    (n % 1000) as f64 * 1000.0 + (i % 997) as f64
}

fn values_f32(n: u64) -> Vec<f32> {
    (0..VALUES).map(|i| value(n, i) as f32).collect()
}

fn values_f64(n: u64) -> Vec<f64> {
    (0..VALUES).map(|i| value(n, i)).collect()
}

fn tiny_config() -> GemmaConfig {
    let text = r#"{
        "model_type": "gemma3_text", "vocab_size": 8192, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "rms_norm_eps": 1e-6, "max_position_embeddings": 512,
        "query_pre_attn_scalar": 256, "sliding_window": 4,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
        "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1
    }"#;
    GemmaConfig::from_json_str(text, Path::new("tiny")).unwrap()
}

/// The tiny model's parameters in generation `n`: parameter `k` filled with `value(n, k)` (names and
/// shapes read from a model built once, so that a writer spends its time writing).
fn tiny_parameters(n: u64) -> Vec<(String, Tensor)> {
    static SHAPES: OnceLock<Vec<(String, Vec<i64>)>> = OnceLock::new();
    let shapes = SHAPES.get_or_init(|| {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        Gemma::random(&vs.root(), &tiny_config()).unwrap();
        var_store_parameters(&vs)
            .into_iter()
            .map(|(name, t)| (name, t.size()))
            .collect()
    });
    shapes
        .iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let t = Tensor::full(shape.as_slice(), value(n, k), (Kind::Float, Device::Cpu));
            (name.clone(), t)
        })
        .collect()
}

/// Writes generation `n` of artifact `kind` at `path`.
fn write(kind: &str, path: &Path, n: u64) {
    match kind {
        "gguf" => {
            let mut w = GgufWriter::new();
            w.add_metadata("test.generation", GgufValue::U64(n)).unwrap();
            let t = Tensor::from_slice(&values_f32(n));
            w.add_tensor("w", &t, GgmlType::F32).unwrap();
            w.write(path).unwrap();
        }
        "folder" => save_pretrained(
            path,
            &tiny_config(),
            &tiny_parameters(n),
            Kind::Float,
            TokenizerSource::None,
        )
        .unwrap(),
        "checkpoint" => {
            let data = CheckpointData {
                step: n,
                model: vec![("w".into(), Tensor::from_slice(&values_f32(n)))],
                optimizer: vec![("m/w".into(), Tensor::from_slice(&values_f32(n + 1)))],
                reference: Vec::new(),
                state: json!({ "generation": n }),
            };
            checkpoint::save(path, &data).unwrap();
        }
        "reference" => {
            let cache = ReferenceCache::from_values(values_f64(n), values_f64(n + 1)).unwrap();
            cache.save(path).unwrap();
        }
        other => panic!("unknown artifact kind {other}"),
    }
}

fn f32_values(t: &Tensor) -> Vec<f32> {
    let t = t.to_kind(Kind::Float).flatten(0, -1);
    let mut out = vec![0f32; t.numel()];
    t.copy_data(&mut out, t.numel());
    out
}

/// Loads the artifact `kind` at `path` and checks it is one whole generation; returns it (`None`: absent).
fn check(kind: &str, path: &Path) -> Option<u64> {
    let exists = match kind {
        "checkpoint" => checkpoint::latest(path).unwrap().is_some(),
        _ => path.exists(),
    };
    if !exists {
        return None;
    }
    let n = match kind {
        "gguf" => {
            let file = GgufFile::open(path).unwrap();
            let n = file.get_u64("test.generation").unwrap();
            assert!(
                file.tensor_f32("w").unwrap() == values_f32(n),
                "GGUF generation {n}: wrong values"
            );
            n
        }
        "folder" => {
            let (vs, _model) = Gemma::load(
                WeightSource::HfDir(path),
                &LoadOptions::new(Device::Cpu, Kind::Float),
            )
            .unwrap();
            let params = var_store_parameters(&vs);
            let n = f32_values(&params[0].1)[0] as u64 / 1000;
            for (k, (name, t)) in params.iter().enumerate() {
                let want = value(n, k) as f32;
                assert!(
                    f32_values(t).iter().all(|&x| x == want),
                    "folder generation {n}: `{name}` wrong"
                );
            }
            n
        }
        "checkpoint" => {
            for step in checkpoint::list(path).unwrap() {
                checkpoint::verify(&step).unwrap();
            }
            let loaded = checkpoint::load(&checkpoint::latest(path).unwrap().unwrap()).unwrap();
            let n = loaded.state["generation"].as_u64().unwrap();
            assert_eq!(f32_values(&loaded.model[0].1), values_f32(n));
            assert_eq!(f32_values(&loaded.optimizer[0].1), values_f32(n + 1));
            n
        }
        "reference" => {
            let cache = ReferenceCache::load(path).unwrap();
            let n = cache.get(0).unwrap().0 as u64 / 1000;
            assert_eq!(cache.len(), VALUES);
            for i in (0..VALUES).step_by(4099) {
                assert_eq!(cache.get(i), Some((value(n, i), value(n + 1, i))));
            }
            n
        }
        other => panic!("unknown artifact kind {other}"),
    };
    Some(n)
}

/// The names of temporaries (`.tmp-…`, or the old `….partial`) in `dir`.
/// The temporaries in `dir`; none when `dir` does not exist (a writer killed before it created its
/// checkpoint folder).
fn temporaries(dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".tmp-") || name.ends_with(".partial"))
        .collect()
}

/// Not a test on its own: the writer a kill test spawns (does nothing without `TCH_RPO_ARTIFACT_WRITER`).
#[test]
fn writer_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (kind, path) = spec.split_once(':').unwrap();
    let mut n: u64 = std::env::var(FIRST_ENV).unwrap().parse().unwrap();
    println!("start");
    loop {
        write(kind, Path::new(path), n);
        println!("wrote {n}");
        n += 1;
    }
}

/// Spawns the writer of `kind` at `path` `KILLS` times, kills it at a random moment (0–150 ms after it
/// starts writing: the first kill may land in the very first write), and checks what is left: nothing
/// before any write completed, else one whole generation; then writes once more here and checks that no
/// temporary is left.
fn kill_test(kind: &str, file_name: &str) {
    let dir = TempDir::new(&format!("kill-{kind}"));
    let path = dir.path(file_name);
    let temporaries_at = if kind == "checkpoint" {
        path.clone()
    } else {
        dir.path("")
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let (mut left_temporaries, mut completed) = (0, 0);
    for kill in 0..KILLS {
        let first = 100 * (kill + 1);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{kind}:{}", path.display()))
            .env(FIRST_ENV, first.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = Instant::now();
        while !lines
            .next()
            .expect("the writer ended before starting")
            .unwrap()
            .ends_with("start")
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the writer never started"
            );
        }
        // Keep reading what the writer prints (so that it never blocks on a full pipe), counting the
        // writes it completed.
        let drain = std::thread::spawn(move || {
            lines
                .map_while(|line| line.ok())
                .filter(|line| line.contains("wrote "))
                .count()
        });
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(rng % 150));
        child.kill().unwrap();
        child.wait().unwrap();
        completed += drain.join().unwrap();
        match check(kind, &path) {
            Some(n) => assert!(n >= 100, "{kind}: generation {n} was never written"),
            None => assert_eq!(
                completed, 0,
                "{kind}: nothing under the final name after a complete write"
            ),
        }
        left_temporaries += usize::from(!temporaries(&temporaries_at).is_empty());
    }
    eprintln!(
        "{kind}: {KILLS} kills (seed {seed}) after {completed} complete writes, {left_temporaries} left a \
         temporary"
    );
    write(kind, &path, 7);
    assert_eq!(check(kind, &path), Some(7));
    let stray = temporaries(&temporaries_at);
    assert!(
        stray.is_empty(),
        "{kind}: stray temporaries after a completed write: {stray:?}"
    );
}

#[test]
fn killed_gguf_writes_leave_a_complete_file() {
    kill_test("gguf", "model.gguf");
}

#[test]
fn killed_save_pretrained_leaves_a_complete_folder() {
    kill_test("folder", "model");
}

#[test]
fn killed_checkpoint_saves_leave_a_complete_checkpoint() {
    kill_test("checkpoint", "checkpoints");
}

#[test]
fn killed_reference_cache_saves_leave_a_complete_cache() {
    kill_test("reference", "reference.safetensors");
}

#[test]
fn gguf_onto_a_directory_is_refused_and_leaves_no_temporary() {
    let dir = TempDir::new("gguf-onto-dir");
    let target = dir.path("model.gguf");
    std::fs::create_dir(&target).unwrap();
    let mut w = GgufWriter::new();
    w.add_tensor("w", &Tensor::from_slice(&values_f32(1)), GgmlType::F32)
        .unwrap();
    let e = w.write(&target).unwrap_err();
    assert!(
        matches!(e, tch_rpo::Error::Input(tch_rpo::InputError::InvalidPath { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("is a directory"), "{e}");
    assert!(
        temporaries(&dir.path("")).is_empty(),
        "{:?}",
        temporaries(&dir.path(""))
    );
    assert!(target.is_dir());
}

#[test]
fn save_gguf_with_an_empty_path_is_refused_before_writing() {
    let cwd = std::env::current_dir().unwrap();
    let before = temporaries(&cwd);
    let params = tiny_parameters(1);
    let e = save_gguf(
        Path::new(""),
        &tiny_config(),
        &params,
        GgmlType::F32,
        TokenizerSource::None,
    )
    .unwrap_err();
    assert!(
        matches!(e, tch_rpo::Error::Input(tch_rpo::InputError::InvalidPath { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("is empty"), "{e}");
    assert_eq!(
        temporaries(&cwd),
        before,
        "nothing is written in the working directory"
    );
}

#[test]
fn save_pretrained_replaces_an_export_but_refuses_a_folder_with_subfolders() {
    let dir = TempDir::new("replace-export");
    let target = dir.path("model");
    write("folder", &target, 1);
    std::fs::write(target.join("notes.txt"), "old").unwrap();
    write("folder", &target, 2);
    assert_eq!(check("folder", &target), Some(2));
    assert!(
        !target.join("notes.txt").exists(),
        "the folder is replaced as a whole"
    );
    std::fs::create_dir(target.join("keep")).unwrap();
    let e = save_pretrained(
        &target,
        &tiny_config(),
        &tiny_parameters(3),
        Kind::Float,
        TokenizerSource::None,
    )
    .unwrap_err();
    assert!(
        matches!(e, tch_rpo::Error::Input(tch_rpo::InputError::InvalidPath { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("`keep`, a subfolder"), "{e}");
    assert_eq!(
        check("folder", &target),
        Some(2),
        "the refused folder is untouched"
    );
    assert!(temporaries(&dir.path("")).is_empty());
    // A missing parent folder is refused.
    let e = save_pretrained(
        &dir.path("missing/model"),
        &tiny_config(),
        &tiny_parameters(3),
        Kind::Float,
        TokenizerSource::None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("create it first"), "{e}");
    assert!(!dir.path("missing").exists());
}
