//! A crate that depends on tch-rpo, built with a real `cargo build` and run: the set-up the README gives
//! for dependents works, finds libtorch through the binary's RUNPATH by real paths, and keeps CUDA.
//!
//! `tests/dependent/` (two binary crates, see its Cargo.toml) is copied under the target's `tmp/` folder
//! with its path dependency pointed at this checkout and this checkout's Cargo.lock, then built into the
//! same target folder with the same profile, so the dependencies compiled for this test run (torch-sys's
//! C++ wrapper above all) are reused: the build compiles two small binaries. `LD_LIBRARY_PATH` is removed
//! from every run unless a check sets it.
//!
//! On a machine whose libtorch is a CUDA build (PyPI's Linux wheel is, also without a GPU),
//! "CUDA linked" is checked by `libtorch_cuda.so` being loaded and libtorch having registered its CUDA
//! support (`tch::utils::has_cudart()`); whether a GPU is present does not matter.
#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tch_rpo::libtorch;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Copies `from` into `to` (files and folders), replacing the path dependency `"../../.."` by `repo`.
fn copy_crate(from: &Path, to: &Path, repo: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_crate(&entry.path(), &target, repo);
        } else {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let text = text.replace("path = \"../../..\"", &format!("path = {repo:?}"));
            // Leave an unchanged file's modification time alone: no rebuild on the next run.
            if std::fs::read_to_string(&target).ok().as_deref() != Some(text.as_str()) {
                std::fs::write(&target, text).unwrap();
            }
        }
    }
}

/// The built binaries of the dependent workspace, built once per test process.
struct Built {
    linked: PathBuf,
    runtime: PathBuf,
}

fn build() -> &'static Built {
    static BUILT: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let target_dir = tmp.parent().expect("CARGO_TARGET_TMPDIR is <target>/tmp");
        // This test binary lives in <target>/<profile dir>/deps/: build with the same profile.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let work = tmp.join("dependent-crate");
        copy_crate(&Path::new(REPO).join("tests/dependent"), &work, REPO);
        let lock = std::fs::read(Path::new(REPO).join("Cargo.lock")).unwrap();
        if std::fs::read(work.join("Cargo.lock")).ok() != Some(lock.clone()) {
            std::fs::write(work.join("Cargo.lock"), lock).unwrap();
        }

        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command
            .arg("build")
            .arg("--offline")
            .arg("--manifest-path")
            .arg(work.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir)
            // From the checkout, so that its .cargo/config.toml (LIBTORCH) applies as it did to this build.
            .current_dir(REPO)
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS");
        if release {
            command.arg("--release");
        }
        let started = std::time::Instant::now();
        let output = command.output().expect("run cargo");
        eprintln!(
            "dependent crate: cargo build took {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            output.status.success(),
            "building the dependent crate failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Built {
            linked: profile_dir.join("dependent-linked"),
            runtime: profile_dir.join("dependent-runtime"),
        }
    })
}

/// Runs `binary mode`, with `LD_LIBRARY_PATH` set to `ld_path` or removed.
fn run(binary: &Path, mode: &str, ld_path: Option<&Path>) -> Output {
    let mut command = Command::new(binary);
    command.arg(mode).env_remove("LD_LIBRARY_PATH");
    if let Some(dir) = ld_path {
        command.env("LD_LIBRARY_PATH", dir);
    }
    command.output().expect("run the dependent binary")
}

/// The `key=value` lines of a successful run.
fn report(output: &Output, what: &str) -> HashMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `readelf -d`'s NEEDED libraries and RUNPATH/RPATH folders of `binary`.
fn dynamic_section(binary: &Path) -> (Vec<String>, Vec<String>) {
    let output = Command::new("readelf")
        .arg("-d")
        .arg(binary)
        .output()
        .expect("run readelf (binutils, needed by the linker too)");
    assert!(output.status.success(), "readelf -d {} failed", binary.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let bracketed = |line: &str| {
        line.split_once('[')
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(v, _)| v.to_string())
    };
    let mut needed = Vec::new();
    let mut runpath = Vec::new();
    for line in text.lines() {
        if line.contains("(NEEDED)") {
            needed.extend(bracketed(line));
        } else if line.contains("(RUNPATH)") || line.contains("(RPATH)") {
            if let Some(paths) = bracketed(line) {
                runpath.extend(paths.split(':').map(str::to_string));
            }
        }
    }
    (needed, runpath)
}

/// libtorch's lib folder this test process loaded, a real path.
fn loaded_lib_dir() -> PathBuf {
    let info = libtorch::info().unwrap();
    info.lib_dir.expect("this test links libtorch dynamically")
}

#[test]
fn this_crate_reports_the_libtorch_it_loaded() {
    let info = libtorch::info().unwrap();
    let dir = info.lib_dir.clone().expect("libtorch_cpu.so is loaded");
    assert_eq!(dir.canonicalize().unwrap(), dir, "lib_dir is a real path");
    assert!(dir.join("libtorch_cpu.so").is_file());
    // build.rs resolved the `.libtorch` link: the folder the build embedded is the one loaded.
    assert_eq!(Path::new(libtorch::BUILD_LIB_DIR), dir);
    // This crate's own targets link libtorch with --no-as-needed: CUDA is linked when libtorch has it.
    assert_eq!(info.cuda_loaded, info.cuda_build, "{info:?}");
    assert_eq!(info.cuda_registered, info.cuda_build, "{info:?}");
    // Nothing to do for init_cuda, and it says the same.
    assert_eq!(libtorch::init_cuda().unwrap(), libtorch::info().unwrap());
}

#[test]
fn dependent_with_the_readme_build_rs_finds_libtorch_by_real_path_and_links_cuda() {
    let built = build();
    let lib_dir = loaded_lib_dir();
    let (needed, runpath) = dynamic_section(&built.linked);
    // The RUNPATH is libtorch's lib folder as a real path: no `.libtorch` / `.venv` link of the checkout
    // in it, so moving or deleting the checkout does not break the binary.
    assert!(
        runpath.iter().any(|p| Path::new(p) == lib_dir),
        "RUNPATH {runpath:?} lacks {}",
        lib_dir.display()
    );
    for path in &runpath {
        let real = Path::new(path).canonicalize().unwrap();
        assert_eq!(real, Path::new(path), "RUNPATH entry {path} is not a real path");
    }
    assert!(
        needed.iter().any(|n| n == "libtorch.so"),
        "NEEDED {needed:?} lacks libtorch.so"
    );

    let values = report(&run(&built.linked, "report", None), "dependent-linked report");
    assert_eq!(Path::new(&values["lib_dir"]), lib_dir, "{values:?}");
    assert_eq!(values["build_lib_dir"], libtorch::BUILD_LIB_DIR);
    assert_eq!(values["sum"], "6");
    let cuda_build = lib_dir.join("libtorch_cuda.so").exists();
    assert_eq!(values["cuda_build"], cuda_build.to_string());
    // CUDA is linked without any call: libtorch_cuda.so loaded, its CUDA support registered.
    assert_eq!(values["cuda_loaded"], cuda_build.to_string(), "{values:?}");
    assert_eq!(values["cuda_registered"], cuda_build.to_string(), "{values:?}");
}

#[test]
fn dependent_without_build_rs_needs_ld_library_path_and_init_cuda() {
    let built = build();
    let lib_dir = loaded_lib_dir();
    let cuda_build = lib_dir.join("libtorch_cuda.so").exists();
    let (needed, runpath) = dynamic_section(&built.runtime);
    assert!(!runpath.iter().any(|p| Path::new(p) == lib_dir), "{runpath:?}");
    // The linker dropped libtorch.so / libtorch_cuda.so (no symbol of theirs is referenced).
    assert!(
        !needed
            .iter()
            .any(|n| n == "libtorch.so" || n == "libtorch_cuda.so"),
        "{needed:?}"
    );

    // Without LD_LIBRARY_PATH it cannot start: the loader does not find libtorch.
    let bare = run(&built.runtime, "report", None);
    assert!(!bare.status.success());
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert!(
        stderr.contains("libtorch") || stderr.contains("libc10"),
        "{stderr}"
    );

    // With it, it starts, but without CUDA ...
    let values = report(
        &run(&built.runtime, "report", Some(&lib_dir)),
        "dependent-runtime report",
    );
    assert_eq!(Path::new(&values["lib_dir"]), lib_dir);
    assert_eq!(values["cuda_loaded"], "false", "{values:?}");
    assert_eq!(values["cuda_registered"], "false", "{values:?}");
    assert_eq!(values["sum"], "6");

    // ... until init_cuda() loads libtorch_cuda.so from the folder of the loaded libtorch_cpu.so.
    let values = report(
        &run(&built.runtime, "init", Some(&lib_dir)),
        "dependent-runtime init",
    );
    assert_eq!(values["cuda_loaded"], cuda_build.to_string(), "{values:?}");
    assert_eq!(values["cuda_registered"], cuda_build.to_string(), "{values:?}");
    assert_eq!(values["sum"], "6");

    // Asked too late (after libtorch decided CUDA is absent), init_cuda() says so instead of failing quietly.
    if cuda_build {
        let values = report(
            &run(&built.runtime, "late", Some(&lib_dir)),
            "dependent-runtime late",
        );
        assert_eq!(values["cuda_available_before"], "false");
        assert!(
            values["late_init"].starts_with("error: cannot load ")
                && values["late_init"].contains("already decided that CUDA is absent"),
            "{values:?}"
        );
        assert_eq!(values["cuda_registered"], "false", "{values:?}");
    }
}

/// `scripts/setup.sh --print-libtorch` on the environment the checkout's `.venv` links to (so that it never
/// installs a second one), with the output.
fn setup_print_libtorch() -> Output {
    Command::new("bash")
        .arg(Path::new(REPO).join("scripts/setup.sh"))
        .arg("--print-libtorch")
        .env("TCH_RPO_VENV", venv())
        .output()
        .expect("run bash")
}

/// The environment `scripts/setup.sh` made, a real path.
fn venv() -> PathBuf {
    Path::new(REPO)
        .join(".venv")
        .canonicalize()
        .expect("scripts/setup.sh has linked .venv")
}

#[test]
fn setup_print_libtorch_prints_the_real_torch_folder() {
    let output = setup_print_libtorch();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "setup.sh --print-libtorch failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Exactly one line on stdout: the torch folder, a real path, whose lib/ is the one this test loaded.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout: {stdout:?}");
    let torch = Path::new(lines[0]);
    assert_eq!(torch.canonicalize().unwrap(), torch);
    assert!(torch.join("include").is_dir());
    assert_eq!(torch.join("lib"), loaded_lib_dir());
}

#[test]
fn readme_shows_the_tested_build_rs() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let build_rs = include_str!("dependent/linked/build.rs");
    assert!(
        readme.contains(build_rs.trim_end()),
        "README.md's \"Using tch-rpo from another crate\" must show tests/dependent/linked/build.rs verbatim"
    );
}

#[test]
fn setup_waits_for_a_running_setup() {
    if Command::new("flock").arg("-V").output().is_err() {
        eprintln!("skipped: no flock(1) here; setup.sh then locks with a directory");
        return;
    }
    // Another set-up holds the environment's lock for 3 s (flock(1) running `sleep`).
    let lock = format!("{}.lock", venv().display());
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "3"])
        .spawn()
        .unwrap();
    let held = std::time::Instant::now();
    // Wait until it has the lock: a non-blocking attempt then fails.
    while Command::new("flock")
        .args(["-n", &lock, "true"])
        .status()
        .unwrap()
        .success()
    {
        assert!(held.elapsed().as_secs() < 10, "flock did not take {lock}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = setup_print_libtorch();
    let waited = held.elapsed();
    holder.wait().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("another set-up holds"), "{stderr}");
    assert!(
        waited.as_secs_f64() >= 2.9,
        "setup.sh returned after {waited:?}, while the lock was held 3 s"
    );
    assert_eq!(
        Path::new(String::from_utf8_lossy(&output.stdout).trim()).join("lib"),
        loaded_lib_dir()
    );
}
