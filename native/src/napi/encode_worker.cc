#include "napi/workers.h"

namespace blipdiff::napi {

EncodeWorker::EncodeWorker(Napi::Env env, CallState call, at::Tensor pixels, at::Tensor ids, at::Tensor mask)
    : Napi::AsyncWorker(env, "blipdiff.encodeSubject"),
      call_(std::move(call)),
      pixels_(std::move(pixels)),
      ids_(std::move(ids)),
      mask_(std::move(mask)) {}

void EncodeWorker::Execute() {
  std::lock_guard<std::mutex> lock(call_.wrap()->run_mutex());
  try {
    result_ = call_.wrap()->core()->encode_subject(pixels_, ids_, mask_, &call_.cancel());
  } catch (...) {
    call_.error = capture_error();
    SetError(call_.error.message);
  }
}

void EncodeWorker::OnOK() { call_.resolve(tensor_to_js(Env(), result_)); }

void EncodeWorker::OnError(const Napi::Error&) { call_.reject(Env()); }

}  // namespace blipdiff::napi
