#pragma once

#include <napi.h>

namespace blipdiff::napi {

// buildInfo(): torch version, CUDA compiled/available, devices, threads.
Napi::Value BuildInfo(const Napi::CallbackInfo& info);

// memoryStats(): the caching CPU allocator's counters (all zero when it is not installed).
Napi::Value MemoryStats(const Napi::CallbackInfo& info);

}  // namespace blipdiff::napi
