// Small helpers shared by the core's stages (generation, denoising, fine-tuning): clocks, device sync and the
// first tensor of a module's output. Internal to the core; includes torch/script.h.
#pragma once

#include <torch/cuda.h>
#include <torch/script.h>

#include <chrono>
#include <string>

#include "core/errors.h"

namespace blipdiff {

using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Device work is asynchronous on CUDA: wait for it before reading a phase's clock.
inline void sync_device(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// A module's output, or the first element of a tuple output; Error(kModel) naming `what` otherwise.
inline at::Tensor first_tensor(const c10::IValue& value, const char* what) {
  if (value.isTensor()) return value.toTensor();
  if (value.isTuple()) return value.toTupleRef().elements().at(0).toTensor();
  throw Error(codes::kModel, std::string("the ") + what + " module returned " + value.tagKind() +
                                 " instead of a tensor");
}

}  // namespace blipdiff
