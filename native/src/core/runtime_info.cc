#include "core/runtime_info.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#if __has_include(<torch/headeronly/version.h>)
#include <torch/headeronly/version.h>
#else
#include <torch/version.h>
#endif

namespace blipdiff {

RuntimeInfo runtime_info() {
  RuntimeInfo info;
  info.torch_version = TORCH_VERSION;
  info.cuda_compiled = at::hasCUDA();
  info.cuda_available = torch::cuda::is_available();
  info.cuda_device_count = info.cuda_available ? static_cast<int64_t>(torch::cuda::device_count()) : 0;
  info.devices.push_back("cpu");
  for (int64_t i = 0; i < info.cuda_device_count; ++i) info.devices.push_back("cuda:" + std::to_string(i));
  info.num_threads = at::get_num_threads();
  info.nnpack_enabled = at::globalContext().userEnabledNNPACK();
  return info;
}

}  // namespace blipdiff
