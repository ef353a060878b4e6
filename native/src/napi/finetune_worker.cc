#include "core/errors.h"
#include "napi/workers.h"

namespace blipdiff::napi {

FinetuneWorker::FinetuneWorker(Napi::Env env, CallState call, FinetuneParams params, Napi::Function on_progress)
    : Napi::AsyncProgressQueueWorker<FinetuneProgress>(env, "blipdiff.finetune"),
      call_(std::move(call)),
      params_(std::move(params)) {
  if (!on_progress.IsEmpty()) on_progress_ = Napi::Persistent(on_progress);
}

void FinetuneWorker::Execute(const ExecutionProgress& progress) {
  std::lock_guard<std::mutex> lock(call_.wrap()->run_mutex());
  try {
    if (call_.cancel().load()) throw AbortError();
    FinetuneProgressFn send;
    if (!on_progress_.IsEmpty()) send = [&progress](const FinetuneProgress& p) { progress.Send(&p, 1); };
    result_ = call_.wrap()->core()->finetune(params_, send, call_.cancel());
  } catch (...) {
    call_.error = capture_error();
    SetError(call_.error.message);
  }
  // The inputs (pictures, draws) are not needed any more: free them on the pool thread.
  params_ = FinetuneParams();
}

void FinetuneWorker::OnProgress(const FinetuneProgress* data, size_t count) {
  if (on_progress_.IsEmpty()) return;
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  for (size_t i = 0; i < count; ++i) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("step", Napi::Number::New(env, double(data[i].step)));
    p.Set("total", Napi::Number::New(env, double(data[i].total)));
    p.Set("loss", Napi::Number::New(env, data[i].loss));
    try {
      on_progress_.Call({p});
    } catch (const Napi::Error&) {
      // A throwing progress callback must not end the fine-tune (see GenerateWorker::OnProgress).
    }
  }
}

void FinetuneWorker::OnOK() {
  Napi::Object out = finetune_result_to_js(Env(), result_);
  result_ = FinetuneResult();
  call_.resolve(out);
}

void FinetuneWorker::OnError(const Napi::Error&) { call_.reject(Env()); }

}  // namespace blipdiff::napi
