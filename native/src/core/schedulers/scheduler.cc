#include "core/schedulers/scheduler.h"

#include <ATen/ATen.h>

#include <cmath>

#include "core/errors.h"
#include "core/schedulers/ddim.h"
#include "core/schedulers/dpm_solver_multistep.h"
#include "core/schedulers/pndm.h"

namespace blipdiff {

namespace {

// betas_for_alpha_bar with the cosine alpha_bar (diffusers' "squaredcos_cap_v2"), in float64 then float32.
at::Tensor cosine_betas(int64_t n) {
  std::vector<double> betas(static_cast<size_t>(n));
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
  for (int64_t i = 0; i < n; ++i) {
    const double t1 = double(i) / double(n), t2 = double(i + 1) / double(n);
    betas[static_cast<size_t>(i)] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999);
  }
  return at::tensor(betas, at::kDouble).to(at::kFloat);
}

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config)
    : prediction_type_(config.string("prediction_type", "epsilon")),
      timestep_spacing_(config.string("timestep_spacing", "leading")),
      num_train_timesteps_(config.integer("num_train_timesteps", 1000)),
      steps_offset_(config.integer("steps_offset", 0)),
      set_alpha_to_one_(config.boolean("set_alpha_to_one", false)) {
  if (num_train_timesteps_ < 2 || num_train_timesteps_ > 100000) {
    throw InvalidArgument("Expected an integer in [2, 100000] for scheduler config num_train_timesteps but received " +
                          std::to_string(num_train_timesteps_));
  }
  if (prediction_type_ != "epsilon" && prediction_type_ != "v_prediction" && prediction_type_ != "sample") {
    throw InvalidArgument("Expected epsilon, v_prediction or sample for scheduler config prediction_type but received " +
                          prediction_type_);
  }
  if (timestep_spacing_ != "leading" && timestep_spacing_ != "linspace" && timestep_spacing_ != "trailing") {
    throw InvalidArgument("Expected leading, linspace or trailing for scheduler config timestep_spacing but received " +
                          timestep_spacing_);
  }
  if (config.boolean("rescale_betas_zero_snr", false)) {
    throw InvalidArgument("scheduler config rescale_betas_zero_snr = true is not supported");
  }
  const int64_t n = num_train_timesteps_;
  at::Tensor betas;
  if (auto trained = config.numbers("trained_betas")) {
    if (static_cast<int64_t>(trained->size()) != n) {
      throw InvalidArgument("scheduler config trained_betas has " + std::to_string(trained->size()) +
                            " values, expected num_train_timesteps = " + std::to_string(n));
    }
    betas = at::tensor(*trained, at::kDouble).to(at::kFloat);
  } else {
    const std::string schedule = config.string("beta_schedule", "linear");
    const double b0 = config.number("beta_start", 0.0001), b1 = config.number("beta_end", 0.02);
    if (schedule == "linear") {
      betas = at::linspace(b0, b1, n, at::TensorOptions().dtype(at::kFloat));
    } else if (schedule == "scaled_linear") {
      betas = at::linspace(std::sqrt(b0), std::sqrt(b1), n, at::TensorOptions().dtype(at::kFloat)).pow(2);
    } else if (schedule == "squaredcos_cap_v2") {
      betas = cosine_betas(n);
    } else {
      throw InvalidArgument("Expected linear, scaled_linear or squaredcos_cap_v2 for scheduler config beta_schedule "
                            "but received " + schedule);
    }
  }
  const at::Tensor alphas = 1.0 - betas;
  alphas_cumprod_t_ = at::cumprod(alphas, 0).contiguous();
  const float* p = alphas_cumprod_t_.data_ptr<float>();
  alphas_cumprod_.assign(p, p + n);
  final_alpha_cumprod_ = set_alpha_to_one_ ? 1.0f : alphas_cumprod_[0];
}

float Scheduler::alpha_cumprod(int64_t t) const {
  check_timestep(t);
  return alphas_cumprod_[static_cast<size_t>(t)];
}

void Scheduler::check_steps(int64_t n) const {
  if (n < 1 || n > num_train_timesteps_) {
    throw InvalidArgument("Expected an integer in [1, " + std::to_string(num_train_timesteps_) +
                          "] for steps but received " + std::to_string(n));
  }
}

void Scheduler::check_timestep(int64_t t) const {
  if (t < 0 || t >= num_train_timesteps_) {
    throw InvalidArgument("Expected a timestep in [0, " + std::to_string(num_train_timesteps_ - 1) +
                          "] but received " + std::to_string(t));
  }
}

at::Tensor Scheduler::add_noise(const at::Tensor& original, const at::Tensor& noise, int64_t timestep) const {
  const float a = alpha_cumprod(timestep);
  return original * std::sqrt(a) + noise * std::sqrt(1.0f - a);
}

std::vector<int64_t> trailing_timesteps(int64_t total, int64_t n) {
  const double start = static_cast<double>(total);
  const double ratio = start / static_cast<double>(n);
  const double delta = (start - ratio) - start;
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    // volatile: the product is rounded on its own, as numpy does; a fused multiply-add would not round it.
    const volatile double offset = static_cast<double>(i) * delta;
    out.push_back(static_cast<int64_t>(std::nearbyint(start + offset)) - 1);
  }
  return out;
}

std::unique_ptr<Scheduler> make_scheduler(SchedulerKind kind, const SchedulerConfig& config) {
  switch (kind) {
    case SchedulerKind::kDdim:
      return std::make_unique<DdimScheduler>(config);
    case SchedulerKind::kDpmpp2m:
      return std::make_unique<DpmSolverMultistepScheduler>(config);
    case SchedulerKind::kPndm:
      break;
  }
  return std::make_unique<PndmScheduler>(config);
}

}  // namespace blipdiff
