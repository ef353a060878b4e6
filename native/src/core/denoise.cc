#include "core/denoise.h"

#include <ATen/ATen.h>

#include "core/errors.h"
#include "core/module_calls.h"

namespace blipdiff {

at::Tensor denoise(LoadedModels& models, Scheduler& scheduler, const DenoiseInputs& in, const ProgressFn& progress,
                   const std::atomic<bool>& cancel, std::vector<at::Tensor>* record) {
  const std::vector<int64_t> timesteps = scheduler.timesteps();
  const int64_t calls = static_cast<int64_t>(timesteps.size());
  const int64_t total = scheduler.num_inference_steps();
  const std::string of_total = std::string("/").append(std::to_string(total));
  const c10::Device device = in.latents.device();
  at::Tensor latents = in.latents;
  for (int64_t i = 0; i < calls; ++i) {
    if (cancel.load()) throw AbortError();
    const int64_t t = timesteps[size_t(i)];
    const int64_t step = scheduler.step_of_call(i);
    const std::string step_name = std::string(" step ").append(std::to_string(step)).append(of_total);
    at::Tensor model_in = in.cfg ? at::cat({latents, latents}, 0) : latents;
    model_in = scheduler.scale_model_input(model_in, t).to(in.dtype);
    const at::Tensor timestep = at::scalar_tensor(t, at::TensorOptions().dtype(at::kLong).device(device));

    c10::IValue down_residuals;  // None
    c10::IValue mid_residual;    // None
    if (in.control && models.controlnet) {
      try {
        const c10::IValue out = models.controlnet->forward(
            {model_in, timestep, in.states, *in.control, in.conditioning_scale});
        const auto& parts = out.toTupleRef().elements();
        down_residuals = parts.at(0);
        mid_residual = parts.at(1);
      } catch (...) {
        rethrow_with_context("while running ControlNet" + step_name);
      }
    }
    at::Tensor noise;
    try {
      noise = first_tensor(models.unet.forward({model_in, timestep, in.states, down_residuals, mid_residual}), "unet")
                  .to(at::kFloat);
    } catch (...) {
      rethrow_with_context("while running UNet" + step_name);
    }
    if (in.cfg) {
      auto halves = noise.chunk(2, 0);
      noise = halves[0] + in.guidance * (halves[1] - halves[0]);
    }
    try {
      latents = scheduler.step(noise, t, latents);
    } catch (...) {
      rethrow_with_context("while running the scheduler" + step_name);
    }
    if (record) record->push_back(latents.to(at::kCPU, at::kFloat, false, true));
    const bool last_of_step = i + 1 == calls || scheduler.step_of_call(i + 1) != step;
    if (progress && last_of_step) progress({Phase::kDenoise, in.image, step, total});
  }
  return latents;
}

}  // namespace blipdiff
