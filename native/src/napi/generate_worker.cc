#include "napi/workers.h"

#include "core/errors.h"

namespace blipdiff::napi {

GenerateWorker::GenerateWorker(Napi::Env env, CallState call, GenerateParams params, Napi::Function on_progress)
    : Napi::AsyncProgressQueueWorker<Progress>(env, "blipdiff.generate"),
      call_(std::move(call)),
      params_(std::move(params)) {
  if (!on_progress.IsEmpty()) on_progress_ = Napi::Persistent(on_progress);
}

void GenerateWorker::Execute(const ExecutionProgress& progress) {
  std::lock_guard<std::mutex> lock(call_.wrap()->run_mutex());
  try {
    if (call_.cancel().load()) throw AbortError();
    ProgressFn send;
    if (!on_progress_.IsEmpty()) send = [&progress](const Progress& p) { progress.Send(&p, 1); };
    result_ = call_.wrap()->core()->generate(params_, send, call_.cancel());
  } catch (...) {
    call_.error = capture_error();
    SetError(call_.error.message);
  }
}

void GenerateWorker::OnProgress(const Progress* data, size_t count) {
  if (on_progress_.IsEmpty()) return;
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  for (size_t i = 0; i < count; ++i) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("phase", Napi::String::New(env, std::string(to_string(data[i].phase))));
    p.Set("image", Napi::Number::New(env, double(data[i].image)));
    p.Set("step", Napi::Number::New(env, double(data[i].step)));
    p.Set("total", Napi::Number::New(env, double(data[i].total)));
    try {
      on_progress_.Call({p});
    } catch (const Napi::Error&) {
      // A throwing progress callback must not take the process or the generation down; the exception
      // has been taken off the JS engine by Napi::Error and is dropped here.
    }
  }
}

void GenerateWorker::OnOK() { call_.resolve(result_to_js(Env(), result_)); }

void GenerateWorker::OnError(const Napi::Error&) { call_.reject(Env()); }

}  // namespace blipdiff::napi
