// One worker class per async Pipeline operation. Each keeps its PipelineWrap alive (a persistent
// reference to the JS object), settles its Promise exactly once, and touches only params structs and
// the core on the pool thread.
#pragma once

#include <napi.h>

#include <atomic>
#include <memory>

#include "core/params.h"
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

class GenerateWorker : public Napi::AsyncProgressQueueWorker<Progress> {
 public:
  GenerateWorker(Napi::Env env, CallState call, GenerateParams params, Napi::Function on_progress);
  void Execute(const ExecutionProgress& progress) override;
  void OnProgress(const Progress* data, size_t count) override;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 private:
  CallState call_;
  GenerateParams params_;
  Napi::FunctionReference on_progress_;
  GenerateResult result_;
};

class FinetuneWorker : public Napi::AsyncProgressQueueWorker<FinetuneProgress> {
 public:
  FinetuneWorker(Napi::Env env, CallState call, FinetuneParams params, Napi::Function on_progress);
  void Execute(const ExecutionProgress& progress) override;
  void OnProgress(const FinetuneProgress* data, size_t count) override;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 private:
  CallState call_;
  FinetuneParams params_;
  Napi::FunctionReference on_progress_;
  FinetuneResult result_;
};

class EditWorker : public Napi::AsyncProgressQueueWorker<EditProgress> {
 public:
  EditWorker(Napi::Env env, CallState call, EditParams params, Napi::Function on_progress);
  void Execute(const ExecutionProgress& progress) override;
  void OnProgress(const EditProgress* data, size_t count) override;
  void OnOK() override;
  void OnError(const Napi::Error& error) override;

 private:
  CallState call_;
  EditParams params_;
  Napi::FunctionReference on_progress_;
  EditResult result_;
};

}  // namespace blipdiff::napi
