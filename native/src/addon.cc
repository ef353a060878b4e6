// The blipdiff addon: registers the classes and functions of native/src/napi, nothing else.
#include <napi.h>

#include "core/diagnostics.h"
#include "napi/build_info.h"
#include "napi/pipeline_wrap.h"
#include "napi/scheduler_wrap.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  blipdiff::init_runtime_diagnostics();  // before any torch work in this process (stderr policy)
  exports.Set("Pipeline", blipdiff::napi::PipelineWrap::Init(env));
  exports.Set("Scheduler", blipdiff::napi::SchedulerWrap::Init(env));
  exports.Set("buildInfo", Napi::Function::New<blipdiff::napi::BuildInfo>(env, "buildInfo"));
  exports.Set("memoryStats", Napi::Function::New<blipdiff::napi::MemoryStats>(env, "memoryStats"));
  exports.Set("sha256Stats", Napi::Function::New<blipdiff::napi::Sha256Stats>(env, "sha256Stats"));
  exports.Set("exitNow", Napi::Function::New<blipdiff::napi::ExitNow>(env, "exitNow"));
  return exports;
}

}  // namespace

NODE_API_MODULE(blipdiff, Init)
