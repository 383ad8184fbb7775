//! Crash-safe checkpoints with integrity checks.
//!
//! A checkpoint is a directory `step-NNNNNNNN` (a suffix `-k` if that name is taken) under the run's
//! checkpoint directory, holding:
//!
//! | file | content |
//! |---|---|
//! | `model.safetensors` | every model parameter, by its [`crate::train::PolicyModel::named_parameters`] name |
//! | `optimizer.safetensors` | AdamW state: `m/<name>`, `v/<name>` (f32), `master/<name>` (f32 master weights) |
//! | `trainer_state.json` | step, Adam step count, skipped steps, schedule, data position, seed |
//! | `reference.safetensors` | only with cached reference log-probs: `chosen`, `rejected` (f64 `[N]`) |
//! | `manifest.json` | format tag, and for each file above its size in bytes and FNV-1a 64 checksum |
//!
//! # Atomicity
//! Both the checkpoint folder and the pointer go through [`crate::atomic`]: everything is written into a
//! temporary directory (`.tmp-tch-rpo-…`, [`crate::atomic::TMP_PREFIX`]) next to the final one, the
//! manifest last; each file and the directory are fsynced, the directory is renamed to its final name, and
//! the parent is fsynced. Only then is the pointer file `latest` replaced the same way (temp file, fsync,
//! rename, fsync). A crash at any point leaves the previous checkpoint and pointer intact; an interrupted
//! save leaves at most a `.tmp-…` entry, which loading ignores and the next [`save`] into the same
//! directory removes (a failed save removes its own at once). One process saves into a directory at a
//! time.
//!
//! # Retention
//! [`prune`] keeps the newest `n` complete checkpoints (by step, then suffix) and always the one `latest`
//! points at; the trainer calls it after each save when `save_total_limit` is set.
//!
//! # Integrity
//! [`load`] refuses a checkpoint whose manifest is missing or unreadable, or a file whose size or checksum
//! differs from the manifest (a truncated or corrupted file), with a [`CheckpointError::Invalid`] naming it.
//! [`latest`] refuses a pointer that names anything but a directory directly inside the checkpoint
//! directory (`../x`, an absolute path, `a/b`).

use crate::error::{CheckpointError, Error, InputError, Result};
use serde_json::{json, Value};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The manifest's format tag.
pub const FORMAT: &str = "tch-rpo-checkpoint";
/// The manifest's format version.
pub const VERSION: u64 = 1;
/// The model weights file.
pub const MODEL_FILE: &str = "model.safetensors";
/// The optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";
/// The optional cached reference log-probs file.
pub const REFERENCE_FILE: &str = "reference.safetensors";
/// The manifest file.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The pointer file naming the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";

/// FNV-1a, 64 bits, of a file's bytes, read in blocks.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read.
pub fn file_checksum(path: &Path) -> Result<(u64, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len: u64 = 0;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        for &byte in &buffer[..n] {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        len += n as u64;
    }
    Ok((len, hash))
}

/// Writes `bytes` to the new file `path` (fsynced later, with its folder, by [`crate::atomic::write_dir`]).
fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let host: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, t)| {
            Ok((
                name.clone(),
                t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?,
            ))
        })
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&host, path)?;
    Ok(())
}

/// What [`save`] writes.
#[derive(Debug)]
pub struct CheckpointData {
    /// The optimizer step the checkpoint was taken after.
    pub step: u64,
    /// Model parameters by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state tensors by name.
    pub optimizer: Vec<(String, Tensor)>,
    /// Cached reference log-probs by name (empty: none, no file is written).
    pub reference: Vec<(String, Tensor)>,
    /// The trainer state (JSON object).
    pub state: Value,
}

/// Writes a checkpoint under `dir` atomically and points `dir/latest` at it; returns its path.
///
/// # Errors
/// [`CheckpointError::Invalid`] if `dir` exists but is not a directory; [`Error::Io`] if a file cannot be
/// written; [`Error::Torch`] if a tensor cannot be serialized.
pub fn save(dir: &Path, data: &CheckpointData) -> Result<PathBuf> {
    check_checkpoint_dir(dir)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_stale_temporaries(dir)?;
    let base = format!("step-{:08}", data.step);
    let mut name = base.clone();
    let mut k = 1;
    while dir.join(&name).exists() {
        name = format!("{base}-{k}");
        k += 1;
    }
    let final_path = dir.join(&name);
    crate::atomic::write_dir(
        &final_path,
        "checkpoint",
        crate::atomic::ExistingDir::Refuse,
        |tmp| write_into(tmp, data),
    )?;
    crate::atomic::write_file(&dir.join(LATEST_FILE), "checkpoint pointer", |file| {
        file.write_all(name.as_bytes())
            .map_err(|e| Error::io(dir.join(LATEST_FILE), e))
    })?;
    Ok(final_path)
}

/// The prefix of the temporary entries that [`save`] removes from the checkpoint directory before it
/// writes (those of [`crate::atomic::TMP_PREFIX`], which [`save`] writes, and those of earlier versions).
pub const TMP_PREFIX: &str = ".tmp-";

/// Removes every `.tmp-…` entry directly under `dir` (left by interrupted saves).
fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if !entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().map_err(|e| Error::io(&path, e))?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Writes the files of a checkpoint into the (new, empty) directory `tmp`, manifest last.
fn write_into(tmp: &Path, data: &CheckpointData) -> Result<()> {
    write_tensors(&tmp.join(MODEL_FILE), &data.model)?;
    write_tensors(&tmp.join(OPTIMIZER_FILE), &data.optimizer)?;
    let state = serde_json::to_vec_pretty(&data.state).map_err(|e| {
        Error::Checkpoint(CheckpointError::Invalid {
            path: tmp.display().to_string(),
            reason: format!("cannot serialize the trainer state: {e}"),
        })
    })?;
    write_bytes(&tmp.join(STATE_FILE), &state)?;
    let mut names = vec![MODEL_FILE, OPTIMIZER_FILE, STATE_FILE];
    if !data.reference.is_empty() {
        write_tensors(&tmp.join(REFERENCE_FILE), &data.reference)?;
        names.push(REFERENCE_FILE);
    }
    let mut files = Vec::new();
    for file in names {
        let (bytes, hash) = file_checksum(&tmp.join(file))?;
        files.push(json!({"name": file, "bytes": bytes, "fnv1a64": format!("{hash:016x}")}));
    }
    let manifest = json!({"format": FORMAT, "version": VERSION, "step": data.step, "files": files});
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(|e| {
        Error::Checkpoint(CheckpointError::Invalid {
            path: tmp.display().to_string(),
            reason: format!("cannot serialize the manifest: {e}"),
        })
    })?;
    write_bytes(&tmp.join(MANIFEST_FILE), &manifest)
}

/// What is at `path`, in words, for an error message: `None` for a directory (what a checkpoint path
/// must be), else "does not exist", "is a file" or what else it is.
fn not_a_directory(path: &Path) -> Option<String> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => None,
        Ok(meta) if meta.is_file() => Some("is a file, not a directory".to_string()),
        Ok(_) => Some("is not a directory".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::symlink_metadata(path) {
            Ok(_) => Some("is a symbolic link to nothing".to_string()),
            Err(_) => Some("does not exist".to_string()),
        },
        Err(e) => Some(format!("cannot be examined ({e})")),
    }
}

/// Refuses a run checkpoint directory `dir` that exists but is not a directory (a file, say): saving and
/// resuming would otherwise fail with the operating system's bare "File exists" / "Not a directory".
fn check_checkpoint_dir(dir: &Path) -> Result<()> {
    if fs::metadata(dir).is_ok_and(|meta| !meta.is_dir()) {
        return Err(Error::Checkpoint(CheckpointError::Invalid {
            path: dir.display().to_string(),
            reason: format!(
                "the checkpoint directory (checkpoint_dir) {}",
                not_a_directory(dir).unwrap_or_default()
            ),
        }));
    }
    Ok(())
}

/// `entry`, resolved through any symbolic links, if it stays inside `root` (also resolved); an
/// [`CheckpointError::Invalid`](crate::CheckpointError::Invalid) naming it otherwise. Checkpoints never contain links of their own: one that leads
/// elsewhere would make a load read (or a prune delete) files outside the checkpoint directory.
fn confined(root: &Path, entry: &Path) -> Result<PathBuf> {
    let resolve = |p: &Path| fs::canonicalize(p).map_err(|e| Error::io(p, e));
    let (root_real, entry_real) = (resolve(root)?, resolve(entry)?);
    if !entry_real.starts_with(&root_real) {
        return Err(Error::Checkpoint(CheckpointError::Invalid {
            path: entry.display().to_string(),
            reason: format!(
                "is a symbolic link to {}, outside {}: refused",
                entry_real.display(),
                root_real.display()
            ),
        }));
    }
    Ok(entry_real)
}

/// `(step, suffix)` of a checkpoint directory name `step-NNNNNNNN` or `step-NNNNNNNN-k`.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("step-")?;
    let (step, suffix) = match rest.split_once('-') {
        Some((step, k)) => (step, k.parse().ok()?),
        None => (rest, 0),
    };
    if step.is_empty() || !step.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((step.parse().ok()?, suffix))
}

/// The checkpoints directly under `dir` (directories named `step-…` holding a manifest), oldest first
/// (by step, then suffix). An entry that is a symbolic link leading outside `dir` is not a checkpoint.
///
/// # Errors
/// [`CheckpointError::Invalid`] if `dir` exists but is not a directory; [`Error::Io`] if it cannot be listed.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    check_checkpoint_dir(dir)?;
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(key) = parse_name(&name) {
            let path = entry.path();
            if path.join(MANIFEST_FILE).is_file() && confined(dir, &path).is_ok() {
                found.push((key, path));
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Deletes all but the newest `keep` checkpoints under `dir` (see [`list`]); the one `latest` points at
/// is never deleted (it counts towards `keep`). Returns the deleted paths.
///
/// # Errors
/// [`InputError::InvalidParameter`] if `keep` is 0; [`Error::Io`] if listing or deleting fails; as [`latest`].
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Err(Error::Input(InputError::InvalidParameter {
            name: "save_total_limit",
            value: keep.into(),
            requirement: "must be >= 1 (it keeps the newest checkpoints)",
        }));
    }
    let current = latest(dir)?;
    let mut all = list(dir)?;
    if let Some(current) = &current {
        all.retain(|p| p != current);
    }
    let excess = (all.len() + usize::from(current.is_some())).saturating_sub(keep);
    let mut deleted = Vec::new();
    for path in all.into_iter().take(excess) {
        fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// The checkpoint `dir/latest` points at, or `None` if there is no pointer yet.
///
/// # Errors
/// [`Error::Io`] if the pointer cannot be read; [`CheckpointError::Invalid`] if `dir` exists but is not a
/// directory, or the pointer names anything but one path component inside `dir` (`..`, `.`, an absolute
/// path, a `/`), an entry that does not exist or is not a directory, or a symbolic link leading outside
/// `dir` (each said as such).
pub fn latest(dir: &Path) -> Result<Option<PathBuf>> {
    check_checkpoint_dir(dir)?;
    let pointer = dir.join(LATEST_FILE);
    let name = match fs::read_to_string(&pointer) {
        Ok(name) => name,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&pointer, e)),
    };
    let mut components = Path::new(name.trim()).components();
    let inside = matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(_)), None)
    );
    if !inside {
        return Err(Error::Checkpoint(CheckpointError::Invalid {
            path: pointer.display().to_string(),
            reason: format!(
                "points at `{}`, which is not a directory name inside the checkpoint directory",
                name.trim()
            ),
        }));
    }
    let path = dir.join(name.trim());
    if let Some(what) = not_a_directory(&path) {
        return Err(Error::Checkpoint(CheckpointError::Invalid {
            path: pointer.display().to_string(),
            reason: format!("points at `{}`, which {what}", name.trim()),
        }));
    }
    confined(dir, &path)?;
    Ok(Some(path))
}

/// A checkpoint read back by [`load`] (tensors on the CPU).
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Its directory.
    pub path: PathBuf,
    /// Model parameters by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state tensors by name.
    pub optimizer: Vec<(String, Tensor)>,
    /// Cached reference log-probs by name (empty if the checkpoint has none).
    pub reference: Vec<(String, Tensor)>,
    /// The trainer state.
    pub state: Value,
}

/// Checks the manifest of the checkpoint at `path` (sizes and checksums of every file).
///
/// # Errors
/// [`CheckpointError::Invalid`] naming the problem: `path` missing or not a directory, no or unreadable
/// manifest, unknown format, a missing file (or a directory where a file should be), a symbolic link
/// leading outside the checkpoint, a size or checksum mismatch. Returns the names of the files the
/// manifest lists (all verified).
pub fn verify(path: &Path) -> Result<Vec<String>> {
    let bad = |reason: String| {
        Error::Checkpoint(CheckpointError::Invalid {
            path: path.display().to_string(),
            reason,
        })
    };
    if let Some(what) = not_a_directory(path) {
        return Err(bad(format!("the checkpoint {what}")));
    }
    let manifest_path = path.join(MANIFEST_FILE);
    if manifest_path.exists() {
        confined(path, &manifest_path)?;
    }
    let text = fs::read(&manifest_path).map_err(|e| {
        bad(format!(
            "cannot read `{MANIFEST_FILE}` ({e}): the checkpoint is incomplete or not one"
        ))
    })?;
    let manifest: Value = serde_json::from_slice(&text).map_err(|e| {
        bad(format!(
            "`{MANIFEST_FILE}` is not valid JSON ({e}): truncated or corrupted"
        ))
    })?;
    if manifest.get("format").and_then(Value::as_str) != Some(FORMAT)
        || manifest.get("version").and_then(Value::as_u64) != Some(VERSION)
    {
        return Err(bad(format!(
            "`{MANIFEST_FILE}` is not a {FORMAT} version {VERSION} manifest"
        )));
    }
    let files = manifest
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("`{MANIFEST_FILE}` lists no files")))?;
    for required in [MODEL_FILE, OPTIMIZER_FILE, STATE_FILE] {
        if !files
            .iter()
            .any(|f| f.get("name").and_then(Value::as_str) == Some(required))
        {
            return Err(bad(format!("`{MANIFEST_FILE}` does not list `{required}`")));
        }
    }
    let mut names = Vec::with_capacity(files.len());
    for entry in files {
        let (Some(name), Some(bytes), Some(hash)) = (
            entry.get("name").and_then(Value::as_str),
            entry.get("bytes").and_then(Value::as_u64),
            entry.get("fnv1a64").and_then(Value::as_str),
        ) else {
            return Err(bad(format!("`{MANIFEST_FILE}` has a malformed entry: {entry}")));
        };
        if name.contains('/') || name.contains("..") {
            return Err(bad(format!(
                "`{MANIFEST_FILE}` names a file outside the checkpoint: {name}"
            )));
        }
        let file = path.join(name);
        let meta = fs::metadata(&file).map_err(|e| bad(format!("`{name}` is missing ({e})")))?;
        if !meta.is_file() {
            return Err(bad(format!("`{name}` is not a file")));
        }
        confined(path, &file)?;
        let actual_len = meta.len();
        if actual_len != bytes {
            return Err(bad(format!(
                "`{name}` has {actual_len} bytes but the manifest says {bytes}: the file is truncated or was \
                 overwritten"
            )));
        }
        let (_, actual) = file_checksum(&file)?;
        if format!("{actual:016x}") != hash {
            return Err(bad(format!(
                "`{name}` has checksum {actual:016x} but the manifest says {hash}: the file is corrupted"
            )));
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Verifies ([`verify`]) and reads the checkpoint at `path`.
///
/// # Errors
/// As [`verify`]; [`CheckpointError::Invalid`] if a file cannot be parsed.
pub fn load(path: &Path) -> Result<LoadedCheckpoint> {
    let listed = verify(path)?.iter().any(|name| name == REFERENCE_FILE);
    let bad = |file: &str, e: &dyn std::fmt::Display| {
        Error::Checkpoint(CheckpointError::Invalid {
            path: path.display().to_string(),
            reason: format!("`{file}` cannot be read: {e}"),
        })
    };
    let model = Tensor::read_safetensors(path.join(MODEL_FILE)).map_err(|e| bad(MODEL_FILE, &e))?;
    let optimizer =
        Tensor::read_safetensors(path.join(OPTIMIZER_FILE)).map_err(|e| bad(OPTIMIZER_FILE, &e))?;
    let state_bytes = fs::read(path.join(STATE_FILE)).map_err(|e| bad(STATE_FILE, &e))?;
    let state: Value = serde_json::from_slice(&state_bytes).map_err(|e| bad(STATE_FILE, &e))?;
    let reference = if listed {
        Tensor::read_safetensors(path.join(REFERENCE_FILE)).map_err(|e| bad(REFERENCE_FILE, &e))?
    } else {
        Vec::new()
    };
    Ok(LoadedCheckpoint {
        path: path.to_path_buf(),
        model,
        optimizer,
        reference,
        state,
    })
}
