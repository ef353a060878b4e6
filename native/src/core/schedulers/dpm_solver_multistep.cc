#include "core/schedulers/dpm_solver_multistep.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "core/errors.h"

namespace blipdiff {

namespace {

// When the config comes from another scheduler class (the pipeline ships a PNDM config), the timestep
// spacing is this class's own default, as diffusers' from_config does for keys the original config left
// at their defaults: golden.json records "linspace" for DPM-Solver++ built from the pipeline's config.
SchedulerConfig own_defaults(SchedulerConfig config) {
  if (config.string("_class_name", "DPMSolverMultistepScheduler") != "DPMSolverMultistepScheduler") {
    config.set("timestep_spacing", std::string("linspace"));
  } else if (!config.has("timestep_spacing")) {
    config.set("timestep_spacing", std::string("linspace"));
  }
  return config;
}

struct AlphaSigma {
  float alpha;
  float sigma;
};

// alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t (float32, as the reference's 0-dim tensors).
AlphaSigma alpha_sigma(float sigma) {
  const float alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
  return {alpha, sigma * alpha};
}

float lambda(const AlphaSigma& as) { return std::log(as.alpha) - std::log(as.sigma); }

}  // namespace

DpmSolverMultistepScheduler::DpmSolverMultistepScheduler(const SchedulerConfig& config)
    : Scheduler(own_defaults(config)),
      solver_order_(config.integer("solver_order", 2)),
      solver_type_(config.string("solver_type", "midpoint")),
      lower_order_final_(config.boolean("lower_order_final", true)),
      euler_at_final_(config.boolean("euler_at_final", false)),
      final_sigmas_type_(config.string("final_sigmas_type", "zero")) {
  const std::string algorithm = config.string("algorithm_type", "dpmsolver++");
  if (algorithm != "dpmsolver++") {
    throw InvalidArgument("DPM-Solver supports algorithm_type dpmsolver++ only, not " + algorithm);
  }
  if (solver_order_ != 1 && solver_order_ != 2) {
    throw InvalidArgument("Expected 1 or 2 for scheduler config solver_order but received " +
                          std::to_string(solver_order_));
  }
  if (solver_type_ != "midpoint" && solver_type_ != "heun") {
    throw InvalidArgument("Expected midpoint or heun for scheduler config solver_type but received " + solver_type_);
  }
  if (final_sigmas_type_ != "zero" && final_sigmas_type_ != "sigma_last") {
    throw InvalidArgument("Expected zero or sigma_last for scheduler config final_sigmas_type but received " +
                          final_sigmas_type_);
  }
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                          "use_flow_sigmas", "thresholding", "use_dynamic_shifting"}) {
    if (config.boolean(key, false)) throw InvalidArgument(std::string("scheduler config ") + key + " is not supported");
  }
  if (config.has("lambda_min_clipped") && std::isfinite(config.number("lambda_min_clipped", 0))) {
    throw InvalidArgument("a finite scheduler config lambda_min_clipped is not supported");
  }
  // sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, as float32 tensor ops.
  const at::Tensor sigmas = ((1 - alphas_cumprod_t_) / alphas_cumprod_t_).pow(0.5).contiguous();
  const float* p = sigmas.data_ptr<float>();
  train_sigmas_.assign(p, p + sigmas.numel());
}

void DpmSolverMultistepScheduler::set_timesteps(int64_t n) {
  check_steps(n);
  const int64_t last = num_train_timesteps_;  // lambda_min_clipped = -inf clips nothing
  std::vector<int64_t> ts;
  if (timestep_spacing_ == "linspace") {
    // np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
    for (int64_t i = n; i >= 1; --i) {
      ts.push_back(static_cast<int64_t>(std::nearbyint(double(last - 1) * double(i) / double(n))));
    }
  } else if (timestep_spacing_ == "leading") {
    const int64_t ratio = last / (n + 1);
    for (int64_t i = n; i >= 1; --i) ts.push_back(i * ratio + steps_offset_);
  } else {  // trailing
    ts = trailing_timesteps(last, n);
  }
  for (int64_t t : ts) check_timestep(t);
  timesteps_ = ts;
  sigmas_.clear();
  for (int64_t t : ts) sigmas_.push_back(train_sigmas_[size_t(t)]);
  sigmas_.push_back(final_sigmas_type_ == "zero" ? 0.0f
                                                 : std::sqrt((1.0f - alphas_cumprod_[0]) / alphas_cumprod_[0]));
  num_inference_steps_ = static_cast<int64_t>(ts.size());
  model_outputs_.assign(size_t(solver_order_), at::Tensor());
  lower_order_nums_ = 0;
  step_index_ = -1;
}

at::Tensor DpmSolverMultistepScheduler::convert_model_output(const at::Tensor& model_output,
                                                             const at::Tensor& sample) const {
  const AlphaSigma s = alpha_sigma(sigmas_[size_t(step_index_)]);
  if (prediction_type_ == "epsilon") return (sample - s.sigma * model_output) / s.alpha;
  if (prediction_type_ == "sample") return model_output;
  return s.alpha * sample - s.sigma * model_output;  // v_prediction
}

at::Tensor DpmSolverMultistepScheduler::first_order_update(const at::Tensor& x0, const at::Tensor& sample) const {
  const AlphaSigma t = alpha_sigma(sigmas_[size_t(step_index_ + 1)]);
  const AlphaSigma s = alpha_sigma(sigmas_[size_t(step_index_)]);
  const float h = lambda(t) - lambda(s);
  return (t.sigma / s.sigma) * sample - (t.alpha * (std::exp(-h) - 1.0f)) * x0;
}

at::Tensor DpmSolverMultistepScheduler::second_order_update(const at::Tensor& sample) const {
  const AlphaSigma t = alpha_sigma(sigmas_[size_t(step_index_ + 1)]);
  const AlphaSigma s0 = alpha_sigma(sigmas_[size_t(step_index_)]);
  const AlphaSigma s1 = alpha_sigma(sigmas_[size_t(step_index_ - 1)]);
  const at::Tensor& m0 = model_outputs_[model_outputs_.size() - 1];
  const at::Tensor& m1 = model_outputs_[model_outputs_.size() - 2];
  const float h = lambda(t) - lambda(s0);
  const float h0 = lambda(s0) - lambda(s1);
  const float r0 = h0 / h;
  const at::Tensor& d0 = m0;
  const at::Tensor d1 = (1.0f / r0) * (m0 - m1);
  const float e = std::exp(-h) - 1.0f;
  if (solver_type_ == "midpoint") {
    return (t.sigma / s0.sigma) * sample - (t.alpha * e) * d0 - 0.5f * (t.alpha * e) * d1;
  }
  return (t.sigma / s0.sigma) * sample - (t.alpha * e) * d0 + (t.alpha * (e / h + 1.0f)) * d1;
}

at::Tensor DpmSolverMultistepScheduler::step(const at::Tensor& model_output, int64_t timestep,
                                             const at::Tensor& sample) {
  if (num_inference_steps_ == 0) throw Error(codes::kRuntime, "DPM-Solver step() called before set_timesteps()");
  if (step_index_ < 0) {
    // First call: the index of `timestep` in the schedule (the second match when it occurs twice).
    std::vector<int64_t> matches;
    for (size_t i = 0; i < timesteps_.size(); ++i) {
      if (timesteps_[i] == timestep) matches.push_back(int64_t(i));
    }
    step_index_ = matches.empty() ? num_inference_steps_ - 1 : matches[matches.size() > 1 ? 1 : 0];
  }
  if (step_index_ >= num_inference_steps_) {
    throw Error(codes::kRuntime, "DPM-Solver step() called more often than set_timesteps() allows");
  }
  const int64_t count = num_inference_steps_;
  const bool lower_order_final =
      step_index_ == count - 1 && (euler_at_final_ || (lower_order_final_ && count < 15) || final_sigmas_type_ == "zero");
  const bool lower_order_second = step_index_ == count - 2 && lower_order_final_ && count < 15;
  (void)lower_order_second;  // only selects between orders 2 and 3; order 3 is not supported

  const at::Tensor x0 = convert_model_output(model_output, sample);
  for (size_t i = 0; i + 1 < model_outputs_.size(); ++i) model_outputs_[i] = model_outputs_[i + 1];
  model_outputs_.back() = x0;

  const at::Tensor x = sample.to(at::kFloat);
  at::Tensor prev;
  if (solver_order_ == 1 || lower_order_nums_ < 1 || lower_order_final) {
    prev = first_order_update(x0, x);
  } else {
    prev = second_order_update(x);
  }
  if (lower_order_nums_ < solver_order_) ++lower_order_nums_;
  ++step_index_;
  return prev.to(model_output.scalar_type());
}

}  // namespace blipdiff
