// The denoising loop (internal to the core).
#pragma once

#include <atomic>
#include <optional>
#include <vector>

#include "core/model.h"
#include "core/params.h"
#include "core/schedulers/scheduler.h"

namespace blipdiff {

struct DenoiseInputs {
  at::Tensor latents;        // [1, C, h, w] float32 on the device
  at::Tensor states;         // [B, L, D] in the model dtype: [uncond; cond] with CFG, else cond
  bool cfg = false;
  double guidance = 1.0;
  std::optional<at::Tensor> control;  // [B, 3, H, W] in the model dtype, batch matched to states
  double conditioning_scale = 1.0;
  int64_t image = 0;
  at::ScalarType dtype = at::kFloat;
};

// Runs every scheduler timestep; returns the final latents (float32, device). With `record`, appends
// the latents after each model evaluation (float32, CPU; one per scheduler timestep). Progress reports
// the steps asked for: one event per step, {step, total = scheduler.num_inference_steps()}, sent after
// the step's last model evaluation (PNDM's first step has two).
at::Tensor denoise(LoadedModels& models, Scheduler& scheduler, const DenoiseInputs& in, const ProgressFn& progress,
                   const std::atomic<bool>& cancel, std::vector<at::Tensor>* record);

}  // namespace blipdiff
