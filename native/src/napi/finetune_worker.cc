#include "core/pipeline.h"
#include "napi/workers.h"

namespace blipdiff::napi {

FinetuneResult FinetuneCall::run(Pipeline& p, const FinetuneParams& params, const FinetuneProgressFn& progress,
                                 const std::atomic<bool>& cancel) {
  return p.finetune(params, progress, cancel);
}

Napi::Object FinetuneCall::progress_to_js(Napi::Env env, const FinetuneProgress& p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("step", Napi::Number::New(env, double(p.step)));
  o.Set("total", Napi::Number::New(env, double(p.total)));
  o.Set("loss", Napi::Number::New(env, p.loss));
  return o;
}

Napi::Object FinetuneCall::result_to_js(Napi::Env env, const FinetuneResult& r) { return finetune_result_to_js(env, r); }

}  // namespace blipdiff::napi
