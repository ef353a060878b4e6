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
  // The number of steps asked for in set_timesteps (PNDM makes one model evaluation more).
  int64_t num_inference_steps() const { return num_inference_steps_; }
  // The 1-based step, out of num_inference_steps(), that model evaluation `call` (an index into
  // timesteps()) belongs to. Every step ends with its last evaluation; progress is reported then.
  virtual int64_t step_of_call(int64_t call) const { return call + 1; }
  // One scheduler step: the sample at the previous (less noisy) timestep.
  virtual at::Tensor step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) = 0;

  double init_noise_sigma() const { return 1.0; }
  at::Tensor scale_model_input(const at::Tensor& sample, int64_t /*timestep*/) const { return sample; }
  // sqrt(a_t) * original + sqrt(1 - a_t) * noise, for a single timestep.
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise, int64_t timestep) const;

  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_t_; }
  int64_t num_train_timesteps() const { return num_train_timesteps_; }
  // alphas_cumprod[t] (checked) and the "previous" alpha of the last step (1 with set_alpha_to_one, else
  // alphas_cumprod[0]), float32 as the reference keeps them.
  float alpha_at(int64_t t) const { return alpha_cumprod(t); }
  float final_alpha_cumprod() const { return final_alpha_cumprod_; }

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

// "trailing" timestep spacing, descending: t_i = round(total + i * delta) - 1 for i in 0..n-1, where
// ratio = total / n and delta = (total - ratio) - total, in float64, rounded half to even. These are the
// first n values of the reference's np.round(np.arange(total, 0, -ratio)) - 1 (numpy's arange computes
// start + i * delta with that delta), bit for bit. For some n (61, 103, ... out of 1..1000) float error
// gives np.arange one value more, ending in timestep -1; we always give exactly n timesteps.
std::vector<int64_t> trailing_timesteps(int64_t total, int64_t n);

}  // namespace blipdiff
