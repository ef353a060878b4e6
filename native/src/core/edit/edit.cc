#include "core/edit/edit.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>

#include "core/arg_checks.h"
#include "core/edit/controller.h"
#include "core/errors.h"
#include "core/model.h"
#include "core/module_calls.h"
#include "core/pipeline.h"
#include "core/schedulers/scheduler.h"

namespace blipdiff {

namespace {

using arg_checks::expect;
using arg_checks::str;

void expect_ids(const std::vector<int64_t>& ids, int64_t n, const std::string& what, const std::string& name) {
  expect(static_cast<int64_t>(ids.size()) == n, str(n) + " ids (" + what + ")", name, str(ids.size()) + " ids");
}

at::Tensor cpu(const at::Tensor& t) { return t.to(at::kCPU, at::kFloat, false, true).contiguous(); }

// The "a.b.0.c" diffusers module names of the UNet's attention layers, in call order (exporter attribute).
std::vector<std::string> string_list(const torch::jit::Module& m, const char* attr) {
  std::vector<std::string> out;
  if (!m.hasattr(attr)) return out;
  for (const c10::IValue& v : m.attr(attr).toListRef()) out.push_back(v.toStringRef());
  return out;
}

}  // namespace

std::string_view to_string(EditProgress::Phase phase) {
  switch (phase) {
    case EditProgress::Phase::kText: return "text";
    case EditProgress::Phase::kEncode: return "encode";
    case EditProgress::Phase::kInversion: return "inversion";
    case EditProgress::Phase::kEdit: return "edit";
    case EditProgress::Phase::kDecode: return "decode";
  }
  return "edit";
}

void EditParams::validate(const ModelSpec& spec) const {
  const int64_t p = spec.text_max_length;
  expect_ids(uncond_ids, p, "textMaxLength", "uncondIds");
  expect_ids(src_ids, p, "textMaxLength", "srcIds");
  expect_ids(edit_ids, p - spec.num_query_tokens, "textMaxLength - numQueryTokens", "editIds");
  expect(static_cast<int64_t>(mapper.size()) == p, str(p) + " entries (textMaxLength)", "mapper",
         str(mapper.size()) + " entries");
  for (int64_t m : mapper) expect(m >= -1 && m < p, "entries in [-1, textMaxLength)", "mapper", str(m));
  expect(static_cast<int64_t>(alphas.size()) == p, str(p) + " entries (textMaxLength)", "alphas",
         str(alphas.size()) + " entries");
  expect(static_cast<int64_t>(subject_alpha.size()) == p, str(p) + " entries (textMaxLength)", "subjectAlpha",
         str(subject_alpha.size()) + " entries");
  for (float a : alphas) expect(a == 0.0f || a == 1.0f, "0 or 1", "alphas", str(a));
  for (float a : subject_alpha) expect(a == 0.0f || a == 1.0f, "0 or 1", "subjectAlpha", str(a));
  validate_query_size_steps(spec, query_embeds, width, height, steps);
  expect(std::isfinite(guidance) && guidance > 1.0,
         "a finite number > 1 (the edit's 4-way batch needs classifier-free guidance)", "guidance", str(guidance));
  expect(cross_replace >= 0 && cross_replace <= 1, "a number in [0, 1]", "crossReplace", str(cross_replace));
  expect(self_replace >= 0 && self_replace <= 1, "a number in [0, 1]", "selfReplace", str(self_replace));
  expect(blend_threshold >= 0 && blend_threshold <= 1, "a number in [0, 1]", "blendThreshold", str(blend_threshold));
  validate_latents(spec, latents, width, height);
  if (image) {
    const std::vector<int64_t> shape = {1, 3, height, width};
    expect(image->sizes() == at::IntArrayRef(shape), "a " + str(at::IntArrayRef(shape)) + " tensor", "image",
           str(image->sizes()));
    expect_ids(inversion_ids, p, "textMaxLength", "inversionIds");
    expect(inversion_steps >= 0 && inversion_steps <= 1000, "an integer in [1, 1000]", "inversionSteps",
           str(inversion_steps));
  }
}

void require_attention_control(const LoadedModels& models) {
  if (!models.unet.find_method("forward_edit") || !models.unet.hasattr("edit_blend_level")) {
    throw Error(codes::kModel,
                "this model's UNet has no attention-control path, which editing needs (it was exported before "
                "blipdiff 0.3.0's exporter); convert the checkpoint again with `blipdiff convert`");
  }
}

namespace {

// One editing run's fixed inputs on the device.
struct EditContext {
  LoadedModels& models;
  const ModelSpec& spec;
  c10::Device device;
  at::ScalarType dtype;
  const EditParams& params;
  const EditProgressFn& progress;
  const std::atomic<bool>& cancel;
};

at::Tensor encode_text(EditContext& c, const std::vector<int64_t>& ids, const c10::IValue& ctx) {
  const at::Tensor t = at::tensor(ids, at::kLong).reshape({1, static_cast<int64_t>(ids.size())}).to(c.device);
  return first_tensor(c.models.text_encoder.forward({t, ctx, c.spec.ctx_begin_pos}), "text_encoder");
}

void report(EditContext& c, EditProgress::Phase phase, int64_t step, int64_t total) {
  if (c.progress) c.progress({phase, step, total});
}

// DDIM inversion (spec section 10) of x0 [1, C, h, w]: guidance 1, plain attention, timesteps in increasing order.
at::Tensor invert(EditContext& c, const at::Tensor& x0, const at::Tensor& states, int64_t steps, EditRecord* record) {
  SchedulerConfig config = c.spec.scheduler;
  config.set("clip_sample", false);
  auto ddim = make_scheduler(SchedulerKind::kDdim, config);
  ddim->set_timesteps(steps);
  std::vector<int64_t> ts = ddim->timesteps();
  std::reverse(ts.begin(), ts.end());
  const int64_t ratio = ddim->num_train_timesteps() / steps;
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(c.device);
  at::Tensor x = x0;
  for (size_t i = 0; i < ts.size(); ++i) {
    if (c.cancel.load()) throw AbortError();
    const int64_t t = ts[i];
    at::Tensor eps;
    try {
      const at::Tensor timestep = at::scalar_tensor(t, at::TensorOptions().dtype(at::kLong).device(c.device));
      eps = first_tensor(c.models.unet.forward({x.to(c.dtype), timestep, states, c10::IValue(), c10::IValue()}),
                         "unet")
                .to(at::kFloat);
    } catch (...) {
      rethrow_with_context("while running UNet inversion step " + std::to_string(i + 1) + "/" +
                           std::to_string(ts.size()));
    }
    const int64_t t_prev = t - ratio;
    const at::Tensor a = at::scalar_tensor(t_prev >= 0 ? ddim->alpha_at(t_prev) : ddim->final_alpha_cumprod(), f32);
    const at::Tensor b = at::scalar_tensor(ddim->alpha_at(t), f32);
    // x = b^0.5 * ((a^-0.5 - b^-0.5) * x + ((1/b - 1)^0.5 - (1/a - 1)^0.5) * eps) + x, in this order.
    x = b.pow(0.5) * ((a.pow(-0.5) - b.pow(-0.5)) * x + ((1 / b - 1).pow(0.5) - (1 / a - 1).pow(0.5)) * eps) + x;
    if (record) record->inversion.emplace_back(cpu(eps), cpu(x));
    report(c, EditProgress::Phase::kInversion, static_cast<int64_t>(i) + 1, static_cast<int64_t>(ts.size()));
  }
  return x;
}

}  // namespace

EditResult run_edit(LoadedModels& models, const ModelSpec& spec, const c10::Device& device, DType dtype_kind,
                    const EditParams& params, const EditProgressFn& progress, const std::atomic<bool>& cancel) {
  require_attention_control(models);
  const auto start = Clock::now();
  const at::ScalarType dtype = to_scalar_type(dtype_kind);
  c10::InferenceMode inference;
  InferenceGraphs graphs(device);
  EditContext c{models, spec, device, dtype, params, progress, cancel};
  EditResult result;
  result.seed = params.seed;
  std::optional<EditRecord> rec;
  if (params.record) rec.emplace();
  const int64_t f = spec.latent_scale;
  const int64_t lh = params.height / f, lw = params.width / f;
  const bool real = params.image.has_value();

  // 1. The initial draw before anything else (as generate), so a seed means the same latents.
  at::Tensor x_t;
  if (!real) x_t = params.latents ? params.latents->to(at::kFloat) : draw_latents(params.seed, spec.latent_channels, lh, lw);

  // 2. Text: ehs4 = [uncond, uncond, cond_src, cond_edit].
  auto text_start = Clock::now();
  at::Tensor states, inv_states;
  try {
    const at::Tensor uncond = encode_text(c, params.uncond_ids, c10::IValue());
    const at::Tensor cond_src = encode_text(c, params.src_ids, c10::IValue());
    const at::Tensor cond_edit = encode_text(c, params.edit_ids, params.query_embeds.to(device, dtype));
    states = at::cat({uncond, uncond, cond_src, cond_edit}, 0);
    if (real) inv_states = encode_text(c, params.inversion_ids, c10::IValue());
    sync_device(device);
  } catch (...) {
    rethrow_with_context("while encoding the prompts");
  }
  report(c, EditProgress::Phase::kText, 1, 1);
  result.timings.text_ms = ms_since(text_start);
  if (rec) {
    rec->text_states = cpu(states);
    if (real) rec->inv_text_states = cpu(inv_states);
  }
  if (cancel.load()) throw AbortError();

  // 3. A real picture: posterior mean, then DDIM inversion.
  if (real) {
    auto inv_start = Clock::now();
    at::Tensor x0;
    try {
      const c10::IValue out = models.vae_encoder.forward({params.image->to(device, dtype)});
      x0 = first_tensor(out, "vae_encoder").to(at::kFloat) * spec.vae_scaling_factor;
    } catch (...) {
      rethrow_with_context("while encoding the picture with the VAE");
    }
    report(c, EditProgress::Phase::kEncode, 1, 1);
    if (rec) rec->latents_x0 = cpu(x0);
    const int64_t inv_steps = params.inversion_steps > 0 ? params.inversion_steps : params.steps;
    x_t = invert(c, x0, inv_states, inv_steps, rec ? &*rec : nullptr);
    sync_device(device);
    result.timings.inversion_ms = ms_since(inv_start);
  }
  if (rec) rec->latents_init = cpu(x_t);

  // 4. The editing loop: PNDM for a generated source, DDIM (clip_sample off) for a real one.
  auto edit_start = Clock::now();
  std::unique_ptr<Scheduler> scheduler;
  if (real) {
    SchedulerConfig config = spec.scheduler;
    config.set("clip_sample", false);
    scheduler = make_scheduler(SchedulerKind::kDdim, config);
  } else {
    scheduler = make_scheduler(SchedulerKind::kPndm, spec.scheduler);
  }
  scheduler->set_timesteps(params.steps);
  const EditSchedule schedule = make_edit_schedule(params.steps, params.cross_replace, params.self_replace);
  const int64_t p = spec.text_max_length;
  const at::Tensor mapper = at::tensor(params.mapper, at::kLong).to(device);
  const at::Tensor alphas = at::tensor(params.alphas, at::kFloat).to(device, dtype);
  const at::Tensor ones = at::ones({p}, at::TensorOptions().dtype(dtype).device(device));
  const at::Tensor zeros = at::zeros({p}, at::TensorOptions().dtype(dtype).device(device));
  const int64_t level = models.unet.attr("edit_blend_level").toInt();
  LocalBlend blend(at::tensor(params.subject_alpha, at::kFloat).to(device), level, params.blend_threshold, lh, lw);
  const std::vector<std::string> layer_names = string_list(models.unet, "edit_layer_names");
  torch::jit::Method forward_edit = models.unet.get_method("forward_edit");

  const std::vector<int64_t> timesteps = scheduler->timesteps();
  const int64_t calls = static_cast<int64_t>(timesteps.size());
  const int64_t total = scheduler->num_inference_steps();
  at::Tensor x = at::cat({x_t, x_t}, 0).to(device) * scheduler->init_noise_sigma();
  for (int64_t k = 0; k < calls; ++k) {
    if (cancel.load()) throw AbortError();
    const int64_t t = timesteps[size_t(k)];
    const int64_t step = scheduler->step_of_call(k);
    const bool control = !params.no_control;
    const bool cross = control && schedule.cross_active(k);
    const bool self = control && schedule.self_active(k);
    const bool record_attn = rec && k == 0;
    at::Tensor e;
    std::vector<at::Tensor> blend_probs;
    try {
      const at::Tensor model_in = scheduler->scale_model_input(at::cat({x, x}, 0), t).to(dtype);
      const at::Tensor timestep = at::scalar_tensor(t, at::TensorOptions().dtype(at::kLong).device(device));
      const c10::IValue out = forward_edit({model_in, timestep, states, mapper, alphas, cross ? ones : zeros, cross,
                                            self, control, record_attn});
      const auto& parts = out.toTupleRef().elements();
      e = parts.at(0).toTensor().to(at::kFloat);
      for (const c10::IValue& v : parts.at(1).toListRef()) blend_probs.push_back(v.toTensor());
      if (record_attn) {
        const auto recorded = parts.at(2).toListRef();
        for (size_t i = 0; i < recorded.size(); ++i) {
          const std::string name = i < layer_names.size() ? layer_names[i] : "layer" + std::to_string(i);
          rec->attn_step0.emplace_back(name, cpu(recorded[i].toTensor()));
        }
      }
    } catch (...) {
      rethrow_with_context("while running the UNet (editing step " + std::to_string(step) + "/" +
                           std::to_string(total) + ")");
    }
    // Rows of e: [uncond_src, uncond_edit, cond_src, cond_edit].
    const at::Tensor uncond = e.narrow(0, 0, 2), cond = e.narrow(0, 2, 2);
    const at::Tensor guided = uncond + params.guidance * (cond - uncond);
    // A real picture's source branch takes the unguided conditional output, so that it reconstructs the picture.
    const at::Tensor noise = real ? at::cat({cond.narrow(0, 0, 1), guided.narrow(0, 1, 1)}, 0) : guided;
    try {
      x = scheduler->step(noise, t, x);
    } catch (...) {
      rethrow_with_context("while running the scheduler (editing step " + std::to_string(step) + ")");
    }
    EditStepRecord sr;
    if (rec) {
      sr.unet_out = cpu(e);
      sr.noise_pred = cpu(noise);
      sr.latents_pre_blend = cpu(x);
    }
    if (control) {
      blend.accumulate(blend_probs);
      LocalBlend::Result b = blend.apply(x);
      x = b.latents;
      if (rec) {
        sr.lb_map = cpu(b.map);
        sr.lb_norm = cpu(b.norm);
        sr.lb_mask = cpu(b.mask);
      }
    }
    if (rec) {
      sr.latents = cpu(x);
      rec->steps.push_back(std::move(sr));
    }
    const bool last_of_step = k + 1 == calls || scheduler->step_of_call(k + 1) != step;
    if (last_of_step) report(c, EditProgress::Phase::kEdit, step, total);
  }
  sync_device(device);
  result.timings.edit_ms = ms_since(edit_start);
  if (!at::isfinite(x).all().item<bool>()) {
    throw Error(codes::kNonFinite,
                "the edited latents became non-finite (NaN or Inf) and were not decoded: likely caused by an extreme "
                "subject embedding or guidance scale" +
                    std::string(dtype_kind == DType::kFloat16 ? " (or a float16 overflow; try --dtype bfloat16)" : ""));
  }
  if (rec) rec->latents_final = cpu(x);

  // 5. Decoding, one row at a time: [source, edited].
  auto decode_start = Clock::now();
  for (int64_t row = 0; row < 2; ++row) {
    if (cancel.load()) throw AbortError();
    try {
      const at::Tensor z = x.narrow(0, row, 1) / spec.vae_scaling_factor;
      const at::Tensor decoded = first_tensor(models.vae_decoder.forward({z.to(dtype)}), "vae_decoder");
      result.images.push_back(to_image(decoded));
    } catch (...) {
      rethrow_with_context("while decoding the latents with the VAE");
    }
    report(c, EditProgress::Phase::kDecode, row + 1, 2);
  }
  result.timings.decode_ms = ms_since(decode_start);
  result.timings.total_ms = ms_since(start);
  result.record = std::move(rec);
  return result;
}

}  // namespace blipdiff
