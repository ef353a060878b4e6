#include "core/edit/controller.h"

#include <ATen/ATen.h>

#include <string>

#include "core/errors.h"

namespace blipdiff {

EditSchedule make_edit_schedule(int64_t steps, double cross_replace, double self_replace) {
  if (steps < 1) throw InvalidArgument("Expected at least 1 editing step but received " + std::to_string(steps));
  for (double f : {cross_replace, self_replace}) {
    if (!(f >= 0.0 && f <= 1.0)) {
      throw InvalidArgument("Expected replacement fractions in [0, 1] but received " + std::to_string(f));
    }
  }
  EditSchedule s;
  s.cross_steps = static_cast<int64_t>(cross_replace * static_cast<double>(steps + 1));
  s.self_begin = static_cast<int64_t>(static_cast<double>(steps) * 0.0);
  s.self_end = static_cast<int64_t>(static_cast<double>(steps) * self_replace);
  return s;
}

LocalBlend::LocalBlend(const at::Tensor& subject_alpha, int64_t level, double threshold, int64_t latent_h,
                       int64_t latent_w)
    : subject_alpha_(subject_alpha.to(at::kFloat)),
      level_(level),
      threshold_(static_cast<float>(threshold)),
      latent_h_(latent_h),
      latent_w_(latent_w) {
  const int64_t f = int64_t{1} << level;
  if (level < 0 || latent_h % f != 0 || latent_w % f != 0) {
    throw InvalidArgument("LocalBlend level " + std::to_string(level) + " does not divide the latents' size " +
                          std::to_string(latent_h) + "x" + std::to_string(latent_w));
  }
}

void LocalBlend::accumulate(const std::vector<at::Tensor>& probs) {
  if (acc_.empty()) {
    if (probs.empty()) throw Error(codes::kModel, "the UNet returned no LocalBlend attention maps");
    for (const at::Tensor& p : probs) acc_.push_back(p.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true));
  } else {
    if (probs.size() != acc_.size()) {
      throw Error(codes::kModel, "the UNet returned " + std::to_string(probs.size()) + " LocalBlend maps, expected " +
                                     std::to_string(acc_.size()));
    }
    for (size_t i = 0; i < probs.size(); ++i) acc_[i].add_(probs[i].to(at::kFloat));
  }
  ++evaluations_;
}

LocalBlend::Result LocalBlend::apply(const at::Tensor& latents) const {
  if (acc_.empty()) throw Error(codes::kRuntime, "LocalBlend has no attention maps yet");
  const int64_t hs = latent_h_ >> level_, ws = latent_w_ >> level_;
  const int64_t keys = subject_alpha_.size(0);
  std::vector<at::Tensor> maps;
  maps.reserve(acc_.size());
  for (const at::Tensor& a : acc_) {
    if (a.dim() != 3 || a.size(1) != hs * ws || a.size(2) != keys) {
      throw Error(codes::kModel, "a LocalBlend attention map has shape " + c10::str(a.sizes()) + ", expected [heads, " +
                                     std::to_string(hs * ws) + ", " + std::to_string(keys) + "]");
    }
    maps.push_back(a.reshape({1, a.size(0), 1, hs, ws, keys}));
  }
  // (1, heads total, 1, h*, w*, P) * subject tokens, summed over the keys, averaged over heads and layers.
  const at::Tensor alpha = subject_alpha_.to(latents.device());
  Result r;
  r.map = (at::cat(maps, 1).to(latents.device()) * alpha).sum(-1).mean(1);  // (1, 1, h*, w*)
  const at::Tensor pooled = at::max_pool2d(r.map, {3, 3}, {1, 1}, {1, 1});
  const at::Tensor up = at::upsample_nearest2d(pooled, {latent_h_, latent_w_});
  r.norm = up / up.max();
  r.mask = r.norm.gt(at::Scalar(threshold_)).to(at::kFloat);
  const at::Tensor x = latents.to(at::kFloat);
  const at::Tensor src = x.narrow(0, 0, 1);
  const at::Tensor edited = src + r.mask * (x.narrow(0, 1, 1) - src);
  r.latents = at::cat({src, edited}, 0);
  return r;
}

}  // namespace blipdiff
