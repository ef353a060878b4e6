// The JS Pipeline class: Promise-based load/encodeSubject/generate/dispose over one core Pipeline.
// Calls run on the libuv pool, one at a time per pipeline (run_mutex); bookkeeping (active calls,
// dispose waiters, abort flags) lives on the JS thread.
#pragma once

#include <napi.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "core/params.h"
#include "core/pipeline.h"

namespace blipdiff::napi {

class PipelineWrap : public Napi::ObjectWrap<PipelineWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit PipelineWrap(const Napi::CallbackInfo& info);

  // For workers (Execute runs on a pool thread and holds run_mutex()).
  const std::shared_ptr<Pipeline>& core() const { return pipeline_; }
  std::mutex& run_mutex() { return run_mutex_; }

  // JS thread: a call has settled its Promise.
  void finish_call(const std::shared_ptr<std::atomic<bool>>& cancel);
  // JS thread: a load succeeded.
  void set_loaded(const std::string& device, DType dtype);

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value EncodeSubject(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value Finetune(const Napi::CallbackInfo& info);
  Napi::Value Edit(const Napi::CallbackInfo& info);
  void Abort(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);
  Napi::Value GetLoaded(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetDtype(const Napi::CallbackInfo& info);
  Napi::Value TakeWarnings(const Napi::CallbackInfo& info);

  // Rejects `deferred` and returns false when the pipeline is disposed or being disposed.
  bool begin_call(Napi::Env env, Napi::Promise::Deferred& deferred, const std::shared_ptr<std::atomic<bool>>& cancel);
  void complete_dispose();
  // Starts generate, finetune or edit (Call: napi/workers.h).
  template <typename Call>
  Napi::Value start_progress_call(const Napi::CallbackInfo& info);

  std::shared_ptr<Pipeline> pipeline_ = std::make_shared<Pipeline>();
  std::mutex run_mutex_;
  int active_ = 0;
  bool disposing_ = false;
  bool disposed_ = false;
  std::vector<Napi::Promise::Deferred> dispose_waiters_;
  std::set<std::shared_ptr<std::atomic<bool>>> cancels_;
  // JS-thread mirrors of the core's state (the core may be busy on a pool thread).
  bool loaded_ = false;
  std::string device_ = "cpu";
  DType dtype_ = DType::kFloat32;
};

}  // namespace blipdiff::napi
