// The prompt-to-prompt controller's state outside the UNet (edit.json "spec" sections 4 and 8): which controller
// steps replace cross- and self-attention, and LocalBlend's accumulated attention maps and mask. The per-layer
// edit of the attention probabilities runs inside the exported UNet (forward_edit, models/blipdiff_export); this
// is everything between its calls. No TorchScript here: testable on plain tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace blipdiff {

// Controller steps k = 0, 1, ... count the UNet evaluations of an editing loop (PNDM: N + 1, DDIM: N).
struct EditSchedule {
  int64_t cross_steps = 0;  // cross-attention replacement for k < cross_steps: int(cross_replace * (N + 1))
  int64_t self_begin = 0;   // self-attention replacement for self_begin <= k < self_end: int(N * 0.0) ..
  int64_t self_end = 0;     // .. int(N * self_replace)

  bool cross_active(int64_t k) const { return k < cross_steps; }
  bool self_active(int64_t k) const { return k >= self_begin && k < self_end; }
};

// LAVIS's rules (get_time_words_attention_alpha with one float; the self window from N whatever the scheduler):
// products in double, truncated toward zero as Python's int() does.
EditSchedule make_edit_schedule(int64_t steps, double cross_replace, double self_replace);

// LocalBlend from the source subject's tokens: after every scheduler step, the edited latents keep the source's
// values outside the mask.
class LocalBlend {
 public:
  // subject_alpha: [P] 0/1 over the text keys; level: l*, the UNet level of the LocalBlend layers (maps are
  // (h / 2^level) x (w / 2^level)); latent_h/w: the latents' size; threshold: compared as float32.
  LocalBlend(const at::Tensor& subject_alpha, int64_t level, double threshold, int64_t latent_h, int64_t latent_w);

  // Adds one evaluation's source probabilities, one [heads, Q, P] tensor per LocalBlend layer (call order), to
  // the layers' float32 accumulators.
  void accumulate(const std::vector<at::Tensor>& probs);

  struct Result {
    at::Tensor map;      // [1, 1, h*, w*] float32
    at::Tensor norm;     // [1, 1, h, w] float32: the max-pooled map upsampled (nearest) and divided by its max
    at::Tensor mask;     // [1, 1, h, w] float32 0/1: norm > threshold
    at::Tensor latents;  // [2, C, h, w]: row 0 unchanged, row 1 = x_src + mask * (x_edit - x_src)
  };
  // Blends `latents` ([src, edit]) with the mask of the maps accumulated so far.
  Result apply(const at::Tensor& latents) const;

  int64_t evaluations() const { return evaluations_; }

 private:
  at::Tensor subject_alpha_;  // [P] float32 on the latents' device
  int64_t level_;
  float threshold_;
  int64_t latent_h_, latent_w_;
  std::vector<at::Tensor> acc_;
  int64_t evaluations_ = 0;
};

}  // namespace blipdiff
