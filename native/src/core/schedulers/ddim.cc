#include "core/schedulers/ddim.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace blipdiff {

DdimScheduler::DdimScheduler(const SchedulerConfig& config)
    : Scheduler(config),
      clip_sample_(config.boolean("clip_sample", false)),
      clip_sample_range_(config.number("clip_sample_range", 1.0)) {
  if (config.boolean("thresholding", false)) {
    throw InvalidArgument("DDIM with thresholding = true is not supported");
  }
}

void DdimScheduler::set_timesteps(int64_t n) {
  check_steps(n);
  const int64_t total = num_train_timesteps_;
  timesteps_.clear();
  if (timestep_spacing_ == "linspace") {
    for (int64_t i = n - 1; i >= 0; --i) {
      const double v = n == 1 ? 0.0 : double(total - 1) * double(i) / double(n - 1);
      timesteps_.push_back(static_cast<int64_t>(std::nearbyint(v)));
    }
  } else if (timestep_spacing_ == "leading") {
    const int64_t ratio = total / n;
    for (int64_t i = n - 1; i >= 0; --i) timesteps_.push_back(i * ratio + steps_offset_);
  } else {  // trailing
    timesteps_ = trailing_timesteps(total, n);
  }
  num_inference_steps_ = n;
}

std::pair<at::Tensor, at::Tensor> DdimScheduler::predict(const at::Tensor& model_output, const at::Tensor& sample,
                                                         float a_t) const {
  const float b_t = 1.0f - a_t;
  at::Tensor x0, eps;
  if (prediction_type_ == "epsilon") {
    x0 = (sample - std::sqrt(b_t) * model_output) / std::sqrt(a_t);
    eps = model_output;
  } else if (prediction_type_ == "sample") {
    x0 = model_output;
    eps = (sample - std::sqrt(a_t) * x0) / std::sqrt(b_t);
  } else {
    x0 = std::sqrt(a_t) * sample - std::sqrt(b_t) * model_output;
    eps = std::sqrt(a_t) * model_output + std::sqrt(b_t) * sample;
  }
  if (clip_sample_) x0 = x0.clamp(-clip_sample_range_, clip_sample_range_);
  return {x0, eps};
}

at::Tensor DdimScheduler::step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) {
  if (num_inference_steps_ == 0) throw Error(codes::kRuntime, "DDIM step() called before set_timesteps()");
  const int64_t prev_timestep = timestep - num_train_timesteps_ / num_inference_steps_;
  const float a_t = alpha_cumprod(timestep);
  const float a_prev = prev_timestep >= 0 ? alpha_cumprod(prev_timestep) : final_alpha_cumprod_;
  auto [x0, eps] = predict(model_output, sample, a_t);
  // eta = 0: no variance term.
  const at::Tensor direction = std::sqrt(1.0f - a_prev) * eps;
  return std::sqrt(a_prev) * x0 + direction;
}

at::Tensor DdimScheduler::inverse_step(const at::Tensor& model_output, int64_t timestep,
                                       const at::Tensor& sample) const {
  if (num_inference_steps_ == 0) throw Error(codes::kRuntime, "DDIM inverse_step() called before set_timesteps()");
  const int64_t prev_timestep = timestep;
  const int64_t from = std::min(timestep - num_train_timesteps_ / num_inference_steps_, num_train_timesteps_ - 1);
  const float a_t = from >= 0 ? alpha_cumprod(from) : (set_alpha_to_one_ ? 1.0f : alphas_cumprod_[0]);
  const float a_prev = alpha_cumprod(prev_timestep);
  auto [x0, eps] = predict(model_output, sample, a_t);
  const at::Tensor direction = std::sqrt(1.0f - a_prev) * eps;
  return std::sqrt(a_prev) * x0 + direction;
}

}  // namespace blipdiff
