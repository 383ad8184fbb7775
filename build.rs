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
//!
//! With the `autograd` feature (implied by `train`) it also compiles the gradient shim `csrc/grad.cpp` (setting
//! and releasing a `.grad`), RMSNorm's and the embedding's autograd nodes `csrc/rms_norm.cpp`, `csrc/embedding.cpp`, the allocator `csrc/block_cache.cpp` (`tch_rpo::memory::BlockCache`) and the fused
//! head's bf16 row kernels `csrc/bf16_head.cpp` (always at `-O3`), and with
//! the `dist` feature the c10d shim `csrc/dist.cpp` (see [`dist::build`]), both against libtorch's headers
//! ([`shim`]).
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
    #[cfg(feature = "autograd")]
    {
        println!("cargo:rerun-if-changed=csrc/grad.cpp");
        println!("cargo:rerun-if-changed=csrc/block_cache.cpp");
        println!("cargo:rerun-if-changed=csrc/bf16_head.cpp");
        println!("cargo:rerun-if-changed=csrc/rms_norm.cpp");
        println!("cargo:rerun-if-changed=csrc/embedding.cpp");
        println!("cargo:rerun-if-changed=csrc/shim_error.h");
        let torch = shim::Torch::find();
        let mut build = torch.cpp_build();
        build
            .file("csrc/grad.cpp")
            .file("csrc/block_cache.cpp")
            .file("csrc/rms_norm.cpp")
            .file("csrc/embedding.cpp");
        build.compile("tch_rpo_grad");
        // The fused head's bf16 rows: vectorized loops, optimized in every profile.
        let mut kernels = torch.cpp_build();
        kernels
            .file("csrc/bf16_head.cpp")
            .opt_level(3)
            .flag_if_supported("-Wno-psabi");
        kernels.compile("tch_rpo_bf16_head");
        torch.link_cpu();
    }
    #[cfg(feature = "dist")]
    dist::build();
}

// ---- C++ shims against libtorch's headers (features `autograd`, `dist`) -----------------------------------
#[cfg(any(feature = "autograd", feature = "dist"))]
mod shim {
    use std::path::PathBuf;

    pub fn env(name: &str) -> Option<String> {
        println!("cargo:rerun-if-env-changed={name}");
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    /// libtorch's folders, as torch-sys found them.
    pub struct Torch {
        /// `<torch>/lib`, as torch-sys exported it (often through the `.libtorch` link).
        pub lib_dir: PathBuf,
        /// `<site-packages>/torch` (PyPI) or the libtorch folder, resolved.
        pub torch_dir: PathBuf,
    }

    impl Torch {
        pub fn find() -> Self {
            let lib_dir = PathBuf::from(
                env("DEP_TCH_LIBTORCH_LIB")
                    .expect("tch-rpo's C++ shims: torch-sys did not export DEP_TCH_LIBTORCH_LIB"),
            );
            let torch_dir = std::fs::canonicalize(&lib_dir)
                .unwrap_or_else(|_| lib_dir.clone())
                .parent()
                .expect("libtorch's lib folder has a parent")
                .to_path_buf();
            Self { lib_dir, torch_dir }
        }

        /// A C++17 build with libtorch's include folders and the ABI switch torch-sys uses (PyPI's torch
        /// 2.x: the C++11 ABI).
        pub fn cpp_build(&self) -> cc::Build {
            let include = self.torch_dir.join("include");
            let abi = env("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned());
            let mut build = cc::Build::new();
            build
                .cpp(true)
                .include(&include)
                .include(include.join("torch/csrc/api/include"))
                .flag("-std=c++17")
                .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
                .warnings(false);
            build
        }

        /// Links libtorch's CPU libraries (the shims' symbols).
        pub fn link_cpu(&self) {
            println!("cargo:rustc-link-search=native={}", self.lib_dir.display());
            for lib in ["torch_cpu", "c10", "torch"] {
                println!("cargo:rustc-link-lib=dylib={lib}");
            }
        }
    }
}

// ---- feature `dist`: the c10d shim (tch_rpo::dist) -------------------------------------------------------
#[cfg(feature = "dist")]
mod dist {
    use super::shim::env;
    use std::path::{Path, PathBuf};

    /// Gloo's headers (not in the torch wheel): `TCH_RPO_GLOO_INCLUDE`, else `.gloo/usr/include` in the
    /// repository (linked by scripts/setup.sh to Debian's libgloo-dev unpacked next to the venv), else the
    /// system's `/usr/include` when libgloo-dev is installed.
    fn gloo_include(manifest: &Path) -> PathBuf {
        let candidates = env("TCH_RPO_GLOO_INCLUDE")
            .map(PathBuf::from)
            .into_iter()
            .chain([manifest.join(".gloo/usr/include"), PathBuf::from("/usr/include")]);
        for dir in candidates {
            if dir.join("gloo/context.h").is_file() {
                return dir;
            }
        }
        panic!(
            "tch-rpo feature `dist`: gloo's headers were not found (set TCH_RPO_GLOO_INCLUDE, run \
             `bash scripts/setup.sh`, which unpacks Debian's libgloo-dev, or build without the `dist` feature)"
        );
    }

    /// The include folders NCCL's process group needs (nccl.h and the complete CUDA runtime headers), from
    /// torch's pip dependencies next to it, or `TCH_RPO_CUDA_INCLUDE` (colon-separated) added in front.
    fn nccl_includes(site_packages: &Path) -> Option<Vec<PathBuf>> {
        // Rebuild when setup.sh adds the missing headers.
        for d in ["nvidia/nccl/include", "nvidia/cu13/include"] {
            if site_packages.join(d).is_dir() {
                println!("cargo:rerun-if-changed={}", site_packages.join(d).display());
            }
        }
        let mut dirs: Vec<PathBuf> = env("TCH_RPO_CUDA_INCLUDE")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default();
        dirs.push(site_packages.join("nvidia/nccl/include"));
        dirs.push(site_packages.join("nvidia/cu13/include"));
        let needed = ["nccl.h", "cuda_runtime.h", "crt/host_config.h", "nv/target"];
        needed
            .iter()
            .all(|f| dirs.iter().any(|d| d.join(f).exists()))
            .then_some(dirs)
    }

    pub fn build() {
        println!("cargo:rerun-if-changed=csrc/dist.cpp");
        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
        let torch = super::shim::Torch::find();
        let lib_dir = &torch.lib_dir;
        let mut build = torch.cpp_build();
        build
            .file(manifest.join("csrc/dist.cpp"))
            .include(gloo_include(&manifest))
            .define("USE_C10D_GLOO", None);
        let cfg_nccl = torch
            .torch_dir
            .parent()
            .and_then(nccl_includes)
            .filter(|_| lib_dir.join("libtorch_cuda.so").exists());
        if let Some(dirs) = &cfg_nccl {
            build.define("USE_C10D_NCCL", None).define("TCH_RPO_NCCL", None);
            for d in dirs {
                build.include(d);
            }
        }
        build.compile("tch_rpo_dist");
        if cfg_nccl.is_some() {
            println!("cargo:rustc-link-lib=dylib=torch_cuda");
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
        }
        torch.link_cpu();
    }
}
