//! Finds libtorch's `lib/` folder (torch-sys exports it as `DEP_TCH_LIBTORCH_LIB`) and resolves it to a
//! real path, so nothing built here depends on the checkout's `.libtorch` link (moving or deleting the
//! checkout leaves built binaries working). Then:
//!
//! * exports it to crates that depend on tch-rpo directly, as `DEP_TCH_RPO_LIBTORCH_LIB` (the `links =
//!   "tch_rpo"` key in Cargo.toml), for the three-line `build.rs` the README shows;
//! * gives it to the library as `TCH_RPO_LIBTORCH_LIB` ([`tch_rpo::libtorch::BUILD_LIB_DIR`]);
//! * embeds it as the run-time search path (RUNPATH) of this crate's own tests, examples and benches, so they
//!   run without `LD_LIBRARY_PATH`, and links them with `--no-as-needed -ltorch`, which keeps libtorch (and
//!   through it `libtorch_cuda.so`) linked although no symbol of it is referenced: CUDA works at run time.
//!
//! `rustc-link-arg` does not propagate to dependent crates: that is what the exported folder is for.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(dir) => dir,
        Err(_) => {
            // torch-sys exports no folder when it links libtorch statically or on Windows.
            println!("cargo:rustc-env=TCH_RPO_LIBTORCH_LIB=");
            return;
        }
    };
    // A changed `.libtorch` link (a new environment) changes the target's modification time: rerun.
    println!("cargo:rerun-if-changed={lib_dir}");
    let real = match Path::new(&lib_dir).canonicalize() {
        Ok(real) => real.display().to_string(),
        Err(e) => {
            println!(
                "cargo:warning=libtorch's lib folder {lib_dir} cannot be resolved ({e}); using it as given"
            );
            lib_dir
        }
    };
    println!("cargo:rustc-env=TCH_RPO_LIBTORCH_LIB={real}");
    println!("cargo:libtorch_lib={real}");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "macos" {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{real}");
    }
    if os == "linux" {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch,--as-needed");
    }
}
