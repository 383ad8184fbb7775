// C shim for `tch_rpo::memory::BlockCache` (compiled by build.rs with the `autograd` feature, implied by
// `train`): a CPU allocator for libtorch that keeps freed large blocks mapped and hands them out again, so
// that a training step's large tensors (activations, logits chunks, gradients: the same shapes every step)
// stop costing fresh pages — a page fault and the kernel zeroing each 4 KiB page — on every allocation.
//
// Requests of at least `min_bytes` are served from the cache (a free block at least as large and at most
// `request + request / 8` bytes, the smallest such, shrunk in place to the request), else by resizing a
// cached block (mremap: the smallest larger one, else the largest), else by a new anonymous mapping; freed blocks join the cache, and while the cache holds more
// than `max_cached_bytes` its least recently freed blocks are unmapped.
// Smaller requests go to the allocator that was installed before (libtorch's default). No C++ exception
// crosses this boundary; allocation failure inside libtorch raises c10::OutOfMemoryError, which tch turns
// into an error.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // mremap
#endif
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <unordered_map>

namespace {

constexpr std::size_t kPage = 4096;

struct Stats {
  std::uint64_t hits;
  std::uint64_t misses;
  std::uint64_t evictions;
  std::uint64_t remaps;
  std::uint64_t cached_bytes;
  std::uint64_t live_bytes;
  std::uint64_t mapped_bytes;
  std::uint64_t peak_mapped_bytes;
};

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) override {
    c10::Allocator* fallback;
    std::size_t min_bytes;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fallback = fallback_;
      min_bytes = min_bytes_;
    }
    if (n < min_bytes) {
      c10::DataPtr small = fallback->allocate(n);
      // Re-labelled with `release` (which hands pointers that are not ours to the previous allocator's raw
      // deleter), so that every pointer of this allocator has one deleter: libtorch's raw_allocate /
      // raw_deallocate (oneDNN's scratch buffers of bf16 products, among others) require it.
      if (fallback_raw_ != nullptr && small.get() == small.get_context() &&
          small.get_deleter() == fallback_raw_) {
        void* ptr = small.release_context();
        return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
      }
      return small;
    }
    const std::size_t size = (n + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = by_size_.lower_bound(size);
      if (it != by_size_.end() && it->first <= size + size / 8) {
        std::size_t block = it->first;
        const std::uint64_t age = it->second;
        void* ptr = by_age_.at(age).ptr;
        by_age_.erase(age);
        by_size_.erase(it);
        stats_.cached_bytes -= block;
        // Give the tail back (shrinking in place): a block's slack would stay resident for as long as the
        // tensor lives (measured: +1.6 GB peak RSS on a 1.2B-parameter step). If the kernel refuses, the
        // block is handed out whole.
        if (block > size && mremap(ptr, block, size, 0) != MAP_FAILED) {
          stats_.mapped_bytes -= block - size;
          block = size;
        }
        live_.emplace(ptr, block);
        stats_.live_bytes += block;
        stats_.hits += 1;
        return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
      }
    }
    void* ptr = remap_cached(size);
    const bool remapped = ptr != nullptr;
    if (ptr == nullptr) {
      ptr = map(size);
    }
    if (ptr == nullptr) {
      // Out of address space or memory: give the cache back and try once more.
      release_cached();
      ptr = map(size);
    }
    TORCH_CHECK_WITH(
        OutOfMemoryError, ptr != nullptr, "tch-rpo block cache: cannot map ", size, " bytes");
    std::lock_guard<std::mutex> lock(mutex_);
    live_.emplace(ptr, size);
    stats_.live_bytes += size;
    stats_.mapped_bytes += size;
    stats_.misses += remapped ? 0 : 1;
    if (stats_.mapped_bytes > stats_.peak_mapped_bytes) {
      stats_.peak_mapped_bytes = stats_.mapped_bytes;
    }
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return fallback_raw_ != nullptr ? &release : nullptr;
  }

  bool is_simple_data_ptr(const c10::DataPtr& data_ptr) const override {
    return data_ptr.get() == data_ptr.get_context();
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  static void release(void* ptr) noexcept {
    instance().give_back(ptr);
  }

  static BlockCache& instance() {
    // Never destroyed: tensors may be freed during static destruction.
    static BlockCache* cache = new BlockCache();
    return *cache;
  }

  // Installs the cache as libtorch's CPU allocator (the first call) and sets its limits.
  void configure(std::size_t min_bytes, std::size_t max_cached_bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      min_bytes_ = min_bytes;
      max_cached_ = max_cached_bytes;
      if (fallback_ == nullptr) {
        fallback_ = c10::GetAllocator(c10::DeviceType::CPU);
        fallback_raw_ = fallback_->raw_deleter();
        c10::SetAllocator(c10::DeviceType::CPU, this, /*priority=*/255);
      }
    }
    trim();
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!by_age_.empty()) {
      evict_oldest();
    }
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

 private:
  struct Free {
    void* ptr;
    std::size_t size;
    std::multimap<std::size_t, std::uint64_t>::iterator by_size;
  };

  // No cached block fits within the slack: resizes a cached block to `size` bytes (mremap) — the smallest
  // larger one, which gives back its tail (no new pages), else the largest, which keeps its resident pages
  // and grows — so that a new mapping is made only when the cache is empty, and pages are added to a block
  // only when no cached block could give them (growing a smaller block beside an unused larger one would
  // hold both: measured +1.5 GB peak RSS on a 1.2B-parameter step). The block leaves the cache (its bytes
  // are counted again by the caller as mapped). nullptr when the cache is empty or mremap fails (the block
  // is then unmapped).
  void* remap_cached(std::size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (by_size_.empty()) {
      return nullptr;
    }
    auto it = by_size_.lower_bound(size);
    if (it == by_size_.end()) {
      it = std::prev(it);
    }
    auto free = by_age_.find(it->second);
    void* old = free->second.ptr;
    const std::size_t old_size = free->second.size;
    by_age_.erase(free);
    by_size_.erase(it);
    stats_.cached_bytes -= old_size;
    stats_.mapped_bytes -= old_size;
    void* ptr = mremap(old, old_size, size, MREMAP_MAYMOVE);
    if (ptr == MAP_FAILED) {
      munmap(old, old_size);
      stats_.evictions += 1;
      return nullptr;
    }
    stats_.remaps += 1;
    return ptr;
  }

  static void* map(std::size_t size) {
    void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return ptr == MAP_FAILED ? nullptr : ptr;
  }

  void give_back(void* ptr) noexcept {
    std::unique_lock<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    if (it == live_.end()) {
      // A small block of the previous allocator (re-labelled in `allocate`), or null.
      lock.unlock();
      if (ptr != nullptr && fallback_raw_ != nullptr) {
        fallback_raw_(ptr);
      }
      return;
    }
    const std::size_t size = it->second;
    live_.erase(it);
    stats_.live_bytes -= size;
    const std::uint64_t age = next_age_++;
    auto by_size = by_size_.emplace(size, age);
    by_age_.emplace(age, Free{ptr, size, by_size});
    stats_.cached_bytes += size;
    while (stats_.cached_bytes > max_cached_ && !by_age_.empty()) {
      evict_oldest();
    }
  }

  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (stats_.cached_bytes > max_cached_ && !by_age_.empty()) {
      evict_oldest();
    }
  }

  // Requires the lock.
  void evict_oldest() {
    auto oldest = by_age_.begin();
    munmap(oldest->second.ptr, oldest->second.size);
    stats_.cached_bytes -= oldest->second.size;
    stats_.mapped_bytes -= oldest->second.size;
    stats_.evictions += 1;
    by_size_.erase(oldest->second.by_size);
    by_age_.erase(oldest);
  }

  std::mutex mutex_;
  c10::Allocator* fallback_ = nullptr;
  // The previous allocator's raw deleter (libtorch's default: non-null), set once with `fallback_`.
  c10::DeleterFnPtr fallback_raw_ = nullptr;
  std::size_t min_bytes_ = 0;
  std::size_t max_cached_ = 0;
  std::uint64_t next_age_ = 0;
  // Free blocks: size -> age, and age (the order they were freed in) -> block.
  std::multimap<std::size_t, std::uint64_t> by_size_;
  std::map<std::uint64_t, Free> by_age_;
  // Blocks handed out: pointer -> mapped size.
  std::unordered_map<void*, std::size_t> live_;
  Stats stats_{};
};

}  // namespace

extern "C" {

// Installs the block cache as libtorch's CPU allocator on the first call, and (every call) sets its limits,
// unmapping cached blocks over the new `max_cached_bytes`. Returns 0, or 1 when a C++ exception was caught.
int tch_rpo_block_cache_configure(std::size_t min_bytes, std::size_t max_cached_bytes) {
  try {
    BlockCache::instance().configure(min_bytes, max_cached_bytes);
    return 0;
  } catch (...) {
    return 1;
  }
}

// Unmaps every cached (free) block.
void tch_rpo_block_cache_release(void) {
  try {
    BlockCache::instance().release_cached();
  } catch (...) {
  }
}

// The counters: hits, misses, remaps, evictions, cached bytes, live bytes, mapped bytes, peak mapped bytes.
void tch_rpo_block_cache_stats(std::uint64_t out[8]) {
  try {
    const Stats s = BlockCache::instance().stats();
    const std::uint64_t values[8] = {s.hits,         s.misses,     s.remaps,       s.evictions,
                                     s.cached_bytes, s.live_bytes, s.mapped_bytes, s.peak_mapped_bytes};
    for (int i = 0; i < 8; ++i) {
      out[i] = values[i];
    }
  } catch (...) {
    for (int i = 0; i < 8; ++i) {
      out[i] = 0;
    }
  }
}

}  // extern "C"
