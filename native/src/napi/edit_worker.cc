#include "core/pipeline.h"
#include "napi/workers.h"

namespace blipdiff::napi {

EditResult EditCall::run(Pipeline& p, const EditParams& params, const EditProgressFn& progress,
                         const std::atomic<bool>& cancel) {
  return p.edit(params, progress, cancel);
}

Napi::Object EditCall::progress_to_js(Napi::Env env, const EditProgress& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("phase", Napi::String::New(env, std::string(to_string(p.phase))));
  o.Set("step", Napi::Number::New(env, double(p.step)));
  o.Set("total", Napi::Number::New(env, double(p.total)));
  return o;
}

Napi::Object EditCall::result_to_js(Napi::Env env, const EditResult& r) { return edit_result_to_js(env, r); }

}  // namespace blipdiff::napi
