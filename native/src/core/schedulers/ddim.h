// DDIM (diffusers' DDIMScheduler with eta = 0, no thresholding) and its inverse step
// (DDIMInverseScheduler.step) for DDIM inversion.
// clip_sample (clamping the predicted x0 to [-clip_sample_range, clip_sample_range]) is off unless the
// config sets it. diffusers' DDIMScheduler defaults it to true, so DDIM built from a config that does not
// name it (the pipeline ships a PNDM config) would clamp; Stable Diffusion 1.5 and LAVIS run DDIM with
// clip_sample false, and clamping latents (which reach about +-20 in x0) ruins the images.
#pragma once

#include "core/schedulers/scheduler.h"

namespace blipdiff {

class DdimScheduler : public Scheduler {
 public:
  explicit DdimScheduler(const SchedulerConfig& config);
  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) override;
  // DDIM inversion (DDIMInverseScheduler.step): from the sample at `timestep - ratio` to the noisier
  // sample at `timestep`; `timestep` is the target, as in diffusers.
  at::Tensor inverse_step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) const;

 private:
  // (pred_original_sample, pred_epsilon) for the configured prediction type.
  std::pair<at::Tensor, at::Tensor> predict(const at::Tensor& model_output, const at::Tensor& sample,
                                            float alpha_prod_t) const;
  bool clip_sample_;
  double clip_sample_range_;
};

}  // namespace blipdiff
