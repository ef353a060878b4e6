#include "core/model.h"

#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/cuda.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/cpu_allocator.h"
#include "core/errors.h"
#include "core/mapped_weights.h"
#include "core/verify.h"

namespace blipdiff {

c10::Device resolve_device(const std::string& name) {
  std::optional<c10::Device> device;
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda())) {
    throw InvalidArgument("Expected \"cpu\", \"cuda\" or \"cuda:N\" for device but received \"" + name + "\"");
  }
  if (device->is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw Error(codes::kDevice, "CUDA was requested (device \"" + name +
                                      "\") but this build of the addon or this machine has no usable CUDA device; "
                                      "use `--device cpu`");
    }
    const int64_t count = static_cast<int64_t>(torch::cuda::device_count());
    if (device->has_index() && device->index() >= count) {
      throw Error(codes::kDevice, "CUDA device " + std::to_string(device->index()) + " does not exist (" +
                                      std::to_string(count) + " device(s) found)");
    }
    if (!device->has_index()) device = c10::Device(c10::kCUDA, 0);
  }
  return *device;
}

void check_dtype_for_device(DType dtype, const c10::Device& device) {
  // BLIPDIFF_CPU_HALF=1 is a developer switch: it runs the reduced-precision path on the CPU (slow) to
  // check the modules' dtype handling on machines without CUDA.
  const char* dev_switch = std::getenv("BLIPDIFF_CPU_HALF");
  if (dev_switch && std::string(dev_switch) == "1") return;
  if (dtype != DType::kFloat32 && !device.is_cuda()) {
    throw InvalidArgument("dtype " + std::string(to_string(dtype)) + " is only supported on CUDA; use float32 with " +
                          device.str());
  }
}

// Allocator tuning, part of the runtime's design: each denoising step allocates the same large
// activation buffers again, and glibc hands big blocks back to the OS on free, so every step
// page-faults them in anew (measured 2-3x on full-size stages). Two measures, both process-wide:
// the caching CPU allocator (core/cpu_allocator.cc), which reuses freed large blocks on any thread,
// and mallopt settings that keep the main arena's freed memory (no mmap for large blocks, no
// trimming) for everything that does not go through c10's allocator. The cost: memory freed by a
// run stays with the process (the cache is bounded and released on dispose).
// BLIPDIFF_MALLOC_TUNING=0 keeps glibc's defaults and c10's own allocator.
void configure_cpu_runtime_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* env = std::getenv("BLIPDIFF_MALLOC_TUNING");
    if (env && std::string(env) == "0") return;
    install_caching_cpu_allocator();
#if defined(__GLIBC__)
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    mallopt(M_TOP_PAD, 64 << 20);
#endif
  });
}

namespace {

// Casts floating-point parameters and buffers only: Module::to(dtype) would also cast integer buffers
// (e.g. CLIP's position_ids), breaking the embedding lookups.
void cast_floating(torch::jit::Module& module, at::ScalarType dtype) {
  at::NoGradGuard no_grad;
  for (at::Tensor p : module.parameters()) {
    if (p.is_floating_point()) p.set_data(p.to(dtype));
  }
  for (at::Tensor b : module.buffers()) {
    if (b.is_floating_point()) b.set_data(b.to(dtype));
  }
}

// Puts 4-D weights (convolutions) in `format`: channels-last on the CPU, where oneDNN's convolutions run faster in
// NHWC (full-size UNet call 2.52 s -> 2.16 s, 1.17x, on the benchmark machine; docs/benchmarks.md), contiguous on
// CUDA. Convolutions follow their weight's layout, so activations flow in it without further changes. Exports
// since 0.4.0 store them channels-last, so on the CPU this copies nothing; older ones are converted here.
void set_conv_weight_layout(torch::jit::Module& module, at::MemoryFormat format) {
  at::NoGradGuard no_grad;
  for (at::Tensor p : module.parameters()) {
    if (p.dim() == 4 && p.is_floating_point() && !p.is_contiguous(format)) p.set_data(p.contiguous(format));
  }
}

bool channels_last_enabled() {
  const char* env = std::getenv("BLIPDIFF_CHANNELS_LAST");
  return !(env && std::string(env) == "0");
}

// Routes the linear layers of CPU float32 modules through oneDNN's matmul (the exporter's Linear, from exporter
// 0.4.0: its `cpu_onednn` switch; it applies only with gradients off, so fine-tuning keeps ATen's differentiable
// F.linear). On the benchmark CPU (AMD EPYC, AVX-512) ATen's float32 GEMM runs 2-3x slower than oneDNN's, and
// linear layers are half of a UNet call (docs/benchmarks.md). The weights stay as they are: no copy, no packing.
// Modules from older exports have no switch and keep F.linear. BLIPDIFF_ONEDNN_LINEAR=0 turns it off.
void use_onednn_linear(torch::jit::Module& module) {
  for (const auto& m : module.named_modules()) {
    torch::jit::Module sub = m.value;
    if (sub.hasattr("cpu_onednn") && sub.attr("cpu_onednn").isBool()) sub.setattr("cpu_onednn", true);
  }
}

bool onednn_linear_enabled() {
  const char* env = std::getenv("BLIPDIFF_ONEDNN_LINEAR");
  return !(env && std::string(env) == "0");
}

}  // namespace

namespace {

// Both files of a module are present; checked for every module before the first is loaded, so a missing file is
// reported at once rather than after seconds of loading the others.
void check_module_files_exist(const ModuleFile& file, const std::string& what) {
  if (!std::filesystem::exists(file.path)) {
    throw Error(codes::kModel, "the " + what + " module " + file.path +
                                   " does not exist; re-export the model with `blipdiff convert`");
  }
  if (!file.weights.empty() && !std::filesystem::exists(file.weights)) {
    throw Error(codes::kModel, "the " + what + " weights file " + file.weights +
                                   " does not exist; re-export the model with `blipdiff convert`");
  }
}

}  // namespace

torch::jit::Module load_module(const ModuleFile& file, const std::string& what, const LoadOptions& options,
                               const c10::Device& device) {
  check_module_files_exist(file, what);
  try {
    torch::jit::Module module = torch::jit::load(file.path, device);
    if (!file.weights.empty()) {
      try {
        attach_mapped_weights(module, file.weights, device);
      } catch (const Error&) {
        throw;
      } catch (const std::exception& e) {
        throw Error(codes::kModel, "the " + what + " weights file " + file.weights + " does not fit its module: " +
                                       describe(e) + "; re-export the model with `blipdiff convert`");
      }
    }
    module.eval();
    if (options.dtype != DType::kFloat32) cast_floating(module, to_scalar_type(options.dtype));
    set_conv_weight_layout(module, device.is_cpu() && channels_last_enabled() ? at::MemoryFormat::ChannelsLast
                                                                              : at::MemoryFormat::Contiguous);
    if (device.is_cpu() && options.dtype == DType::kFloat32 && onednn_linear_enabled()) use_onednn_linear(module);
    if (options.optimize) {
      module = torch::jit::optimize_for_inference(module);
    }
    return module;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(codes::kModel, "while loading the " + what + " module " + file.path + ": " + describe(e));
  }
}

void configure_jit_executor_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    // BLIPDIFF_JIT_EXECUTOR: "profiling" (libtorch's default), "legacy" (no profiling runs) or "simple" (no graph
    // optimization at all). A developer switch for measuring first-call costs (docs/benchmarks.md).
    const char* env = std::getenv("BLIPDIFF_JIT_EXECUTOR");
    const std::string mode = env ? env : "";
    if (mode == "legacy") {
      torch::jit::getProfilingMode() = false;
    } else if (mode == "simple") {
      torch::jit::getExecutorMode() = false;
    }
  });
}

namespace {

bool jit_optimize(const c10::Device& device) {
  const char* env = std::getenv("BLIPDIFF_JIT_OPTIMIZE");
  if (env && std::string(env) == "1") return true;
  if (env && std::string(env) == "0") return false;
  return !device.is_cpu();
}

}  // namespace

InferenceGraphs::InferenceGraphs(const c10::Device& device) : guard_(jit_optimize(device)) {}

LoadedModels load_models(const ModelSpec& spec, const LoadOptions& options, const c10::Device& device,
                         const std::atomic<bool>* cancel) {
  spec.validate();
  configure_jit_executor_once();
  check_dtype_for_device(options.dtype, device);
  if (device.is_cpu()) configure_cpu_runtime_once();
  check_cancel(cancel, "start");
  auto load = [&](const ModuleFile& file, const char* what) {
    check_cancel(cancel, "module");
    return load_module(file, what, options, device);
  };
  if (options.subject_only) {
    if (options.verify_checksums) verify_files(module_files("qformer", spec.qformer), cancel);
    LoadedModels models;
    models.qformer = load(spec.qformer, "qformer");
    check_cancel(cancel, "end");
    return models;
  }
  const std::pair<const char*, const ModuleFile*> modules[] = {
      {"qformer", &spec.qformer},         {"text_encoder", &spec.text_encoder}, {"unet", &spec.unet},
      {"vae_decoder", &spec.vae_decoder}, {"vae_encoder", &spec.vae_encoder}};
  for (const auto& [name, file] : modules) check_module_files_exist(*file, name);
  if (options.verify_checksums) {
    std::vector<NamedFile> files;
    for (const auto& [name, file] : modules) {
      for (NamedFile& f : module_files(name, *file)) files.push_back(std::move(f));
    }
    if (spec.controlnet) {
      for (NamedFile& f : module_files("controlnet", *spec.controlnet)) files.push_back(std::move(f));
    }
    verify_files(files, cancel);
  }
  LoadedModels models;
  models.qformer = load(spec.qformer, "qformer");
  models.text_encoder = load(spec.text_encoder, "text_encoder");
  models.unet = load(spec.unet, "unet");
  models.vae_decoder = load(spec.vae_decoder, "vae_decoder");
  models.vae_encoder = load(spec.vae_encoder, "vae_encoder");
  // The ControlNet (1.4 GB at full size) is loaded on first use: Pipeline::generate with a control image.
  check_cancel(cancel, "end");
  return models;
}

}  // namespace blipdiff
