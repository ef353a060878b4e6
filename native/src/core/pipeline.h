// The BLIP-Diffusion pipeline on loaded TorchScript modules: subject encoding and generation.
// Not thread-safe: callers serialize calls on one Pipeline (the N-API wrapper does).
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "core/diagnostics.h"
#include "core/edit/edit.h"
#include "core/finetune/finetune.h"
#include "core/params.h"

namespace blipdiff {

struct LoadedModels;

class Pipeline {
 public:
  Pipeline();
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Verifies, loads and prepares every module; replaces what was loaded before only on success. Throws
  // AbortError when `cancel` is set (see load_models for where it is checked); what was loaded stays.
  void load(const ModelSpec& spec, const LoadOptions& options, const std::atomic<bool>* cancel = nullptr);
  void unload();
  bool loaded() const { return models_ != nullptr; }
  const std::string& device() const { return device_name_; }
  DType dtype() const { return dtype_; }
  const ModelSpec& spec() const { return spec_; }

  // pixels [B,3,S,S] normalized float32, ids/mask [B,T] int64 -> query embeddings [B,Q,D] float32 CPU.
  // The Q-Former runs as one call: `cancel` is checked before it and after it (the result is dropped).
  at::Tensor encode_subject(const at::Tensor& pixels, const at::Tensor& ids, const at::Tensor& mask,
                            const std::atomic<bool>* cancel = nullptr);

  // Runs the whole generation. Throws AbortError when `cancel` becomes true (polled between steps), and
  // Error(codes::kNonFinite) for NaN/Inf in queryEmbeds, latents or controlImage, or in the latents
  // after denoising (checked before decoding). Progress counts the steps asked for (see denoise.h).
  GenerateResult generate(const GenerateParams& params, const ProgressFn& progress, const std::atomic<bool>& cancel);

  // Fine-tunes the subject embedding and the UNet (full) or LoRA adapters (core/finetune/finetune.h). The loaded
  // modules are the same afterwards. Refused on a pipeline loaded with subject_only or optimize (frozen modules
  // cannot train). Throws AbortError when `cancel` becomes true (polled before every step).
  FinetuneResult finetune(const FinetuneParams& params, const FinetuneProgressFn& progress,
                          const std::atomic<bool>& cancel);

  // Prompt-to-prompt subject editing of a generated source or a real picture (core/edit/edit.h). Needs a UNet
  // exported with the attention-control path (Error(kModel) otherwise). Throws AbortError when `cancel` becomes
  // true (polled before every UNet call). The loaded modules are unchanged afterwards.
  EditResult edit(const EditParams& params, const EditProgressFn& progress, const std::atomic<bool>& cancel);

  // The libtorch warnings (TORCH_WARN) raised by this pipeline's calls since the last take, first
  // occurrence of each (every occurrence with BLIPDIFF_DEBUG=1); thread-safe. See core/diagnostics.h.
  std::vector<std::string> take_warnings() { return warnings_.take(); }

 private:
  ModelSpec spec_;
  LoadOptions options_;
  std::unique_ptr<LoadedModels> models_;
  std::string device_name_ = "cpu";
  DType dtype_ = DType::kFloat32;
  WarningCollector warnings_;
};

// The initial latents of `seed`: torch's CPU generator, float32, [1, C, h, w] (what the reference
// draws with generator=torch.Generator("cpu").manual_seed(seed)).
at::Tensor draw_latents(uint64_t seed, int64_t channels, int64_t height, int64_t width);

}  // namespace blipdiff
