#include "napi/scheduler_wrap.h"

#include <ATen/core/Tensor.h>
#include <c10/core/InferenceMode.h>

#include <cmath>

#include "napi/convert.h"

namespace blipdiff::napi {

namespace {

int64_t integer_arg(const Napi::Value& value, const std::string& name) {
  if (!value.IsNumber()) throw ArgError(ArgError::Kind::kType, "Expected an integer for " + name + " but received " + describe_value(value));
  const double d = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d)) {
    throw ArgError(ArgError::Kind::kRange, "Expected an integer for " + name + " but received " + describe_value(value));
  }
  return static_cast<int64_t>(d);
}

// Runs `fn`, turning any C++ exception into a thrown JS error.
template <typename Fn>
Napi::Value guarded(Napi::Env env, Fn&& fn) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw make_error(env, capture_error());
  }
}

}  // namespace

Napi::Function SchedulerWrap::Init(Napi::Env env) {
  return DefineClass(env, "Scheduler",
                     {
                         InstanceMethod<&SchedulerWrap::SetTimesteps>("setTimesteps"),
                         InstanceMethod<&SchedulerWrap::Step>("step"),
                         InstanceAccessor<&SchedulerWrap::GetInitNoiseSigma>("initNoiseSigma"),
                     });
}

SchedulerWrap::SchedulerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SchedulerWrap>(info) {
  guarded(info.Env(), [&] {
    if (!info[0].IsString()) {
      throw ArgError(ArgError::Kind::kType, "Expected a scheduler name for kind but received " + describe_value(info[0]));
    }
    const SchedulerKind kind = scheduler_kind_from_string(info[0].As<Napi::String>().Utf8Value());
    scheduler_ = make_scheduler(kind, scheduler_config_from_js(info[1]));
    return info.Env().Undefined();
  });
}

Napi::Value SchedulerWrap::SetTimesteps(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    scheduler_->set_timesteps(integer_arg(info[0], "steps"));
    const auto& ts = scheduler_->timesteps();
    Napi::Array out = Napi::Array::New(info.Env(), ts.size());
    for (size_t i = 0; i < ts.size(); ++i) out.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), double(ts[i])));
    return out;
  });
}

Napi::Value SchedulerWrap::Step(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    const at::Tensor model_output = tensor_from_js(info[0], "modelOutput");
    const int64_t timestep = integer_arg(info[1], "timestep");
    const at::Tensor sample = tensor_from_js(info[2], "sample");
    if (model_output.sizes() != sample.sizes()) {
      throw ArgError(ArgError::Kind::kRange, "Expected the shape of sample for modelOutput but received " +
                                                 c10::str(model_output.sizes()) + " vs " + c10::str(sample.sizes()));
    }
    c10::InferenceMode inference;
    return tensor_to_js(info.Env(), scheduler_->step(model_output, timestep, sample));
  });
}

Napi::Value SchedulerWrap::GetInitNoiseSigma(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), scheduler_->init_noise_sigma());
}

}  // namespace blipdiff::napi
