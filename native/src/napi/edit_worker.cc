#include "core/errors.h"
#include "napi/workers.h"

namespace blipdiff::napi {

EditWorker::EditWorker(Napi::Env env, CallState call, EditParams params, Napi::Function on_progress)
    : Napi::AsyncProgressQueueWorker<EditProgress>(env, "blipdiff.edit"),
      call_(std::move(call)),
      params_(std::move(params)) {
  if (!on_progress.IsEmpty()) on_progress_ = Napi::Persistent(on_progress);
}

void EditWorker::Execute(const ExecutionProgress& progress) {
  std::lock_guard<std::mutex> lock(call_.wrap()->run_mutex());
  try {
    if (call_.cancel().load()) throw AbortError();
    EditProgressFn send;
    if (!on_progress_.IsEmpty()) send = [&progress](const EditProgress& p) { progress.Send(&p, 1); };
    result_ = call_.wrap()->core()->edit(params_, send, call_.cancel());
  } catch (...) {
    call_.error = capture_error();
    SetError(call_.error.message);
  }
  params_ = EditParams();  // free the inputs on the pool thread
}

void EditWorker::OnProgress(const EditProgress* data, size_t count) {
  if (on_progress_.IsEmpty()) return;
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  for (size_t i = 0; i < count; ++i) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("phase", Napi::String::New(env, std::string(to_string(data[i].phase))));
    p.Set("step", Napi::Number::New(env, double(data[i].step)));
    p.Set("total", Napi::Number::New(env, double(data[i].total)));
    try {
      on_progress_.Call({p});
    } catch (const Napi::Error&) {
      // A throwing progress callback must not end the edit (see GenerateWorker::OnProgress).
    }
  }
}

void EditWorker::OnOK() {
  Napi::Object out = edit_result_to_js(Env(), result_);
  result_ = EditResult();
  call_.resolve(out);
}

void EditWorker::OnError(const Napi::Error&) { call_.reject(Env()); }

}  // namespace blipdiff::napi
