#include "core/pipeline.h"
#include "napi/workers.h"

namespace blipdiff::napi {

GenerateResult GenerateCall::run(Pipeline& p, const GenerateParams& params, const ProgressFn& progress,
                                 const std::atomic<bool>& cancel) {
  return p.generate(params, progress, cancel);
}

Napi::Object GenerateCall::progress_to_js(Napi::Env env, const Progress& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("phase", Napi::String::New(env, std::string(to_string(p.phase))));
  o.Set("image", Napi::Number::New(env, double(p.image)));
  o.Set("step", Napi::Number::New(env, double(p.step)));
  o.Set("total", Napi::Number::New(env, double(p.total)));
  return o;
}

Napi::Object GenerateCall::result_to_js(Napi::Env env, const GenerateResult& r) { return napi::result_to_js(env, r); }

}  // namespace blipdiff::napi
