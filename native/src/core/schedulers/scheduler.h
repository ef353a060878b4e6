// Diffusion schedulers with the diffusers contract: set_timesteps(n), timesteps(), step(), add_noise().
// Each is stateful per run (create one per generation) and driven by a diffusers scheduler config.
// Tensors may live on any device; the scalar coefficients are computed in float32 like the reference.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "core/params.h"

namespace blipdiff {

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);
  virtual ~Scheduler() = default;

  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // One entry per model evaluation, in order (PNDM repeats one).
  const std::vector<int64_t>& timesteps() const { return timesteps_; }
  // One scheduler step: the sample at the previous (less noisy) timestep.
  virtual at::Tensor step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) = 0;

  double init_noise_sigma() const { return 1.0; }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t /*timestep*/) const { return sample; }
  // sqrt(a_t) * original + sqrt(1 - a_t) * noise, for a single timestep.
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, int64_t timestep) const;

  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_t_; }
  int64_t num_train_timesteps() const { return num_train_timesteps_; }

 protected:
  // alphas_cumprod[t] as float32, checked.
  float alpha_cumprod(int64_t t) const;
  void check_steps(int64_t n) const;
  void check_timestep(int64_t t) const;

  std::string prediction_type_;
  std::string timestep_spacing_;
  int64_t num_train_timesteps_;
  int64_t steps_offset_;
  bool set_alpha_to_one_;
  float final_alpha_cumprod_;
  at::Tensor alphas_cumprod_t_;        // float32 CPU [num_train_timesteps]
  std::vector<float> alphas_cumprod_;  // the same values, for scalar lookups
  std::vector<int64_t> timesteps_;
  int64_t num_inference_steps_ = 0;
};

std::unique_ptr<Scheduler> make_scheduler(SchedulerKind kind, const SchedulerConfig& config);

}  // namespace blipdiff
