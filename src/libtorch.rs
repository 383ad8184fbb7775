//! Which libtorch the running process uses, and CUDA at run time.
//!
//! libtorch's CUDA support lives in `libtorch_cuda.so`. Nothing in `tch` references a symbol of it, so
//! the linker drops it (`--as-needed`, the default on Linux) unless the final binary is linked with
//! `-Wl,--no-as-needed -ltorch`; without it `tch::Cuda::is_available()` is `false` even on a GPU machine.
//! This crate's own tests, examples and benches get that flag from its `build.rs`; a dependent binary
//! gets it from a three-line `build.rs` of its own (see the README, "Using tch-rpo from another crate"),
//! or calls [`init_cuda`] first thing in `main`, which loads `libtorch_cuda.so` from the folder the
//! process loaded `libtorch_cpu.so` from.
//!
//! [`info`] reports what the process loaded, by real paths (read from `/proc/self/maps`).
//!
//! Linux only: on other systems [`info`] reports no folder and [`init_cuda`] loads nothing.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// libtorch's `lib/` folder this crate was built against, as a real path (symbolic links resolved), or
/// `""` when the build script could not tell.
pub const BUILD_LIB_DIR: &str = env!("TCH_RPO_LIBTORCH_LIB");

/// What the running process loaded of libtorch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibtorchInfo {
    /// The folder `libtorch_cpu.so` was loaded from (a real path), or `None` if it is not loaded as a
    /// shared library (a static build, or not Linux).
    pub lib_dir: Option<PathBuf>,
    /// Whether that folder holds `libtorch_cuda.so`, i.e. libtorch is a CUDA build (PyPI's Linux wheel is,
    /// and runs without a GPU too).
    pub cuda_build: bool,
    /// Whether `libtorch_cuda.so` is loaded in this process.
    pub cuda_loaded: bool,
    /// Whether libtorch registered its CUDA support (`tch::utils::has_cudart()`): CUDA tensors work when a
    /// device is present. Only asked when `cuda_loaded`, because asking earlier fixes CUDA as absent for
    /// the rest of the process.
    pub cuda_registered: bool,
    /// The number of CUDA devices libtorch sees (0 unless `cuda_registered`).
    pub cuda_devices: i64,
}

/// The libtorch shared libraries the process has loaded: `(file name, real path)` pairs from
/// `/proc/self/maps`, each library once.
fn loaded_libtorch_libraries() -> Vec<(String, PathBuf)> {
    let maps = match std::fs::read_to_string("/proc/self/maps") {
        Ok(maps) => maps,
        Err(_) => return Vec::new(),
    };
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for line in maps.lines() {
        // `address perms offset dev inode   /path/to/file`: the path starts at the first '/'.
        let Some(start) = line.find('/') else { continue };
        let path = Path::new(&line[start..]);
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if (name.starts_with("libtorch") || name.starts_with("libc10"))
            && name.contains(".so")
            && !found.iter().any(|(_, p)| p == path)
        {
            found.push((name.to_string(), path.to_path_buf()));
        }
    }
    found
}

fn is_loaded(libraries: &[(String, PathBuf)], name: &str) -> bool {
    libraries.iter().any(|(n, _)| n == name)
}

/// What the running process loaded of libtorch (see [`LibtorchInfo`]).
///
/// Does not load anything, and asks libtorch about CUDA only when `libtorch_cuda.so` is already loaded.
///
/// # Errors
/// None today on Linux; the `Result` leaves room for platforms where the question needs a system call
/// that can fail.
pub fn info() -> Result<LibtorchInfo> {
    let libraries = loaded_libtorch_libraries();
    let lib_dir = libraries
        .iter()
        .find(|(name, _)| name == "libtorch_cpu.so")
        .and_then(|(_, path)| path.parent().map(Path::to_path_buf));
    let cuda_build = lib_dir
        .as_ref()
        .is_some_and(|dir| dir.join("libtorch_cuda.so").exists());
    let cuda_loaded = is_loaded(&libraries, "libtorch_cuda.so");
    let cuda_registered = cuda_loaded && tch::utils::has_cudart();
    let cuda_devices = if cuda_registered {
        tch::Cuda::device_count()
    } else {
        0
    };
    Ok(LibtorchInfo {
        lib_dir,
        cuda_build,
        cuda_loaded,
        cuda_registered,
        cuda_devices,
    })
}

/// Makes libtorch's CUDA support available in a binary that was linked without it: loads
/// `libtorch_cuda.so` from the folder of the loaded `libtorch_cpu.so` (so it is the same libtorch), unless
/// it is loaded already. Returns [`info`] afterwards. Idempotent and cheap once done.
///
/// Call it first thing in `main`, before any other `tch` or `tch_rpo` call: libtorch decides once per
/// process whether CUDA is present, the first time anything asks (`tch::Cuda::is_available()`,
/// `tch::manual_seed`, `Device::cuda_if_available()`, …); loading `libtorch_cuda.so` after that has no effect,
/// and this function reports it as an error.
///
/// A CPU-only libtorch (no `libtorch_cuda.so`) is not an error: the result says `cuda_build: false`.
///
/// # Errors
/// [`Error::LibtorchLoad`] if the dynamic loader cannot load `libtorch_cuda.so` (e.g. a CUDA runtime
/// library it needs is missing: the loader's message names it), or if it was loaded after libtorch had
/// already decided that CUDA is absent.
pub fn init_cuda() -> Result<LibtorchInfo> {
    let before = info()?;
    if before.cuda_loaded || !before.cuda_build {
        return Ok(before);
    }
    let Some(dir) = before.lib_dir.as_ref() else {
        return Ok(before);
    };
    let library = dir.join("libtorch_cuda.so");
    dl::open_global(&library).map_err(|reason| Error::LibtorchLoad {
        library: library.display().to_string(),
        reason,
    })?;
    let after = info()?;
    if !after.cuda_registered {
        return Err(Error::LibtorchLoad {
            library: library.display().to_string(),
            reason: "loaded, but libtorch had already decided that CUDA is absent (something asked about \
                     CUDA before this call): call tch_rpo::libtorch::init_cuda() first thing in main, or \
                     link libtorch_cuda with the build.rs shown in the README"
                .into(),
        });
    }
    Ok(after)
}

#[cfg(target_os = "linux")]
mod dl {
    use std::ffi::{c_char, c_int, c_void, CStr, CString};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    // glibc's values (dlfcn.h).
    const RTLD_NOW: c_int = 0x2;
    const RTLD_GLOBAL: c_int = 0x100;

    extern "C" {
        fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void;
        fn dlerror() -> *mut c_char;
    }

    /// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`, keeping the library loaded for the rest of the process;
    /// the loader's message on failure.
    pub(super) fn open_global(path: &Path) -> Result<(), String> {
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| "the path contains a NUL byte".to_string())?;
        // SAFETY: `c_path` is a valid NUL-terminated string for the duration of the call; the handle is
        // deliberately never closed (libtorch's static initializers must stay registered); `dlerror`
        // returns either NULL or a NUL-terminated string owned by the loader, copied at once.
        unsafe {
            if !dlopen(c_path.as_ptr(), RTLD_NOW | RTLD_GLOBAL).is_null() {
                return Ok(());
            }
            let message = dlerror();
            if message.is_null() {
                Err("dlopen failed without a message".into())
            } else {
                Err(CStr::from_ptr(message).to_string_lossy().into_owned())
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod dl {
    use std::path::Path;

    pub(super) fn open_global(_path: &Path) -> Result<(), String> {
        Err("loading libtorch_cuda at run time is only implemented on Linux".into())
    }
}
