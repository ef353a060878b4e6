// What this build of the core and this machine offer (for `blipdiff info`).
#pragma once

#include <string>
#include <vector>

namespace blipdiff {

struct RuntimeInfo {
  std::string torch_version;
  bool cuda_compiled = false;
  bool cuda_available = false;
  int64_t cuda_device_count = 0;
  std::vector<std::string> devices;  // "cpu", "cuda:0", ...
  int64_t num_threads = 1;
  // at::globalContext().userEnabledNNPACK(); off after init (core/diagnostics.h).
  bool nnpack_enabled = false;
};

RuntimeInfo runtime_info();

}  // namespace blipdiff
