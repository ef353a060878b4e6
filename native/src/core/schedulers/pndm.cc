#include "core/schedulers/pndm.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

#include "core/errors.h"

namespace blipdiff {

PndmScheduler::PndmScheduler(const SchedulerConfig& config) : Scheduler(config) {
  if (!config.boolean("skip_prk_steps", false)) {
    throw InvalidArgument("PNDM with skip_prk_steps = false (Runge-Kutta warm-up) is not supported");
  }
}

void PndmScheduler::set_timesteps(int64_t n) {
  check_steps(n);
  const int64_t total = num_train_timesteps_;
  std::vector<int64_t> base(static_cast<size_t>(n));
  if (timestep_spacing_ == "linspace") {
    // np.linspace(0, total - 1, n).round()
    for (int64_t i = 0; i < n; ++i) {
      const double v = n == 1 ? 0.0 : double(total - 1) * double(i) / double(n - 1);
      base[size_t(i)] = static_cast<int64_t>(std::nearbyint(v));
    }
  } else if (timestep_spacing_ == "leading") {
    const int64_t ratio = total / n;
    for (int64_t i = 0; i < n; ++i) base[size_t(i)] = i * ratio + steps_offset_;
  } else {  // trailing, ascending here
    const std::vector<int64_t> desc = trailing_timesteps(total, n);
    base.assign(desc.rbegin(), desc.rend());
  }
  // plms = base[:-1] + base[-2:-1] + base[-1:], reversed.
  std::vector<int64_t> plms(base.begin(), base.end() - 1);
  if (base.size() >= 2) plms.push_back(base[base.size() - 2]);
  plms.push_back(base.back());
  timesteps_.assign(plms.rbegin(), plms.rend());
  num_inference_steps_ = n;
  ets_.clear();
  cur_sample_ = at::Tensor();
  counter_ = 0;
}

int64_t PndmScheduler::step_of_call(int64_t call) const {
  const bool repeated = static_cast<int64_t>(timesteps_.size()) == num_inference_steps_ + 1;
  return repeated ? std::max<int64_t>(call, 1) : call + 1;
}

at::Tensor PndmScheduler::step(const at::Tensor& model_output, int64_t timestep, const at::Tensor& sample) {
  if (num_inference_steps_ == 0) throw Error(codes::kRuntime, "PNDM step() called before set_timesteps()");
  const int64_t ratio = num_train_timesteps_ / num_inference_steps_;
  int64_t prev_timestep = timestep - ratio;
  if (counter_ != 1) {
    if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
    ets_.push_back(model_output);
  } else {
    prev_timestep = timestep;
    timestep = timestep + ratio;
  }

  at::Tensor eps;
  at::Tensor x = sample;
  const size_t n = ets_.size();
  if (n == 1 && counter_ == 0) {
    eps = model_output;
    cur_sample_ = sample;
  } else if (n == 1 && counter_ == 1) {
    eps = (model_output + ets_.back()) / 2;
    x = cur_sample_;
    cur_sample_ = at::Tensor();
  } else if (n == 2) {
    eps = (3 * ets_[n - 1] - ets_[n - 2]) / 2;
  } else if (n == 3) {
    eps = (23 * ets_[n - 1] - 16 * ets_[n - 2] + 5 * ets_[n - 3]) / 12;
  } else {
    eps = (1.0 / 24) * (55 * ets_[n - 1] - 59 * ets_[n - 2] + 37 * ets_[n - 3] - 9 * ets_[n - 4]);
  }
  at::Tensor prev = prev_sample(x, timestep, prev_timestep, eps);
  ++counter_;
  return prev;
}

at::Tensor PndmScheduler::prev_sample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                                      const at::Tensor& model_output) const {
  // float32 scalar arithmetic, as the reference does with 0-dim float32 tensors.
  const float a_t = alpha_cumprod(timestep);
  const float a_prev = prev_timestep >= 0 ? alpha_cumprod(prev_timestep) : final_alpha_cumprod_;
  const float b_t = 1.0f - a_t;
  const float b_prev = 1.0f - a_prev;
  at::Tensor eps = model_output;
  if (prediction_type_ == "v_prediction") {
    eps = std::sqrt(a_t) * model_output + std::sqrt(b_t) * sample;
  } else if (prediction_type_ != "epsilon") {
    throw InvalidArgument("PNDM supports prediction_type epsilon or v_prediction, not " + prediction_type_);
  }
  const float sample_coeff = std::sqrt(a_prev / a_t);
  const float denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
  return sample_coeff * sample - (a_prev - a_t) * eps / denom;
}

}  // namespace blipdiff
