// Small helpers shared by the core's stages (generation, denoising, fine-tuning, editing): clocks, device sync,
// the first tensor of a module's output and decoded images. Internal to the core; includes torch/script.h.
#pragma once

#include <torch/cuda.h>
#include <torch/script.h>

#include <chrono>
#include <string>

#include "core/errors.h"
#include "core/params.h"

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

// clamp(x/2 + 0.5, 0, 1), NCHW -> NHWC, round(255 x) -> uint8, in float32 on the CPU.
inline Image to_image(const at::Tensor& decoded) {
  const at::Tensor x = (decoded.to(at::kCPU, at::kFloat) / 2 + 0.5).clamp(0, 1);
  const at::Tensor u8 = (x.permute({0, 2, 3, 1}) * 255).round().to(at::kByte).contiguous();
  Image image;
  image.height = u8.size(1);
  image.width = u8.size(2);
  image.channels = u8.size(3);
  const uint8_t* p = u8.data_ptr<uint8_t>();
  image.data.assign(p, p + u8.numel());
  return image;
}

}  // namespace blipdiff
