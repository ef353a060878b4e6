#include "napi/build_info.h"

#include <cmath>
#include <cstdlib>

#include "core/cpu_allocator.h"
#include "core/runtime_info.h"
#include "core/sha256.h"

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
  out.Set("nnpackEnabled", Napi::Boolean::New(env, runtime.nnpack_enabled));
  return out;
}

Napi::Value MemoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const CpuCacheStats stats = cpu_cache_stats();
  Napi::Object out = Napi::Object::New(env);
  out.Set("cpuCachedBytes", Napi::Number::New(env, double(stats.cached_bytes)));
  out.Set("cpuCacheHits", Napi::Number::New(env, double(stats.hits)));
  out.Set("cpuCacheMisses", Napi::Number::New(env, double(stats.misses)));
  out.Set("cpuHugePageBytes", Napi::Number::New(env, double(stats.huge_page_bytes)));
  return out;
}

Napi::Value Sha256Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const blipdiff::Sha256Stats stats = sha256_stats();
  Napi::Object out = Napi::Object::New(env);
  out.Set("implementation", Napi::String::New(env, stats.implementation));
  out.Set("portableBytes", Napi::Number::New(env, double(stats.portable_bytes)));
  out.Set("shaNiBytes", Napi::Number::New(env, double(stats.sha_ni_bytes)));
  return out;
}

Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Napi::Value arg = info[0];
  const double code = arg.IsNumber() ? arg.As<Napi::Number>().DoubleValue() : -1;
  if (!(code >= 0 && code <= 255 && code == std::floor(code))) {
    throw Napi::RangeError::New(env,
                                "Expected an integer in [0, 255] for code but received " +
                                    (arg.IsNumber() ? std::to_string(code) : std::string("a non-number")));
  }
  std::_Exit(static_cast<int>(code));
}

}  // namespace blipdiff::napi
