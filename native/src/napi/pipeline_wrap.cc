#include "napi/pipeline_wrap.h"

#include <ATen/ATen.h>

#include "napi/convert.h"
#include "napi/workers.h"

namespace blipdiff::napi {

namespace {

// The optional onProgress callback, the call's second argument (empty when absent).
Napi::Function optional_progress(const Napi::CallbackInfo& info) {
  if (info.Length() < 2 || info[1].IsUndefined() || info[1].IsNull()) return Napi::Function();
  if (!info[1].IsFunction()) {
    throw ArgError(ArgError::Kind::kType, "Expected a function for onProgress but received " + describe_value(info[1]));
  }
  return info[1].As<Napi::Function>();
}

}  // namespace

// ---- CallState ----

CallState::CallState(PipelineWrap* wrap, Napi::Promise::Deferred deferred, std::shared_ptr<std::atomic<bool>> cancel)
    : owner_(Napi::Persistent(wrap->Value())), wrap_(wrap), deferred_(deferred), cancel_(std::move(cancel)) {}

void CallState::resolve(Napi::Value value) {
  if (settled_) return;
  settled_ = true;
  deferred_.Resolve(value);
  finish();
}

void CallState::reject(Napi::Env env) {
  if (settled_) return;
  settled_ = true;
  deferred_.Reject(make_error(env, error).Value());
  finish();
}

void CallState::finish() {
  wrap_->finish_call(cancel_);
  owner_.Reset();
}

// ---- PipelineWrap ----

Napi::Function PipelineWrap::Init(Napi::Env env) {
  return DefineClass(env, "Pipeline",
                     {
                         InstanceMethod<&PipelineWrap::Load>("load"),
                         InstanceMethod<&PipelineWrap::EncodeSubject>("encodeSubject"),
                         InstanceMethod<&PipelineWrap::Generate>("generate"),
                         InstanceMethod<&PipelineWrap::Finetune>("finetune"),
                         InstanceMethod<&PipelineWrap::Edit>("edit"),
                         InstanceMethod<&PipelineWrap::Abort>("abort"),
                         InstanceMethod<&PipelineWrap::Dispose>("dispose"),
                         InstanceMethod<&PipelineWrap::TakeWarnings>("takeWarnings"),
                         InstanceAccessor<&PipelineWrap::GetLoaded>("loaded"),
                         InstanceAccessor<&PipelineWrap::GetDevice>("device"),
                         InstanceAccessor<&PipelineWrap::GetDtype>("dtype"),
                     });
}

PipelineWrap::PipelineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PipelineWrap>(info) {}

bool PipelineWrap::begin_call(Napi::Env env, Napi::Promise::Deferred& deferred,
                              const std::shared_ptr<std::atomic<bool>>& cancel) {
  if (disposed_ || disposing_) {
    deferred.Reject(make_error(env, {"the pipeline has been disposed; create a new Pipeline", "ERR_BLIPDIFF_DISPOSED",
                                     "Error"})
                        .Value());
    return false;
  }
  ++active_;
  cancels_.insert(cancel);
  return true;
}

void PipelineWrap::finish_call(const std::shared_ptr<std::atomic<bool>>& cancel) {
  cancels_.erase(cancel);
  if (--active_ == 0 && disposing_) complete_dispose();
}

void PipelineWrap::set_loaded(const std::string& device, DType dtype) {
  loaded_ = true;
  device_ = device;
  dtype_ = dtype;
}

void PipelineWrap::complete_dispose() {
  // No call is running: freeing the modules here cannot race a worker.
  pipeline_->unload();
  loaded_ = false;
  disposing_ = false;
  disposed_ = true;
  std::vector<Napi::Promise::Deferred> waiters;
  waiters.swap(dispose_waiters_);
  for (auto& deferred : waiters) deferred.Resolve(Env().Undefined());
}

Napi::Value PipelineWrap::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  try {
    ModelSpec spec = spec_from_js(info[0]);
    LoadOptions options = load_options_from_js(info[1]);
    if (!begin_call(env, deferred, cancel)) return deferred.Promise();
    (new LoadWorker(env, CallState(this, deferred, cancel), std::move(spec), std::move(options)))->Queue();
  } catch (...) {
    deferred.Reject(make_error(env, capture_error()).Value());
  }
  return deferred.Promise();
}

Napi::Value PipelineWrap::EncodeSubject(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  try {
    at::Tensor pixels = tensor_from_js(info[0], "pixels");
    std::vector<int64_t> ids = ids_from_js(info[1], "ids");
    std::vector<int64_t> mask = ids_from_js(info[2], "mask");
    if (!info[3].IsArray() || info[3].As<Napi::Array>().Length() != 2) {
      throw ArgError(ArgError::Kind::kType, "Expected [batch, length] for shape but received " + describe_value(info[3]));
    }
    const Napi::Array shape = info[3].As<Napi::Array>();
    const Napi::Value b = shape.Get(0u), t = shape.Get(1u);
    if (!b.IsNumber() || !t.IsNumber()) {
      throw ArgError(ArgError::Kind::kType, "Expected [batch, length] for shape but received " + describe_value(info[3]));
    }
    const int64_t batch = b.As<Napi::Number>().Int64Value(), length = t.As<Napi::Number>().Int64Value();
    if (batch < 1 || length < 1 || static_cast<int64_t>(ids.size()) != batch * length ||
        mask.size() != ids.size()) {
      throw ArgError(ArgError::Kind::kRange, "Expected ids and mask of " + std::to_string(batch) + "x" +
                                                 std::to_string(length) + " values for ids/mask but received " +
                                                 std::to_string(ids.size()) + " and " + std::to_string(mask.size()));
    }
    at::Tensor ids_t = at::tensor(ids, at::kLong).reshape({batch, length});
    at::Tensor mask_t = at::tensor(mask, at::kLong).reshape({batch, length});
    if (!begin_call(env, deferred, cancel)) return deferred.Promise();
    (new EncodeWorker(env, CallState(this, deferred, cancel), pixels, ids_t, mask_t))->Queue();
  } catch (...) {
    deferred.Reject(make_error(env, capture_error()).Value());
  }
  return deferred.Promise();
}

// generate, finetune and edit: arguments converted on the JS thread (a bad one rejects at once), then the call's
// ProgressCallWorker queued.
template <typename Call>
Napi::Value PipelineWrap::start_progress_call(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  try {
    typename Call::Params params = Call::from_js(info[0]);
    Napi::Function on_progress = optional_progress(info);
    if (!begin_call(env, deferred, cancel)) return deferred.Promise();
    (new ProgressCallWorker<Call>(env, CallState(this, deferred, cancel), std::move(params), on_progress))->Queue();
  } catch (...) {
    deferred.Reject(make_error(env, capture_error()).Value());
  }
  return deferred.Promise();
}

Napi::Value PipelineWrap::Generate(const Napi::CallbackInfo& info) { return start_progress_call<GenerateCall>(info); }

Napi::Value PipelineWrap::Finetune(const Napi::CallbackInfo& info) { return start_progress_call<FinetuneCall>(info); }

Napi::Value PipelineWrap::Edit(const Napi::CallbackInfo& info) { return start_progress_call<EditCall>(info); }

// Cancels every running call: generate between steps, load between checksum chunks and modules,
// encodeSubject before or after its Q-Former call.
void PipelineWrap::Abort(const Napi::CallbackInfo&) {
  for (const auto& cancel : cancels_) cancel->store(true);
}

Napi::Value PipelineWrap::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto deferred = Napi::Promise::Deferred::New(env);
  if (disposed_) {
    deferred.Resolve(env.Undefined());
  } else {
    dispose_waiters_.push_back(deferred);
    disposing_ = true;
    if (active_ == 0) complete_dispose();
  }
  return deferred.Promise();
}

Napi::Value PipelineWrap::TakeWarnings(const Napi::CallbackInfo& info) {
  // Safe while a call runs: the collector has its own lock.
  const std::vector<std::string> warnings = pipeline_->take_warnings();
  Napi::Array out = Napi::Array::New(info.Env(), warnings.size());
  for (size_t i = 0; i < warnings.size(); ++i)
    out.Set(static_cast<uint32_t>(i), Napi::String::New(info.Env(), warnings[i]));
  return out;
}

Napi::Value PipelineWrap::GetLoaded(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), loaded_); }

Napi::Value PipelineWrap::GetDevice(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), device_); }

Napi::Value PipelineWrap::GetDtype(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), std::string(to_string(dtype_)));
}

}  // namespace blipdiff::napi
