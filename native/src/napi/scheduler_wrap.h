// The JS Scheduler class (used by tests to check the C++ schedulers against golden values).
// Synchronous: each call is a few tensor operations.
#pragma once

#include <napi.h>

#include <memory>

#include "core/schedulers/scheduler.h"

namespace blipdiff::napi {

class SchedulerWrap : public Napi::ObjectWrap<SchedulerWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit SchedulerWrap(const Napi::CallbackInfo& info);

 private:
  Napi::Value SetTimesteps(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value GetInitNoiseSigma(const Napi::CallbackInfo& info);

  std::unique_ptr<Scheduler> scheduler_;
};

}  // namespace blipdiff::napi
