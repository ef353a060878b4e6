#include "core/pipeline.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>

#include <chrono>

#include "core/cpu_allocator.h"
#include "core/denoise.h"
#include "core/diagnostics.h"
#include "core/errors.h"
#include "core/module_calls.h"
#include "core/model.h"
#include "core/schedulers/scheduler.h"
#include "core/unet_weights.h"
#include "core/verify.h"

namespace blipdiff {

namespace {

at::Tensor ids_tensor(const std::vector<int64_t>& ids, const c10::Device& device) {
  return at::tensor(ids, at::kLong).reshape({1, static_cast<int64_t>(ids.size())}).to(device);
}

bool all_finite(const at::Tensor& t) { return at::isfinite(t).all().item<bool>(); }

// Refuses NaN/Inf in an input tensor (Error code kNonFinite), naming the input and the likely cause.
void require_finite(const at::Tensor& t, const std::string& name, const std::string& cause) {
  if (!all_finite(t)) {
    throw Error(codes::kNonFinite,
                "Expected finite values for " + name + " but received NaN or Inf: " + cause);
  }
}

// The likely cause of non-finite values computed from finite inputs. float16 (on CUDA) overflows at
// 65504; bfloat16 has float32's range, so there the cause is the same as in float32.
std::string overflow_hint(DType dtype, const std::string& device, const std::string& float32_cause) {
  if (dtype == DType::kFloat16) {
    return "likely a float16 overflow on " + device + "; try `--dtype bfloat16` or `--dtype float32`";
  }
  return "likely caused by " + float32_cause;
}

}  // namespace

Pipeline::Pipeline() = default;
Pipeline::~Pipeline() = default;

at::Tensor draw_latents(uint64_t seed, int64_t channels, int64_t height, int64_t width) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn({1, channels, height, width}, gen, at::TensorOptions().dtype(at::kFloat));
}

void Pipeline::load(const ModelSpec& spec, const LoadOptions& options, const std::atomic<bool>* cancel) {
  init_runtime_diagnostics();
  ScopedWarningCapture capture(warnings_);
  emit_test_warnings("load");
  const c10::Device device = resolve_device(options.device);
  check_dtype_for_device(options.dtype, device);
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  auto models = std::make_unique<LoadedModels>(load_models(spec, options, device, cancel));
  spec_ = spec;
  options_ = options;
  models_ = std::move(models);
  device_name_ = device.str();
  dtype_ = options.dtype;
}

void Pipeline::unload() {
  ScopedWarningCapture capture(warnings_);
  models_.reset();
  release_cached_cpu_memory();
}

at::Tensor Pipeline::encode_subject(const at::Tensor& pixels, const at::Tensor& ids, const at::Tensor& mask,
                                    const std::atomic<bool>* cancel) {
  ScopedWarningCapture capture(warnings_);
  if (!models_) throw Error(codes::kNotLoaded, "the pipeline has no model loaded; call load() first");
  if (pixels.dim() != 4 || pixels.size(1) != 3 || pixels.size(2) != pixels.size(3)) {
    throw InvalidArgument("Expected a [B, 3, S, S] tensor for pixels but received " + c10::str(pixels.sizes()));
  }
  if (ids.dim() != 2 || ids.sizes() != mask.sizes() || ids.size(0) != pixels.size(0) || ids.size(1) < 1) {
    throw InvalidArgument("Expected [B, T] ids and mask with B = " + std::to_string(pixels.size(0)) +
                          " for ids/mask but received " + c10::str(ids.sizes()) + " / " + c10::str(mask.sizes()));
  }
  const c10::Device device(device_name_);
  c10::InferenceMode inference;
  InferenceGraphs graphs(device);
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  require_finite(pixels, "pixels", "the subject picture's pixel values are not finite");
  check_cancel(cancel, "encode");
  at::Tensor embeds;
  try {
    const c10::IValue out = models_->qformer.forward(
        {pixels.to(device, to_scalar_type(dtype_)), ids.to(device, at::kLong), mask.to(device, at::kLong)});
    embeds = first_tensor(out, "qformer").to(at::kCPU, at::kFloat).contiguous();
  } catch (...) {
    rethrow_with_context("while encoding the subject with the Q-Former");
  }
  check_cancel(cancel, "encoded");
  if (!all_finite(embeds)) {
    throw Error(codes::kNonFinite,
                "the Q-Former produced a non-finite (NaN or Inf) subject embedding: " +
                    overflow_hint(dtype_, device_name_, "the subject picture or the model weights"));
  }
  return embeds;
}

GenerateResult Pipeline::generate(const GenerateParams& params, const ProgressFn& progress,
                                  const std::atomic<bool>& cancel) {
  if (!models_) throw Error(codes::kNotLoaded, "the pipeline has no model loaded; call load() first");
  if (options_.subject_only) {
    throw Error(codes::kNotLoaded,
                "the pipeline was loaded for subject encoding only (subjectOnly); load it without subjectOnly to "
                "generate");
  }
  ScopedWarningCapture capture(warnings_);
  emit_test_warnings("generate");
  params.validate(spec_);
  require_finite(params.query_embeds, "queryEmbeds",
                 "the subject embedding is not finite; encode the subject again or check the embedding file");
  if (params.latents) require_finite(*params.latents, "latents", "the initial latents are not finite");
  if (params.control_image)
    require_finite(*params.control_image, "controlImage", "the control image is not finite");
  const auto start = Clock::now();
  const c10::Device device(device_name_);
  const at::ScalarType dtype = to_scalar_type(dtype_);
  c10::InferenceMode inference;
  InferenceGraphs graphs(device);
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);

  const int64_t f = spec_.latent_scale;
  const int64_t lh = params.height / f, lw = params.width / f;
  GenerateResult result;

  // 1. Initial latents, before anything else, one generator per image (image i: seed + i).
  std::vector<at::Tensor> initial;
  for (int64_t i = 0; i < params.num_images; ++i) {
    const uint64_t seed = params.seed + static_cast<uint64_t>(i);
    result.seeds.push_back(seed);
    if (i == 0 && params.latents) {
      initial.push_back(params.latents->to(at::kFloat).contiguous());
    } else {
      initial.push_back(draw_latents(seed, spec_.latent_channels, lh, lw));
    }
  }

  // 2. Text encoding: cond with the subject embeddings spliced in; uncond (no ctx) only with CFG.
  const bool cfg = params.guidance > 1.0;
  const int64_t text_total = cfg ? 2 : 1;
  auto text_start = Clock::now();
  at::Tensor states;
  try {
    const at::Tensor ctx = params.query_embeds.to(device, dtype);
    const at::Tensor cond = first_tensor(
        models_->text_encoder.forward({ids_tensor(params.cond_ids, device), ctx, spec_.ctx_begin_pos}),
        "text_encoder");
    if (progress) progress({Phase::kText, 0, 1, text_total});
    if (cancel.load()) throw AbortError();
    if (cfg) {
      const at::Tensor uncond = first_tensor(
          models_->text_encoder.forward({ids_tensor(params.uncond_ids, device), c10::IValue(), spec_.ctx_begin_pos}),
          "text_encoder");
      if (progress) progress({Phase::kText, 0, 2, text_total});
      states = at::cat({uncond, cond}, 0);
    } else {
      states = cond;
    }
    sync_device(device);
  } catch (...) {
    rethrow_with_context("while encoding the prompt");
  }
  result.timings.text_ms = ms_since(text_start);

  std::optional<at::Tensor> control;
  if (params.control_image) {
    if (!models_->controlnet) {
      try {
        c10::InferenceMode normal_tensors(false);  // parameters must not be inference tensors
        models_->controlnet = load_module(*spec_.controlnet, "controlnet", options_, device);
      } catch (...) {
        rethrow_with_context("while loading the ControlNet");
      }
    }
    at::Tensor c = params.control_image->to(device, dtype);
    control = cfg ? at::cat({c, c}, 0) : c;
  }

  // Fine-tuned weights for this call only: put back when `swap` goes out of scope, however the call ends.
  ParamSwap swap(models_->unet);
  if (params.unet) {
    try {
      apply_unet_override(swap, *params.unet, device, dtype);
    } catch (...) {
      rethrow_with_context("while applying the fine-tuned UNet weights");
    }
  }

  for (int64_t i = 0; i < params.num_images; ++i) {
    if (cancel.load()) throw AbortError();
    // 3. Denoising loop.
    auto denoise_start = Clock::now();
    auto scheduler = make_scheduler(params.scheduler, spec_.scheduler);
    scheduler->set_timesteps(params.steps);
    DenoiseInputs in;
    in.latents = (initial[size_t(i)] * scheduler->init_noise_sigma()).to(device);
    in.states = states;
    in.cfg = cfg;
    in.guidance = params.guidance;
    in.control = control;
    in.conditioning_scale = params.conditioning_scale;
    in.image = i;
    in.dtype = dtype;
    const bool record = params.record_steps && i == 0;
    at::Tensor latents =
        denoise(*models_, *scheduler, in, progress, cancel, record ? &result.step_latents : nullptr);
    sync_device(device);
    result.timings.denoise_ms += ms_since(denoise_start);
    if (cancel.load()) throw AbortError();
    if (!all_finite(latents)) {
      throw Error(codes::kNonFinite,
                  "the latents of image " + std::to_string(i + 1) +
                      " became non-finite (NaN or Inf) during denoising and were not decoded: " +
                      overflow_hint(dtype_, device_name_, "an extreme subject embedding or guidance scale"));
    }

    // 4. Decoding: the pipeline divides by the scaling factor; 5. post-processing on the CPU.
    auto decode_start = Clock::now();
    try {
      const at::Tensor z = latents / spec_.vae_scaling_factor;
      if (record) result.vae_input = z.to(at::kCPU, at::kFloat, false, true);
      const at::Tensor decoded = first_tensor(models_->vae_decoder.forward({z.to(dtype)}), "vae_decoder");
      result.images.push_back(to_image(decoded));
    } catch (...) {
      rethrow_with_context("while decoding the latents with the VAE");
    }
    result.timings.decode_ms += ms_since(decode_start);
    if (progress) progress({Phase::kDecode, i, 1, 1});
  }
  result.timings.total_ms = ms_since(start);
  return result;
}

EditResult Pipeline::edit(const EditParams& params, const EditProgressFn& progress, const std::atomic<bool>& cancel) {
  if (!models_) throw Error(codes::kNotLoaded, "the pipeline has no model loaded; call load() first");
  if (options_.subject_only) {
    throw Error(codes::kNotLoaded,
                "the pipeline was loaded for subject encoding only (subjectOnly); load it without subjectOnly to edit");
  }
  ScopedWarningCapture capture(warnings_);
  params.validate(spec_);
  require_attention_control(*models_);
  require_finite(params.query_embeds, "queryEmbeds",
                 "the subject embedding is not finite; encode the subject again or check the embedding file");
  if (params.latents) require_finite(*params.latents, "latents", "the initial latents are not finite");
  if (params.image) require_finite(*params.image, "image", "the picture's pixel values are not finite");
  const c10::Device device(device_name_);
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  // Fine-tuned weights for this call only (as generate).
  ParamSwap swap(models_->unet);
  if (params.unet) {
    try {
      c10::InferenceMode inference;
      apply_unet_override(swap, *params.unet, device, to_scalar_type(dtype_));
    } catch (...) {
      rethrow_with_context("while applying the fine-tuned UNet weights");
    }
  }
  return run_edit(*models_, spec_, device, dtype_, params, progress, cancel);
}

FinetuneResult Pipeline::finetune(const FinetuneParams& params, const FinetuneProgressFn& progress,
                                  const std::atomic<bool>& cancel) {
  if (!models_) throw Error(codes::kNotLoaded, "the pipeline has no model loaded; call load() first");
  if (options_.subject_only) {
    throw Error(codes::kNotLoaded,
                "the pipeline was loaded for subject encoding only (subjectOnly); load it without subjectOnly to "
                "fine-tune");
  }
  if (options_.optimize) {
    throw Error(codes::kInvalidArgument,
                "the pipeline was loaded with optimize (frozen modules cannot train); load it without optimize to "
                "fine-tune");
  }
  ScopedWarningCapture capture(warnings_);
  params.validate(spec_);  // before anything is trained in place (a bad argument then costs no reload)
  require_finite(params.ctx_init, "ctxInit", "the initial subject embedding is not finite");
  require_finite(params.targets, "targets", "the target pictures' pixel values are not finite");
  const c10::Device device(device_name_);
  c10::OptionalDeviceGuard guard;
  if (device.is_cuda()) guard.reset_device(device);
  // Full mode on float32 modules trains the loaded UNet in place (no second copy of its weights), then loads it
  // again from its file, however the fine-tune ends. If that fails, the pipeline is unloaded rather than left
  // with trained weights.
  const bool in_place = params.mode == FinetuneMode::kFull && dtype_ == DType::kFloat32;
  auto reload_unet = [&] {
    if (!in_place) return;
    try {
      if (options_.verify_checksums) verify_files(module_files("unet", spec_.unet), nullptr);
      models_->unet = torch::jit::Module();  // frees the trained weights before the load
      release_cached_cpu_memory();
      models_->unet = load_module(spec_.unet, "unet", options_, device);
    } catch (...) {
      models_.reset();
      release_cached_cpu_memory();
      rethrow_with_context("while restoring the UNet after fine-tuning (the model was unloaded; load it again)");
    }
  };
  FinetuneResult result;
  try {
    result = run_finetune(*models_, spec_, device, dtype_, params, progress, cancel, in_place);
  } catch (...) {
    const std::exception_ptr error = std::current_exception();
    reload_unet();
    std::rethrow_exception(error);
  }
  reload_unet();
  return result;
}

}  // namespace blipdiff
