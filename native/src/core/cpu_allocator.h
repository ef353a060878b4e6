// A caching allocator for CPU tensors (process-wide; see cpu_allocator.cc for why).
#pragma once

#include <cstddef>

namespace blipdiff {

// Installs the caching allocator as c10's CPU allocator, once per process. Tensors allocated before
// keep their allocator; every later large CPU allocation goes through the cache.
void install_caching_cpu_allocator();

// Frees the cached (unused) blocks, e.g. when a pipeline is disposed. Blocks in use are untouched.
void release_cached_cpu_memory();

// While one is alive (on any thread), a large CPU allocation that would leave less than 256 MiB of the system's
// available memory (MemAvailable) first releases the cache, then throws std::bad_alloc: training fails with an
// out-of-memory error naming what to reduce, instead of the kernel's OOM killer ending the process. Only with the
// caching allocator (not with BLIPDIFF_MALLOC_TUNING=0).
class CpuMemoryGuard {
 public:
  CpuMemoryGuard();
  ~CpuMemoryGuard();
  CpuMemoryGuard(const CpuMemoryGuard&) = delete;
  CpuMemoryGuard& operator=(const CpuMemoryGuard&) = delete;
};

struct CpuCacheStats {
  size_t cached_bytes = 0;  // held in the cache, free for reuse
  size_t hits = 0;          // large allocations served from the cache
  size_t misses = 0;        // large allocations that went to the system allocator
  size_t huge_page_bytes = 0;  // bytes of those allocations advised for transparent huge pages (MADV_HUGEPAGE)
};
CpuCacheStats cpu_cache_stats();

}  // namespace blipdiff
