//! The atomic-write helper (`tch_rpo::atomic`): refused paths write nothing, every failure removes its
//! temporary, a folder replaces an earlier one whole, stale temporaries of dead writers are swept.

use std::io::Write;
use std::path::{Path, PathBuf};
use tch_rpo::atomic::{self, ExistingDir, TMP_PREFIX};
use tch_rpo::Error;
use tch_rpo::{DataError, InputError};

/// A fresh folder under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tch-rpo-atomic-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Every entry of the folder, sorted.
    fn entries(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_text(target: &Path, text: &str) -> tch_rpo::Result<()> {
    atomic::write_file(target, "target", |file| {
        file.write_all(text.as_bytes()).map_err(|e| Error::io(target, e))
    })
}

fn invalid_reason(e: Error) -> String {
    match e {
        Error::Input(InputError::InvalidPath { arg, reason, .. }) => {
            assert_eq!(arg, "target");
            reason
        }
        other => panic!("expected InputError::InvalidPath, got {other:?}"),
    }
}

#[test]
fn a_file_is_written_and_replaced_whole() {
    let dir = Scratch::new("file");
    let target = dir.path("a.bin");
    write_text(&target, "first").unwrap();
    write_text(&target, "second").unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "second");
    assert_eq!(dir.entries(), ["a.bin"]);
}

#[test]
fn refused_paths_write_nothing() {
    let dir = Scratch::new("refused");
    let reason = invalid_reason(write_text(Path::new(""), "x").unwrap_err());
    assert!(reason.contains("is empty"), "{reason}");
    let reason = invalid_reason(write_text(&dir.path("missing/a.bin"), "x").unwrap_err());
    assert!(reason.contains("create it first"), "{reason}");
    let reason = invalid_reason(write_text(&dir.path(".."), "x").unwrap_err());
    assert!(reason.contains("does not name"), "{reason}");
    std::fs::create_dir(dir.path("d")).unwrap();
    let reason = invalid_reason(write_text(&dir.path("d"), "x").unwrap_err());
    assert!(reason.contains("is a directory"), "{reason}");
    std::fs::write(dir.path("f"), "file").unwrap();
    let e = atomic::write_dir(&dir.path("f"), "target", ExistingDir::ReplaceFiles, |_| Ok(()));
    assert!(invalid_reason(e.unwrap_err()).contains("is a file"));
    let e = atomic::write_dir(&dir.path("d"), "target", ExistingDir::Refuse, |_| Ok(()));
    assert!(invalid_reason(e.unwrap_err()).contains("already exists"));
    assert_eq!(dir.entries(), ["d", "f"]);
}

#[test]
fn a_failed_fill_removes_its_temporary() {
    let dir = Scratch::new("failed");
    let target = dir.path("a.bin");
    write_text(&target, "good").unwrap();
    let e = atomic::write_file(&target, "target", |file| {
        file.write_all(b"half").unwrap();
        Err::<(), _>(Error::Data(DataError::Tokenizer("fill failed".into())))
    });
    assert!(matches!(e, Err(Error::Data(DataError::Tokenizer(_)))));
    let e = atomic::write_dir(&dir.path("d"), "target", ExistingDir::ReplaceFiles, |tmp| {
        std::fs::write(tmp.join("x"), "half").unwrap();
        Err::<(), _>(Error::Data(DataError::Tokenizer("fill failed".into())))
    });
    assert!(matches!(e, Err(Error::Data(DataError::Tokenizer(_)))));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "good");
    assert_eq!(dir.entries(), ["a.bin"]);
}

#[test]
fn a_failed_rename_removes_its_temporary() {
    // The target becomes a non-empty directory while the file is written: the rename fails.
    let dir = Scratch::new("rename");
    let target = dir.path("a.bin");
    let e = atomic::write_file(&target, "target", |file| {
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("inside"), "x").unwrap();
        file.write_all(b"content").map_err(|e| Error::io("tmp", e))
    })
    .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert_eq!(dir.entries(), ["a.bin"]);
    assert!(target.join("inside").is_file());
}

#[test]
fn a_folder_replaces_an_earlier_one_whole_and_refuses_subfolders() {
    let dir = Scratch::new("folder");
    let target = dir.path("export");
    let fill = |files: &'static [&'static str]| {
        move |tmp: &Path| -> tch_rpo::Result<()> {
            for name in files {
                std::fs::write(tmp.join(name), name).unwrap();
            }
            Ok(())
        }
    };
    atomic::write_dir(&target, "target", ExistingDir::ReplaceFiles, fill(&["a", "b"])).unwrap();
    atomic::write_dir(&target, "target", ExistingDir::ReplaceFiles, fill(&["c"])).unwrap();
    let names: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["c"]);
    std::fs::create_dir(target.join("sub")).unwrap();
    let e = atomic::write_dir(&target, "target", ExistingDir::ReplaceFiles, fill(&["d"])).unwrap_err();
    assert!(invalid_reason(e).contains("`sub`, a subfolder"));
    assert!(target.join("c").is_file() && target.join("sub").is_dir());
    assert_eq!(dir.entries(), ["export"]);
}

/// Linux only: elsewhere the helper cannot tell whether a writer still runs and sweeps nothing.
#[cfg(target_os = "linux")]
#[test]
fn stale_temporaries_of_dead_writers_are_swept() {
    let dir = Scratch::new("sweep");
    let target = dir.path("a.bin");
    // A process id above the kernel's limit (4194304) never runs.
    let dead = dir.path(&format!("{TMP_PREFIX}4194305-0-new-a.bin"));
    let dead_dir = dir.path(&format!("{TMP_PREFIX}4194305-1-old-a.bin"));
    let other_target = dir.path(&format!("{TMP_PREFIX}4194305-2-new-b.bin"));
    std::fs::write(&dead, "partial").unwrap();
    std::fs::create_dir(&dead_dir).unwrap();
    std::fs::write(&other_target, "partial").unwrap();
    write_text(&target, "done").unwrap();
    let mut want = vec!["a.bin".to_string(), format!("{TMP_PREFIX}4194305-2-new-b.bin")];
    want.sort();
    assert_eq!(dir.entries(), want, "only the temporaries of `a.bin` are swept");
    assert_eq!(atomic::remove_stale_temporaries(&dir.path("b.bin")).unwrap(), 1);
    assert_eq!(dir.entries(), ["a.bin"]);
}
