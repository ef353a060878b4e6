// Loading the exported TorchScript modules onto a device. Includes torch/script.h: include this header
// only from core .cc files.
#pragma once

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <atomic>
#include <optional>
#include <string>

#include "core/params.h"

namespace blipdiff {

// Parses "cpu", "cuda", "cuda:N" and checks that the device exists in this build and on this machine.
c10::Device resolve_device(const std::string& device);

// Rejects float16/bfloat16 off CUDA.
void check_dtype_for_device(DType dtype, const c10::Device& device);

// Process-wide CPU runtime settings, applied once (see model.cc for the allocator rationale).
void configure_cpu_runtime_once();

// Process-wide TorchScript executor settings (BLIPDIFF_JIT_EXECUTOR), applied once at the first load.
void configure_jit_executor_once();

// TorchScript's graph optimization for the length of an inference call on the calling thread (libtorch keeps the
// switch per thread, and calls run on worker threads). On the CPU it is off: these graphs spend their time in oneDNN's
// and ATen's kernels, and the optimizer adds a profiling run and a compilation to the first two calls of every
// module, which is what a one-image CLI process pays (full-size UNet: 3.2-4.2 s and 3.4-3.8 s for its first two
// calls, against 2.3-2.5 s and 1.7 s unoptimized; docs/benchmarks.md). On CUDA libtorch's default stays (its fusers
// work there; unmeasured). BLIPDIFF_JIT_OPTIMIZE=1 or =0 sets it on every device. Fine-tuning keeps the default.
class InferenceGraphs {
 public:
  explicit InferenceGraphs(const c10::Device& device);
  InferenceGraphs(const InferenceGraphs&) = delete;
  InferenceGraphs& operator=(const InferenceGraphs&) = delete;

 private:
  torch::jit::GraphOptimizerEnabledGuard guard_;
};

struct LoadedModels {
  torch::jit::Module qformer;
  torch::jit::Module text_encoder;
  torch::jit::Module unet;
  torch::jit::Module vae_decoder;
  torch::jit::Module vae_encoder;
  std::optional<torch::jit::Module> controlnet;
};

// Loads one module file onto `device`, cast to the options' dtype, in eval mode (no checksum check).
torch::jit::Module load_module(const ModuleFile& file, const std::string& what, const LoadOptions& options,
                               const c10::Device& device);

// Verifies checksums (when asked; the ControlNet's too), loads each module except the ControlNet (loaded on
// first use; with options.subject_only, only the Q-Former) onto `device`, casts floating parameters and
// buffers to `dtype`, switches to eval mode. Errors name the module and file. Throws AbortError when
// `cancel` is set: checked after every hashed 1 MiB chunk and before each module (checkpoint "module").
LoadedModels load_models(const ModelSpec& spec, const LoadOptions& options, const c10::Device& device,
                         const std::atomic<bool>* cancel = nullptr);

}  // namespace blipdiff
