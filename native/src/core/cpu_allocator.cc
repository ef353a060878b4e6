#include "core/cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

namespace blipdiff {

// Why: each UNet/VAE call allocates the same large activation buffers again (hundreds of MB at full
// size). glibc serves such blocks with mmap and unmaps them on free, so every denoising step page-faults
// its buffers in anew (measured 2-3x on full-size stages). mallopt cannot fully prevent it: it applies
// to the main arena, while blipdiff computes on Node's worker threads, whose arenas mmap any block that
// does not fit their 64 MB heaps whatever the mallopt settings. This allocator keeps freed large blocks
// and hands them out again, so a step reuses the previous step's (already faulted-in) pages.
// Small allocations go to the allocator that was installed before. Cached blocks are bounded
// (kMaxCachedBytes) and released when a pipeline is disposed.
namespace {

constexpr size_t kAlignment = 64;                // c10's CPU alignment
constexpr size_t kMinCached = size_t(1) << 20;   // cache blocks of 1 MiB and more
constexpr size_t kGranule = size_t(64) << 10;    // sizes rounded up to 64 KiB
constexpr size_t kMaxCachedBytes = size_t(4) << 30;

void delete_block(void* ptr);

// The memory guard (CpuMemoryGuard): how many are alive, and what a new system block must leave free.
std::atomic<int> g_guards{0};
constexpr size_t kReserveBytes = size_t(256) << 20;

// MemAvailable of /proc/meminfo in bytes (the kernel's estimate of what can be allocated without swapping,
// reclaimable page cache included), or SIZE_MAX where it cannot be read.
size_t available_system_memory() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return SIZE_MAX;
  char line[256];
  size_t kb = 0;
  bool found = false;
  while (std::fgets(line, sizeof line, f)) {
    if (std::sscanf(line, "MemAvailable: %zu kB", &kb) == 1) {
      found = true;
      break;
    }
  }
  std::fclose(f);
  return found ? kb * 1024 : SIZE_MAX;
}

// Test hook: BLIPDIFF_TEST_CPU_MEMORY_LIMIT_MB caps what the allocator may hold from the system while a guard
// is alive, to exercise the out-of-memory path without exhausting the machine.
size_t test_limit_bytes() {
  static const size_t limit = [] {
    const char* env = std::getenv("BLIPDIFF_TEST_CPU_MEMORY_LIMIT_MB");
    return env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) << 20 : SIZE_MAX;
  }();
  return limit;
}

constexpr size_t kHugePage = size_t(2) << 20;

// Transparent huge pages for large blocks (on by default; BLIPDIFF_HUGEPAGES=0 turns them off). Every
// block is touched for the first time by a model load (7 GB of weights at full size) or a first call
// (activations), and on this kind of machine each 4 KiB page fault is expensive: with 2 MiB pages, a cold
// full-size load measured 3.3x faster and a whole cold `generate` process 1.5-1.7x (docs/benchmarks.md).
// Only the 2 MiB-aligned interior of a block is advised; the block keeps c10's 64-byte alignment, since
// aligning every buffer to 2 MiB would map corresponding elements of different tensors to the same cache
// sets. Where THP is "never", madvise does nothing; where it is "always", the kernel does this anyway.
bool huge_pages() {
  static const bool on = [] {
    const char* env = std::getenv("BLIPDIFF_HUGEPAGES");
    return !(env && std::string(env) == "0");
  }();
  return on;
}

// Returns the bytes advised.
size_t advise_huge_pages(void* ptr, size_t size) {
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + kHugePage - 1) / kHugePage * kHugePage;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + size) / kHugePage * kHugePage;
  if (end <= begin || madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE) != 0) return 0;
  return end - begin;
}

class CachingCpuAllocator final : public c10::Allocator {
 public:
  explicit CachingCpuAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCached) return fallback_->allocate(n);
    const size_t size = (n + kGranule - 1) / kGranule * kGranule;
    void* ptr = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Best fit among free blocks, accepting at most twice the size asked for.
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= 2 * size) {
        ptr = it->second;
        cached_bytes_ -= it->first;
        in_use_[ptr] = it->first;
        free_.erase(it);
        ++hits_;
      }
    }
    if (!ptr) {
      if (g_guards.load() > 0 && !fits(size)) {
        release();  // cached blocks count as used: give them back and look again
        // The message carries "out of memory" through TorchScript's interpreter, which rewraps exceptions.
        TORCH_CHECK_WITH(OutOfMemoryError, fits(size), "out of memory: a ", size >> 20,
                         " MiB block would leave less than ", kReserveBytes >> 20,
                         " MiB of the system's memory available");
      }
      if (posix_memalign(&ptr, kAlignment, size) != 0 || !ptr) {
        release();  // the cache may be holding what the system needs: retry once without it
        if (posix_memalign(&ptr, kAlignment, size) != 0 || !ptr) throw std::bad_alloc();
      }
      const size_t advised = huge_pages() ? advise_huge_pages(ptr, size) : 0;
      std::lock_guard<std::mutex> lock(mutex_);
      in_use_[ptr] = size;
      held_bytes_ += size;
      ++misses_;
      huge_page_bytes_ += advised;
    }
    return {ptr, ptr, &delete_block, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void free_block(void* ptr) {
    size_t size = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = in_use_.find(ptr);
      if (it != in_use_.end()) {
        size = it->second;
        in_use_.erase(it);
        if (cached_bytes_ + size <= kMaxCachedBytes) {
          free_.emplace(size, ptr);
          cached_bytes_ += size;
          return;
        }
        held_bytes_ -= size;
      }
    }
    std::free(ptr);
  }

  void release() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      held_bytes_ -= cached_bytes_;
      cached_bytes_ = 0;
    }
    for (auto& [size, ptr] : blocks) std::free(ptr);
  }

  // Whether a new system block of `size` bytes leaves the reserve free (and stays under the test limit).
  bool fits(size_t size) {
    size_t held = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      held = held_bytes_;
    }
    if (held + size > test_limit_bytes()) return false;
    const size_t available = available_system_memory();
    return available == SIZE_MAX || available >= size + kReserveBytes;
  }

  CpuCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_bytes_, hits_, misses_, huge_page_bytes_};
  }

 private:
  c10::Allocator* fallback_;
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  std::unordered_map<void*, size_t> in_use_;
  size_t cached_bytes_ = 0;
  size_t held_bytes_ = 0;  // from the system: in use + cached
  size_t hits_ = 0;
  size_t misses_ = 0;
  size_t huge_page_bytes_ = 0;
};

CachingCpuAllocator* g_allocator = nullptr;

void delete_block(void* ptr) { g_allocator->free_block(ptr); }

}  // namespace

void install_caching_cpu_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("BLIPDIFF_MALLOC_TUNING");
    if (env && std::string(env) == "0") return;
    // Never destroyed: tensors may be freed during process teardown, after static destructors ran.
    g_allocator = new CachingCpuAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(g_allocator, /*priority=*/100);
  });
}

void release_cached_cpu_memory() {
  if (g_allocator) g_allocator->release();
}

CpuMemoryGuard::CpuMemoryGuard() { ++g_guards; }
CpuMemoryGuard::~CpuMemoryGuard() { --g_guards; }

CpuCacheStats cpu_cache_stats() { return g_allocator ? g_allocator->stats() : CpuCacheStats{}; }

}  // namespace blipdiff
