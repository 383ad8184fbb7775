//! [`BlockCache`]: a CPU allocator for libtorch that keeps freed large blocks mapped and reuses them
//! (feature `autograd`, implied by `train`: compiled from `csrc/block_cache.cpp`).

use crate::error::{Error, InputError, ParamValue, Result};

extern "C" {
    fn tch_rpo_block_cache_configure(min_bytes: usize, max_cached_bytes: usize) -> std::ffi::c_int;
    fn tch_rpo_block_cache_release();
    fn tch_rpo_block_cache_stats(out: *mut u64);
}

/// The limits of the [`BlockCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCacheConfig {
    /// Requests of at least this many bytes go through the cache (≥ 4096, one page). Default 1 MiB
    /// (glibc's heap serves smaller ones well).
    pub min_bytes: usize,
    /// The most bytes of free blocks the cache keeps mapped. Default `usize::MAX`: no limit — every
    /// freed block stays mapped for reuse, as PyTorch's CUDA caching allocator keeps its blocks, so the
    /// mapped bytes stay at the high-water mark of the live tensors (plus the reuse slack below).
    pub max_cached_bytes: usize,
}

impl Default for BlockCacheConfig {
    fn default() -> Self {
        Self {
            min_bytes: 1 << 20,
            max_cached_bytes: usize::MAX,
        }
    }
}

/// What the [`BlockCache`] has done since it was installed ([`BlockCache::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockCacheStats {
    /// Requests served by a cached block.
    pub hits: u64,
    /// Requests served by resizing a cached block of another size (`mremap`: its resident pages kept).
    pub remaps: u64,
    /// Requests served by a new mapping (the cache was empty).
    pub misses: u64,
    /// Cached blocks unmapped (over the limit, on a failed mapping, or by [`BlockCache::release`]).
    pub evictions: u64,
    /// Bytes of free blocks held now.
    pub cached_bytes: u64,
    /// Bytes of blocks handed out and not yet freed.
    pub live_bytes: u64,
    /// Bytes mapped now (`cached_bytes + live_bytes`).
    pub mapped_bytes: u64,
    /// The most bytes mapped at once.
    pub peak_mapped_bytes: u64,
}

/// libtorch's CPU allocator replaced by a cache of large blocks. Process-wide: associated functions only.
///
/// # Why
/// A training step allocates and frees the same large tensors every step: each layer's activations and
/// their gradients (`[tokens, hidden]`, `[tokens, intermediate]`: megabytes), the fused head's `[n, V]`
/// logits chunks (hundreds of megabytes). libtorch's default CPU allocator takes them from glibc, which maps
/// every block above its mmap threshold ([`limit_heap_fragmentation`](crate::memory::limit_heap_fragmentation): 1 MiB) afresh and unmaps it
/// when freed; every first touch of each 4 KiB page of a fresh mapping is then a page fault in which the
/// kernel zeroes the page. On Gemma 3 270M's LoRA RPO step that was 22% of the process's CPU time
/// (`perf`: `clear_page_erms`, `exc_page_fault`, `unmap_page_range`; docs/benchmarks.md). Raising the
/// threshold instead (glibc's heap) removes the faults but fragments the heap: +1.5 GB peak RSS on the same
/// run.
///
/// # What it does
/// Requests of at least [`BlockCacheConfig::min_bytes`] are served from the cache — the smallest free block
/// of at least the request's size (rounded up to 4 KiB pages) and at most `size + size / 8`, its tail
/// unmapped so that it holds exactly the request's pages — else by resizing a cached block (`mremap`): the
/// smallest larger one, which gives its tail back, else the largest, which keeps its resident pages and
/// grows; only when the cache is empty by a new anonymous mapping. A
/// freed block joins the cache; while the cache holds more than [`BlockCacheConfig::max_cached_bytes`], its
/// least recently freed blocks are unmapped. So new memory is mapped only when no free block is left, and
/// the process holds at most `max_cached_bytes` of free blocks beyond its live tensors. Smaller requests go to the allocator that was installed before (libtorch's
/// default). Tensors allocated before [`BlockCache::install`] keep their own allocator's deleter.
///
/// A failed mapping first unmaps every cached block and retries; if that fails too, the libtorch op fails
/// with its out-of-memory error (an [`Error::Torch`](crate::Error::Torch) from tch), not an abort.
#[derive(Debug)]
pub struct BlockCache;

impl BlockCache {
    /// Installs the cache as libtorch's CPU allocator (the first call; later calls change only its limits,
    /// unmapping cached blocks over a lower `max_cached_bytes`). Install it before the tensors whose
    /// blocks should be reused exist; tensors allocated earlier keep working as before.
    ///
    /// # Errors
    /// [`InputError::InvalidParameter`] (`min_bytes`) below 4096; [`Error::Torch`] if libtorch refuses the
    /// allocator.
    pub fn install(config: BlockCacheConfig) -> Result<()> {
        if config.min_bytes < 4096 {
            return Err(Error::Input(InputError::InvalidParameter {
                name: "min_bytes",
                value: ParamValue::Count(config.min_bytes as u64),
                requirement: "must be at least 4096 (one page): smaller requests belong to the heap",
            }));
        }
        // SAFETY: plain integers in; the shim catches every C++ exception.
        match unsafe { tch_rpo_block_cache_configure(config.min_bytes, config.max_cached_bytes) } {
            0 => Ok(()),
            _ => Err(Error::Torch(tch::TchError::Torch(
                "tch-rpo block cache: libtorch refused the allocator".to_owned(),
            ))),
        }
    }

    /// Unmaps every cached block (live tensors are untouched); a no-op before [`BlockCache::install`].
    pub fn release() {
        // SAFETY: no arguments; the shim catches every C++ exception.
        unsafe { tch_rpo_block_cache_release() }
    }

    /// The counters (all zero before [`BlockCache::install`]).
    pub fn stats() -> BlockCacheStats {
        let mut out = [0u64; 8];
        // SAFETY: the shim writes exactly 8 values into the buffer.
        unsafe { tch_rpo_block_cache_stats(out.as_mut_ptr()) };
        let [hits, misses, remaps, evictions, cached_bytes, live_bytes, mapped_bytes, peak_mapped_bytes] =
            out;
        BlockCacheStats {
            hits,
            remaps,
            misses,
            evictions,
            cached_bytes,
            live_bytes,
            mapped_bytes,
            peak_mapped_bytes,
        }
    }
}
