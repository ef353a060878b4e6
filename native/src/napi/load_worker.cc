#include "napi/workers.h"

namespace blipdiff::napi {

LoadWorker::LoadWorker(Napi::Env env, CallState call, ModelSpec spec, LoadOptions options)
    : Napi::AsyncWorker(env, "blipdiff.load"),
      call_(std::move(call)),
      spec_(std::move(spec)),
      options_(std::move(options)) {}

void LoadWorker::Execute() {
  std::lock_guard<std::mutex> lock(call_.wrap()->run_mutex());
  const auto& pipeline = call_.wrap()->core();
  try {
    pipeline->load(spec_, options_, &call_.cancel());
    device_ = pipeline->device();
    dtype_ = pipeline->dtype();
  } catch (...) {
    call_.error = capture_error();
    SetError(call_.error.message);
  }
}

void LoadWorker::OnOK() {
  call_.wrap()->set_loaded(device_, dtype_);
  call_.resolve(Env().Undefined());
}

void LoadWorker::OnError(const Napi::Error&) { call_.reject(Env()); }

}  // namespace blipdiff::napi
