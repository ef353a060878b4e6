#include "napi/build_info.h"

#include "core/cpu_allocator.h"
#include "core/runtime_info.h"

namespace blipdiff::napi {

Napi::Value BuildInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const RuntimeInfo runtime = runtime_info();
  Napi::Object out = Napi::Object::New(env);
  out.Set("torchVersion", Napi::String::New(env, runtime.torch_version));
  out.Set("cudaCompiled", Napi::Boolean::New(env, runtime.cuda_compiled));
  out.Set("cudaAvailable", Napi::Boolean::New(env, runtime.cuda_available));
  out.Set("cudaDeviceCount", Napi::Number::New(env, double(runtime.cuda_device_count)));
  Napi::Array devices = Napi::Array::New(env, runtime.devices.size());
  for (size_t i = 0; i < runtime.devices.size(); ++i) devices.Set(static_cast<uint32_t>(i), Napi::String::New(env, runtime.devices[i]));
  out.Set("devices", devices);
  out.Set("numThreads", Napi::Number::New(env, double(runtime.num_threads)));
  return out;
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuCacheStats stats = cpu_cache_stats();
  Napi::Object out = Napi::Object::New(env);
  out.Set("cpuCachedBytes", Napi::Number::New(env, double(stats.cached_bytes)));
  out.Set("cpuCacheHits", Napi::Number::New(env, double(stats.hits)));
  out.Set("cpuCacheMisses", Napi::Number::New(env, double(stats.misses)));
  return out;
}

}  // namespace blipdiff::napi
