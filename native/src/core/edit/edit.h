// Subject-driven prompt-to-prompt editing (edit.json "spec"): a generated source (PNDM, from one seed) or a real
// picture (VAE posterior mean, DDIM inversion, then DDIM), edited with a 4-way guidance batch
// [uncond, uncond, cond_src, cond_edit] through the UNet's attention-control method (forward_edit), with
// LocalBlend after every scheduler step. Internal to the core: Pipeline::edit is the entry point.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/params.h"

namespace blipdiff {

struct LoadedModels;

struct EditParams {
  at::Tensor query_embeds;              // [1, Q, D] float32
  std::vector<int64_t> uncond_ids;      // P ids (no ctx)
  std::vector<int64_t> src_ids;         // P ids (no ctx)
  std::vector<int64_t> edit_ids;        // P - Q ids (ctx spliced at ctx_begin_pos)
  std::vector<int64_t> mapper;          // P entries in [-1, P)
  std::vector<float> alphas;            // P entries, 0/1
  std::vector<float> subject_alpha;     // P entries, 0/1
  int64_t width = 512;
  int64_t height = 512;
  int64_t steps = 50;
  double guidance = 7.5;
  double cross_replace = 0.8;
  double self_replace = 0.4;
  double blend_threshold = 0.3;
  uint64_t seed = 0;
  std::optional<at::Tensor> latents;       // [1, C, h, w] (generated source)
  std::optional<at::Tensor> image;         // [1, 3, H, W] in [-1, 1] (real picture)
  std::vector<int64_t> inversion_ids;      // P ids (with image)
  int64_t inversion_steps = 0;             // 0: steps
  bool no_control = false;
  bool record = false;
  std::optional<UnetOverride> unet;

  // Checks everything that does not need the loaded modules (InvalidArgument naming the field).
  void validate(const ModelSpec& spec) const;
};

struct EditProgress {
  enum class Phase { kText, kEncode, kInversion, kEdit, kDecode };
  Phase phase = Phase::kText;
  int64_t step = 0;  // 1-based within the phase
  int64_t total = 0;
};
std::string_view to_string(EditProgress::Phase phase);
using EditProgressFn = std::function<void(const EditProgress&)>;

struct EditStepRecord {
  at::Tensor unet_out, noise_pred, latents_pre_blend, latents;
  std::optional<at::Tensor> lb_map, lb_norm, lb_mask;
};

struct EditRecord {
  at::Tensor text_states, latents_init, latents_final;
  std::optional<at::Tensor> latents_x0, inv_text_states;
  std::vector<std::pair<at::Tensor, at::Tensor>> inversion;  // (noise_pred, latents) per inversion step
  std::vector<EditStepRecord> steps;
  std::vector<std::pair<std::string, at::Tensor>> attn_step0;
};

struct EditTimings {
  double text_ms = 0, inversion_ms = 0, edit_ms = 0, decode_ms = 0, total_ms = 0;
};

struct EditResult {
  std::vector<Image> images;  // [source, edited]
  uint64_t seed = 0;
  EditTimings timings;
  std::optional<EditRecord> record;
};

// Whether `unet` has the attention-control method; Error(kModel) saying to re-convert the model otherwise.
void require_attention_control(const LoadedModels& models);

EditResult run_edit(LoadedModels& models, const ModelSpec& spec, const c10::Device& device, DType dtype,
                    const EditParams& params, const EditProgressFn& progress, const std::atomic<bool>& cancel);

}  // namespace blipdiff
