// One worker class per async Pipeline operation. Each keeps its PipelineWrap alive (a persistent
// reference to the JS object), settles its Promise exactly once, and touches only params structs and
// the core on the pool thread.
#pragma once

#include <napi.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>

#include "core/errors.h"
#include "core/params.h"
#include "core/pipeline.h"
#include "napi/convert.h"
#include "napi/pipeline_wrap.h"

namespace blipdiff::napi {

// What every call shares: the owner, its Promise, its cancel flag and the captured error.
class CallState {
 public:
  CallState(PipelineWrap* wrap, Napi::Promise::Deferred deferred, std::shared_ptr<std::atomic<bool>> cancel);
  void resolve(Napi::Value value);
  void reject(Napi::Env env);
  PipelineWrap* wrap() const { return wrap_; }
  const std::atomic<bool>& cancel() const { return *cancel_; }
  ErrorInfo error;

 private:
  void finish();
  Napi::ObjectReference owner_;
  PipelineWrap* wrap_;
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<std::atomic<bool>> cancel_;
  bool settled_ = false;
};

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, CallState call, ModelSpec spec, LoadOptions options);
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 private:
  CallState call_;
  ModelSpec spec_;
  LoadOptions options_;
  std::string device_;
  DType dtype_ = DType::kFloat32;
};

class EncodeWorker : public Napi::AsyncWorker {
 public:
  EncodeWorker(Napi::Env env, CallState call, at::Tensor pixels, at::Tensor ids, at::Tensor mask);
  void Execute() override;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 private:
  CallState call_;
  at::Tensor pixels_, ids_, mask_, result_;
};

// The long pipeline calls with progress (generate, finetune, edit) share one worker: `Call::run` runs on a pool
// thread under the wrapper's run lock, each progress event becomes a JS object (`Call::progress_to_js`) for the
// optional callback, and the result is converted on the JS thread (`Call::result_to_js`). A `Call` names its
// Params, Progress and Result types, the async resource name (`kName`) and its argument converter (`from_js`).
template <typename Call>
class ProgressCallWorker : public Napi::AsyncProgressQueueWorker<typename Call::Progress> {
  using Base = Napi::AsyncProgressQueueWorker<typename Call::Progress>;

 public:
  ProgressCallWorker(Napi::Env env, CallState call, typename Call::Params params, Napi::Function on_progress)
      : Base(env, Call::kName), call_(std::move(call)), params_(std::move(params)) {
    if (!on_progress.IsEmpty()) on_progress_ = Napi::Persistent(on_progress);
  }

  void Execute(const typename Base::ExecutionProgress& progress) override {
    std::lock_guard<std::mutex> lock(call_.wrap()->run_mutex());
    try {
      if (call_.cancel().load()) throw AbortError();
      std::function<void(const typename Call::Progress&)> send;
      if (!on_progress_.IsEmpty()) send = [&progress](const typename Call::Progress& p) { progress.Send(&p, 1); };
      result_ = Call::run(*call_.wrap()->core(), params_, send, call_.cancel());
    } catch (...) {
      call_.error = capture_error();
      this->SetError(call_.error.message);
    }
    params_ = typename Call::Params();  // the inputs (pictures, weights) are not needed any more: free them here
  }

  void OnProgress(const typename Call::Progress* data, size_t count) override {
    if (on_progress_.IsEmpty()) return;
    Napi::Env env = this->Env();
    Napi::HandleScope scope(env);
    for (size_t i = 0; i < count; ++i) {
      try {
        on_progress_.Call({Call::progress_to_js(env, data[i])});
      } catch (const Napi::Error&) {
        // A throwing progress callback must not take the process or the call down; the exception has been taken
        // off the JS engine by Napi::Error and is dropped here.
      }
    }
  }

  void OnOK() override {
    Napi::Object out = Call::result_to_js(this->Env(), result_);
    result_ = typename Call::Result();
    call_.resolve(out);
  }

  void OnError(const Napi::Error&) override { call_.reject(this->Env()); }

 private:
  CallState call_;
  typename Call::Params params_;
  Napi::FunctionReference on_progress_;
  typename Call::Result result_;
};

struct GenerateCall {
  using Params = GenerateParams;
  using Progress = blipdiff::Progress;
  using Result = GenerateResult;
  static constexpr const char* kName = "blipdiff.generate";
  static Params from_js(const Napi::Value& v) { return generate_params_from_js(v); }
  static Result run(Pipeline& p, const Params& params, const ProgressFn& progress, const std::atomic<bool>& cancel);
  static Napi::Object progress_to_js(Napi::Env env, const Progress& p);
  static Napi::Object result_to_js(Napi::Env env, const Result& r);
};

struct FinetuneCall {
  using Params = FinetuneParams;
  using Progress = FinetuneProgress;
  using Result = FinetuneResult;
  static constexpr const char* kName = "blipdiff.finetune";
  static Params from_js(const Napi::Value& v) { return finetune_params_from_js(v); }
  static Result run(Pipeline& p, const Params& params, const FinetuneProgressFn& progress,
                    const std::atomic<bool>& cancel);
  static Napi::Object progress_to_js(Napi::Env env, const Progress& p);
  static Napi::Object result_to_js(Napi::Env env, const Result& r);
};

struct EditCall {
  using Params = EditParams;
  using Progress = EditProgress;
  using Result = EditResult;
  static constexpr const char* kName = "blipdiff.edit";
  static Params from_js(const Napi::Value& v) { return edit_params_from_js(v); }
  static Result run(Pipeline& p, const Params& params, const EditProgressFn& progress, const std::atomic<bool>& cancel);
  static Napi::Object progress_to_js(Napi::Env env, const Progress& p);
  static Napi::Object result_to_js(Napi::Env env, const Result& r);
};

using GenerateWorker = ProgressCallWorker<GenerateCall>;
using FinetuneWorker = ProgressCallWorker<FinetuneCall>;
using EditWorker = ProgressCallWorker<EditCall>;

}  // namespace blipdiff::napi
