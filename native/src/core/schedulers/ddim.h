// DDIM (diffusers' DDIMScheduler with eta = 0, no clipping or thresholding) and its inverse step
// (DDIMInverseScheduler.step) for DDIM inversion.
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
