//! Embeds an rpath to libtorch's `lib/` folder in this crate's own tests, examples and benches, so they
//! run without `LD_LIBRARY_PATH`. torch-sys exports the folder as `DEP_TCH_LIBTORCH_LIB` to crates that
//! depend on it directly. `--no-as-needed -ltorch` keeps libtorch (and through it libtorch_cuda) linked
//! even when no symbol of it is referenced directly, so CUDA is available at run time.
//! `rustc-link-arg` does not propagate to dependent crates: see the README for what they need.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath={lib_dir}");
        if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
        }
    }
}
