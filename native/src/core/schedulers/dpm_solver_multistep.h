// DPM-Solver++ (2M by default), as diffusers' DPMSolverMultistepScheduler with algorithm_type
// "dpmsolver++", solver_type midpoint or heun, solver_order 1 or 2, lower_order_final, and
// final_sigmas_type "zero" or "sigma_last". Karras/exponential/beta sigmas and SDE variants are refused.
#pragma once

#include "core/schedulers/scheduler.h"

namespace blipdiff {

class DpmSolverMultistepScheduler : public Scheduler {
 public:
  explicit DpmSolverMultistepScheduler(const SchedulerConfig& config);
  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) override;

 private:
  at::Tensor convert_model_output(const at::Tensor& model_output, const at::Tensor& sample) const;
  at::Tensor first_order_update(const at::Tensor& x0, const at::Tensor& sample) const;
  at::Tensor second_order_update(const at::Tensor& sample) const;

  int64_t solver_order_;
  std::string solver_type_;
  bool lower_order_final_;
  bool euler_at_final_;
  std::string final_sigmas_type_;
  std::vector<float> train_sigmas_;  // ((1 - a) / a) ** 0.5 in float32, per training timestep
  std::vector<float> sigmas_;        // per inference step, plus the final sigma
  std::vector<at::Tensor> model_outputs_;
  int64_t lower_order_nums_ = 0;
  int64_t step_index_ = -1;
};

}  // namespace blipdiff
