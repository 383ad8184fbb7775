//! Writing an artifact (a file or a folder) so that its final name only ever holds a complete one.
//!
//! Every artifact the crate writes goes through here: GGUF files ([`crate::gguf::GgufWriter::write`]),
//! Hugging Face folders (`models::gemma::export::save_pretrained`),
//! trainer checkpoints and their `latest` pointer (`train::checkpoint::save`) and the reference cache
//! (`train::ReferenceCache::save`).
//!
//! # What is guaranteed
//! - **Checked first.** The path is checked before anything is written ([`check_file_target`],
//!   [`check_dir_target`]): an empty path, one that names no entry (`..`, `/`), one whose parent folder
//!   does not exist, and an entry of the wrong kind at the target are an [`InputError::InvalidPath`].
//! - **Temporary beside the target.** The content is written into a temporary entry in the target's
//!   folder, named `.tmp-tch-rpo-<pid>-<n>-<role>-<target name>` ([`TMP_PREFIX`]; `<n>` counts the
//!   writes of the process, `<role>` is `new`, or `old` for a folder being replaced).
//! - **Durable before visible.** Every file is fsynced (for a folder, every file in it and the folder
//!   itself), then the temporary is renamed to the final name, then the parent folder is fsynced.
//! - **Never a partial artifact.** A write that fails removes its temporary. A process killed at any
//!   moment leaves under the final name either the previous complete artifact or the new complete one
//!   (or nothing, if there was none before); at most a temporary is left beside it.
//! - **Replacing a folder.** On Linux (glibc) the new folder and the old one are swapped in one step
//!   (`renameat2` with `RENAME_EXCHANGE`), so the final name is never empty. Where the file system or
//!   platform does not support that, the old folder is first renamed aside (a moment in which the final
//!   name holds nothing, never a partial folder), the new one renamed in, the old one removed.
//! - **Stale temporaries are swept.** After a completed write, temporaries of the same target left by
//!   writers that no longer run (killed, crashed) are removed ([`remove_stale_temporaries`]). Whether a
//!   writer still runs is read from `/proc/<pid>`, so this sweep happens on Linux only; elsewhere stale
//!   temporaries stay until removed by hand.
//!
//! One writer per target at a time: two processes writing the same target concurrently each leave a
//! complete artifact, the last rename wins.

use crate::error::{Error, InputError, Result};
use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The prefix of every temporary entry written beside a target.
pub const TMP_PREFIX: &str = ".tmp-tch-rpo-";

/// What [`write_dir`] does with a folder that already exists at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExistingDir {
    /// Refuse any existing entry ([`InputError::InvalidPath`]).
    Refuse,
    /// Replace a folder that holds only plain files (an earlier export) as a whole; refuse one holding a
    /// subfolder, a symbolic link or anything else that is not a plain file, rather than delete it.
    ReplaceFiles,
}

/// The number of temporaries this process has named.
static COUNTER: AtomicU64 = AtomicU64::new(0);
/// The temporaries this process is writing now (not swept as stale).
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn invalid(arg: &'static str, path: &Path, reason: impl Into<String>) -> Error {
    Error::Input(InputError::InvalidPath {
        arg,
        path: path.display().to_string(),
        reason: reason.into(),
    })
}

/// The folder holding `target` (`.` for a bare name).
fn parent_of(target: &Path) -> &Path {
    match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The checks both kinds of target share: not empty, names an entry, its parent folder exists.
fn check_common(target: &Path, arg: &'static str) -> Result<()> {
    if target.as_os_str().is_empty() {
        return Err(invalid(arg, target, "is empty: name the file or folder to write"));
    }
    if target.file_name().is_none() {
        return Err(invalid(
            arg,
            target,
            "does not name a file or folder (it ends in `..` or is a root)",
        ));
    }
    let parent = parent_of(target);
    match fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(invalid(
            arg,
            target,
            format!("has a parent `{}` that is not a folder", parent.display()),
        )),
        Err(e) => Err(invalid(
            arg,
            target,
            format!(
                "has a parent folder `{}` that cannot be used ({e}): create it first",
                parent.display()
            ),
        )),
    }
}

/// Checks that a file can be written to `target`: as [`write_file`] does before writing anything.
///
/// # Errors
/// [`InputError::InvalidPath`] (naming `arg`) if `target` is empty, names no entry (`..`, `/`), its parent
/// folder does not exist or is not a folder, or `target` is a directory.
pub fn check_file_target(target: &Path, arg: &'static str) -> Result<()> {
    check_common(target, arg)?;
    if fs::metadata(target).is_ok_and(|meta| meta.is_dir()) {
        return Err(invalid(arg, target, "is a directory, not a file"));
    }
    Ok(())
}

/// Checks that a folder can be written to `target` under `existing`: as [`write_dir`] does before writing
/// anything.
///
/// # Errors
/// [`InputError::InvalidPath`] (naming `arg`) if `target` is empty, names no entry, its parent folder does not
/// exist or is not a folder, `target` is a file or a symbolic link, or an existing folder there may not be
/// replaced ([`ExistingDir::Refuse`]: any; [`ExistingDir::ReplaceFiles`]: one holding a subfolder, a
/// link or another entry that is not a plain file, named in the message). [`Error::Io`] if an existing
/// folder cannot be listed.
pub fn check_dir_target(target: &Path, arg: &'static str, existing: ExistingDir) -> Result<()> {
    check_common(target, arg)?;
    let meta = match fs::symlink_metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(target, e)),
    };
    if meta.file_type().is_symlink() {
        return Err(invalid(
            arg,
            target,
            "is a symbolic link: refusing to replace it with a folder",
        ));
    }
    if !meta.is_dir() {
        return Err(invalid(arg, target, "is a file, not a folder"));
    }
    if existing == ExistingDir::Refuse {
        return Err(invalid(arg, target, "already exists"));
    }
    for entry in fs::read_dir(target).map_err(|e| Error::io(target, e))? {
        let entry = entry.map_err(|e| Error::io(target, e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if !kind.is_file() {
            let what = if kind.is_dir() {
                "a subfolder"
            } else if kind.is_symlink() {
                "a symbolic link"
            } else {
                "not a plain file"
            };
            return Err(invalid(
                arg,
                target,
                format!(
                    "holds `{}`, {what}: refusing to replace a folder with content an export does not write \
                     (move it away or choose another path)",
                    entry.file_name().to_string_lossy()
                ),
            ));
        }
    }
    Ok(())
}

/// A fresh temporary path beside `target`, registered as in flight.
fn temporary(target: &Path, role: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = OsString::from(format!("{TMP_PREFIX}{}-{n}-{role}-", std::process::id()));
    name.push(target.file_name().unwrap_or_default());
    let path = parent_of(target).join(name);
    in_flight(|list| list.push(path.clone()));
    path
}

fn in_flight<T>(f: impl FnOnce(&mut Vec<PathBuf>) -> T) -> T {
    let mut list = IN_FLIGHT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut list)
}

/// Removes `path` (file or folder, if it exists) and unregisters it; errors are ignored (cleanup).
fn discard(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
    in_flight(|list| list.retain(|p| p != path));
}

/// fsyncs a file or a folder.
fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// fsyncs every file and folder under `dir`, then `dir`.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            sync(&entry.path())?;
        }
    }
    sync(dir)
}

/// Writes the file `target` through `fill`, which gets the new, empty temporary file to write into (see
/// the [module docs](self) for the guarantees). Returns what `fill` returns.
///
/// # Errors
/// As [`check_file_target`] before anything is written; what `fill` returns; [`Error::Io`] if the file
/// cannot be created, fsynced or renamed into place. On every error the temporary is removed.
pub fn write_file<T>(
    target: &Path,
    arg: &'static str,
    fill: impl FnOnce(&mut File) -> Result<T>,
) -> Result<T> {
    write_file_at(target, arg, |tmp| {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .open(tmp)
            .map_err(|e| Error::io(tmp, e))?;
        fill(&mut file)
    })
}

/// Writes the file `target` through `fill`, which gets the path of the temporary file to create and write
/// (for writers that take a path, such as `Tensor::write_safetensors`); otherwise as [`write_file`].
///
/// # Errors
/// As [`write_file`]; [`Error::Io`] if `fill` returned without creating the file.
pub fn write_file_at<T>(
    target: &Path,
    arg: &'static str,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    check_file_target(target, arg)?;
    let tmp = temporary(target, "new");
    let written = fill(&tmp).and_then(|value| {
        sync(&tmp)?;
        fs::rename(&tmp, target).map_err(|e| Error::io(target, e))?;
        sync(parent_of(target))?;
        Ok(value)
    });
    discard(&tmp);
    if written.is_ok() {
        let _ = remove_stale_temporaries(target);
    }
    written
}

/// Writes the folder `target` through `fill`, which gets the new, empty temporary folder to fill (see the
/// [module docs](self) for the guarantees, `existing` for what happens to a folder already at `target`).
/// Returns what `fill` returns.
///
/// # Errors
/// As [`check_dir_target`] before anything is written (and again just before an existing folder is
/// replaced); what `fill` returns; [`Error::Io`] if the folder cannot be created, fsynced or renamed into
/// place. On every error the temporary is removed and an existing folder at `target` is left as it was.
pub fn write_dir<T>(
    target: &Path,
    arg: &'static str,
    existing: ExistingDir,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    check_dir_target(target, arg, existing)?;
    let tmp = temporary(target, "new");
    let written = fs::create_dir(&tmp)
        .map_err(|e| Error::io(&tmp, e))
        .and_then(|()| fill(&tmp))
        .and_then(|value| {
            sync_tree(&tmp)?;
            install_dir(&tmp, target, arg, existing)?;
            Ok(value)
        });
    discard(&tmp);
    if written.is_ok() {
        let _ = remove_stale_temporaries(target);
    }
    written
}

/// Moves the complete folder `tmp` to `target`; an existing folder there ends up at `tmp` (then removed
/// by the caller's cleanup) or at an `old` temporary removed here.
fn install_dir(tmp: &Path, target: &Path, arg: &'static str, existing: ExistingDir) -> Result<()> {
    let parent = parent_of(target);
    if fs::symlink_metadata(target).is_err() {
        fs::rename(tmp, target).map_err(|e| Error::io(target, e))?;
        return sync(parent);
    }
    check_dir_target(target, arg, existing)?;
    match exchange(tmp, target) {
        // `tmp` now holds the old folder: the caller removes it.
        Ok(()) => return sync(parent),
        Err(e) if !exchange_unsupported(&e) => return Err(Error::io(target, e)),
        Err(_) => {}
    }
    let aside = temporary(target, "old");
    fs::rename(target, &aside).map_err(|e| Error::io(target, e))?;
    if let Err(e) = fs::rename(tmp, target) {
        let _ = fs::rename(&aside, target);
        in_flight(|list| list.retain(|p| p != &aside));
        return Err(Error::io(target, e));
    }
    let synced = sync(parent);
    discard(&aside);
    synced
}

/// Swaps the entries `a` and `b` in one step (`renameat2(…, RENAME_EXCHANGE)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::raw::{c_char, c_int, c_uint};
    use std::os::unix::ffi::OsStrExt;
    extern "C" {
        fn renameat2(
            old_dir: c_int,
            old_path: *const c_char,
            new_dir: c_int,
            new_path: *const c_char,
            flags: c_uint,
        ) -> c_int;
    }
    const AT_FDCWD: c_int = -100;
    const RENAME_EXCHANGE: c_uint = 1 << 1;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; glibc ≥ 2.28 provides
    // `renameat2`, which reads them and touches no other memory.
    let rc = unsafe { renameat2(AT_FDCWD, a.as_ptr(), AT_FDCWD, b.as_ptr(), RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// No one-step swap here: always the rename-aside path.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Whether `exchange` failed because the kernel or file system cannot swap (EINVAL, ENOSYS, EOPNOTSUPP).
fn exchange_unsupported(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Unsupported || matches!(e.raw_os_error(), Some(22 | 38 | 95))
}

/// The writer's process id and the target name of a temporary's file name.
fn parse_temporary(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(TMP_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (counter, rest) = rest.split_once('-')?;
    let (role, target) = rest.split_once('-')?;
    if !counter.bytes().all(|b| b.is_ascii_digit()) || !matches!(role, "new" | "old") {
        return None;
    }
    Some((pid.parse().ok()?, target))
}

/// Whether process `pid` runs (Linux: `/proc/<pid>` exists; elsewhere always assumed).
fn process_runs(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporaries of `target` (see [`TMP_PREFIX`]) beside it that no writer is using: those of
/// processes that no longer run, and those of this process that no write of it has in flight. Returns
/// how many were removed. [`write_file`] and [`write_dir`] call it after each completed write.
///
/// # Errors
/// [`InputError::InvalidPath`] if `target` names no entry; [`Error::Io`] if the folder cannot be listed or a
/// temporary cannot be removed.
pub fn remove_stale_temporaries(target: &Path) -> Result<usize> {
    let Some(target_name) = target.file_name() else {
        return Err(invalid("target", target, "does not name a file or folder"));
    };
    let target_name = target_name.to_string_lossy();
    let parent = parent_of(target);
    let own = std::process::id();
    let mut removed = 0;
    for entry in fs::read_dir(parent).map_err(|e| Error::io(parent, e))? {
        let entry = entry.map_err(|e| Error::io(parent, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, of)) = parse_temporary(&name) else {
            continue;
        };
        let path = entry.path();
        let stale = if pid == own {
            in_flight(|list| !list.contains(&path))
        } else {
            !process_runs(pid)
        };
        if of != target_name || !stale {
            continue;
        }
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        let gone = if kind.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        gone.map_err(|e| Error::io(&path, e))?;
        removed += 1;
    }
    Ok(removed)
}
