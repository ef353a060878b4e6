// Per-subject fine-tuning (reference §3, fixtures "Fine-tuning goldens"): the UNet (full) or LoRA adapters on
// its attention projections, plus the subject embedding, trained with epsilon MSE and AdamW on the loaded
// TorchScript modules. The loaded modules are left as they were. Internal to the core: Pipeline::finetune is the
// entry point.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/params.h"

namespace blipdiff {

struct LoadedModels;

enum class FinetuneMode { kFull, kLora };
FinetuneMode finetune_mode_from_string(std::string_view name);

// Explicit random draws (replace the seed's): CPU tensors.
struct FinetuneDraws {
  at::Tensor index;      // [steps, batch] int64, in [0, N)
  at::Tensor timesteps;  // [steps, batch] int64, in [0, num_train_timesteps)
  at::Tensor eps_vae;    // [steps, batch, C, h, w] float32
  at::Tensor noise;      // [steps, batch, C, h, w] float32
  std::map<std::string, at::Tensor> lora_init;  // module -> A [rank, in]; others are drawn from the seed
};

struct FinetuneParams {
  FinetuneMode mode = FinetuneMode::kFull;
  at::Tensor targets;                // [N, 3, S, S] float32 in [-1, 1]
  std::vector<int64_t> caption_ids;  // unpadded CLIP ids of "a {subject}"
  at::Tensor ctx_init;               // [1, Q, D] float32
  int64_t steps = 40;
  int64_t batch_size = 3;
  double lr = 5e-6;
  double weight_decay = 0.01;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  int64_t lora_rank = 4;
  double lora_alpha = 4;
  uint64_t seed = 0;
  std::optional<FinetuneDraws> draws;
  at::ScalarType save_dtype = at::kFloat;
  bool record = false;

  // Checks shapes and ranges that do not need the loaded modules (InvalidArgument naming the field).
  void validate(const ModelSpec& spec) const;
};

struct FinetuneProgress {
  int64_t step = 0;  // 1-based, sent when the step is done
  int64_t total = 0;
  double loss = 0;
};
using FinetuneProgressFn = std::function<void(const FinetuneProgress&)>;

struct FinetuneTimings {
  double prepare_ms = 0;  // VAE moments of the pictures, trainable copies, optimizer
  double train_ms = 0;
  double total_ms = 0;
  std::vector<double> step_ms;
};

struct FinetuneStep0 {
  at::Tensor latents, noisy, states;
  std::vector<std::pair<std::string, at::Tensor>> grads;  // "cache", "unet.<param>" or "<module>.A"/".B"
};

struct FinetuneResult {
  std::vector<double> losses;
  at::Tensor ctx;  // [1, Q, D] float32 CPU
  // full: every UNet parameter by name; lora: "<module>.lora.down.weight" / "<module>.lora.up.weight". CPU,
  // save_dtype, contiguous.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  FinetuneTimings timings;
  std::optional<FinetuneStep0> step0;
};

// The AdamW decay rule of LAVIS (get_optimizer_params): parameters with ndim >= 2 whose full name contains none
// of "bias", "ln", "bn" are decayed.
bool lavis_decays(const std::string& name, int64_t ndim);

// Runs the fine-tune on `models` (device and dtype of the loaded modules). On CUDA the forward runs under
// bfloat16 autocast with float32 master weights; on the CPU everything is float32. Throws AbortError when
// `cancel` is set (checked before every step), Error(codes::kOom) when memory runs out.
//
// Full mode trains either copies of the UNet's parameters (the loaded ones are put back at the end), or, with
// `train_in_place` (float32 modules), the loaded parameters themselves: 3.4 GB less at full size, and the caller
// must then reload the UNet afterwards, however the call ends.
FinetuneResult run_finetune(LoadedModels& models, const ModelSpec& spec, const c10::Device& device, DType dtype,
                            const FinetuneParams& params, const FinetuneProgressFn& progress,
                            const std::atomic<bool>& cancel, bool train_in_place);

}  // namespace blipdiff
