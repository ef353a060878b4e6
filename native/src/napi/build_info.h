#pragma once

#include <napi.h>

namespace blipdiff::napi {

// buildInfo(): torch version, CUDA compiled/available, devices, threads.
Napi::Value BuildInfo(const Napi::CallbackInfo& info);

// memoryStats(): the caching CPU allocator's counters (all zero when it is not installed).
Napi::Value MemoryStats(const Napi::CallbackInfo& info);

// sha256Stats(): the SHA-256 implementation this process uses and the bytes each one has hashed.
Napi::Value Sha256Stats(const Napi::CallbackInfo& info);

// exitNow(code): ends the process at once with `code` (0..255) through _Exit: no exit handlers, no
// flushing, no joining of the libuv pool threads that process.exit() would wait for (a native step or a
// model load can hold one for minutes). For the CLI's second Ctrl-C, after it removed its partial files.
Napi::Value ExitNow(const Napi::CallbackInfo& info);

}  // namespace blipdiff::napi
