// PNDM in PLMS mode (skip_prk_steps), as diffusers' PNDMScheduler: the second-to-last training
// timestep is repeated, the second step restarts from the first step's input with (e1 + e0) / 2, and
// later steps use linear multistep formulas on the last up to 4 model outputs.
#pragma once

#include "core/schedulers/scheduler.h"

namespace blipdiff {

class PndmScheduler : public Scheduler {
 public:
  explicit PndmScheduler(const SchedulerConfig& config);
  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) override;
  // PLMS evaluates the model twice in its first step (the repeated timestep: the second evaluation
  // restarts from the first one's input), so n steps make n + 1 evaluations: 0 and 1 are step 1.
  int64_t step_of_call(int64_t call) const override;

 private:
  at::Tensor prev_sample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                         const at::Tensor& model_output) const;

  std::vector<at::Tensor> ets_;  // model outputs of the multistep history (last 4)
  at::Tensor cur_sample_;        // the input of step 0, reused by step 1
  int64_t counter_ = 0;
};

}  // namespace blipdiff
