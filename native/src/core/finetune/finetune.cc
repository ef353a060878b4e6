#include "core/finetune/finetune.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>

#include <chrono>
#include <cmath>
#include <new>

#include "core/cpu_allocator.h"
#include "core/errors.h"
#include "core/module_calls.h"
#include "core/model.h"
#include "core/schedulers/scheduler.h"
#include "core/unet_weights.h"

namespace blipdiff {

namespace {

std::string dims(const at::Tensor& t) { return c10::str(t.sizes()); }

void require(bool ok, const std::string& message) {
  if (!ok) throw InvalidArgument(message);
}

// bfloat16 autocast on CUDA for the length of a scope (mixed precision, float32 master weights).
class CudaAutocast {
 public:
  explicit CudaAutocast(bool enable) : enabled_(enable) {
    if (!enabled_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    prev_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
  }
  ~CudaAutocast() {
    if (!enabled_) return;
    at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype_);
    at::autocast::clear_cache();
  }
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;

 private:
  bool enabled_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kHalf;
};

// Keeps a trainable copy in the layout of the loaded tensor (channels-last convolution weights on the CPU).
at::Tensor trainable_copy(const at::Tensor& loaded) {
  const bool channels_last = loaded.dim() == 4 && loaded.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                             !loaded.is_contiguous();
  at::Tensor t = loaded.detach().to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
  if (channels_last) t = t.contiguous(at::MemoryFormat::ChannelsLast);
  return t.requires_grad_(true);
}

at::Tensor to_cpu_output(const at::Tensor& t, at::ScalarType dtype) {
  return t.detach().to(at::kCPU, dtype, false, true).contiguous();
}

bool is_oom(const std::exception& e) {
  if (dynamic_cast<const c10::OutOfMemoryError*>(&e)) return true;
  if (dynamic_cast<const std::bad_alloc*>(&e)) return true;
  const std::string what = e.what();
  return what.find("can't allocate memory") != std::string::npos ||
         what.find("out of memory") != std::string::npos || what.find("bad_alloc") != std::string::npos;
}

struct LoraModule {
  std::string name;
  at::Tensor base;  // the loaded weight [out, in]
  at::Tensor a;     // [r, in] float32, trainable
  at::Tensor b;     // [out, r] float32, trainable
};

// Exports since AdaptableLinear (models/blipdiff_export/unet_blocks.py) let adapters be attached to the attention
// projections: y = x W^T + b + scale (x A^T) B^T, whose backward computes only the low-rank gradients. Older
// exports get the merged weight W + scale B A instead, set before every step (same math, plus a dense weight
// gradient per module). The attachment is taken off when this goes out of scope, however the fine-tune ends.
class LoraAttachment {
 public:
  explicit LoraAttachment(const torch::jit::Module& unet) : submodules_(submodules_by_name(unet)) {}
  ~LoraAttachment() {
    for (auto& m : attached_) {
      try {
        m.setattr("lora_down", c10::IValue());
        m.setattr("lora_up", c10::IValue());
        m.setattr("lora_scale", 1.0);
      } catch (...) {
        // Setting attributes that were set before does not fail in practice.
      }
    }
  }
  LoraAttachment(const LoraAttachment&) = delete;
  LoraAttachment& operator=(const LoraAttachment&) = delete;

  bool supported(const std::string& module) const {
    const auto it = submodules_.find(module);
    return it != submodules_.end() && it->second.hasattr("lora_down") && it->second.hasattr("lora_up") &&
           it->second.hasattr("lora_scale");
  }
  void attach(const std::string& module, const at::Tensor& a, const at::Tensor& b, double scale) {
    torch::jit::Module m = submodules_.at(module);
    attached_.push_back(m);
    m.setattr("lora_down", a);
    m.setattr("lora_up", b);
    m.setattr("lora_scale", scale);
  }

 private:
  std::map<std::string, torch::jit::Module> submodules_;
  std::vector<torch::jit::Module> attached_;
};

}  // namespace

FinetuneMode finetune_mode_from_string(std::string_view name) {
  if (name == "full") return FinetuneMode::kFull;
  if (name == "lora") return FinetuneMode::kLora;
  throw InvalidArgument("Expected \"full\" or \"lora\" for mode but received \"" + std::string(name) + "\"");
}

bool lavis_decays(const std::string& name, int64_t ndim) {
  if (ndim < 2) return false;
  for (const char* word : {"bias", "ln", "bn"}) {
    if (name.find(word) != std::string::npos) return false;
  }
  return true;
}

void FinetuneParams::validate(const ModelSpec& spec) const {
  require(targets.defined() && targets.dim() == 4 && targets.size(0) >= 1 && targets.size(1) == 3 &&
              targets.size(2) == targets.size(3) && targets.size(2) > 0,
          "Expected [N, 3, S, S] target pictures for targets but received " +
              (targets.defined() ? dims(targets) : std::string("nothing")));
  const int64_t s = targets.size(2), f = spec.latent_scale;
  require(s % f == 0, "Expected a resolution that is a multiple of " + std::to_string(f) +
                          " (the latent scale) for targets but received " + std::to_string(s));
  require(!caption_ids.empty(), "Expected at least one caption id for captionIds");
  require(ctx_init.defined() && ctx_init.dim() == 3 && ctx_init.size(0) == 1 &&
              ctx_init.size(1) == spec.num_query_tokens,
          "Expected [1, " + std::to_string(spec.num_query_tokens) + ", D] for ctxInit but received " +
              (ctx_init.defined() ? dims(ctx_init) : std::string("nothing")));
  require(steps >= 1 && steps <= 1000000, "Expected steps in [1, 1000000] but received " + std::to_string(steps));
  require(batch_size >= 1 && batch_size <= 1024,
          "Expected batchSize in [1, 1024] but received " + std::to_string(batch_size));
  require(std::isfinite(lr) && lr > 0, "Expected a positive finite lr but received " + std::to_string(lr));
  require(std::isfinite(weight_decay) && weight_decay >= 0,
          "Expected a non-negative finite weightDecay but received " + std::to_string(weight_decay));
  if (mode == FinetuneMode::kLora) {
    require(lora_rank >= 1, "Expected loraRank >= 1 but received " + std::to_string(lora_rank));
    require(std::isfinite(lora_alpha) && lora_alpha > 0,
            "Expected a positive loraAlpha but received " + std::to_string(lora_alpha));
  }
  require(save_dtype == at::kFloat || save_dtype == at::kHalf, "Expected float32 or float16 for saveDtype");
  if (draws) {
    const int64_t n = targets.size(0), h = s / f;
    const std::vector<int64_t> sb = {steps, batch_size};
    const std::vector<int64_t> sbchw = {steps, batch_size, spec.latent_channels, h, h};
    require(draws->index.sizes().equals(sb) && draws->index.scalar_type() == at::kLong,
            "Expected int64 " + c10::str(at::IntArrayRef(sb)) + " for draws.index but received " +
                dims(draws->index));
    require(draws->timesteps.sizes().equals(sb) && draws->timesteps.scalar_type() == at::kLong,
            "Expected int64 " + c10::str(at::IntArrayRef(sb)) + " for draws.timesteps but received " +
                dims(draws->timesteps));
    require(draws->eps_vae.sizes().equals(sbchw), "Expected " + c10::str(at::IntArrayRef(sbchw)) +
                                                      " for draws.epsVae but received " + dims(draws->eps_vae));
    require(draws->noise.sizes().equals(sbchw), "Expected " + c10::str(at::IntArrayRef(sbchw)) +
                                                    " for draws.noise but received " + dims(draws->noise));
    require(draws->index.min().item<int64_t>() >= 0 && draws->index.max().item<int64_t>() < n,
            "Expected draws.index values in [0, " + std::to_string(n) + ") (the number of pictures)");
    const int64_t t_max = spec.scheduler.integer("num_train_timesteps", 1000);
    require(draws->timesteps.min().item<int64_t>() >= 0 && draws->timesteps.max().item<int64_t>() < t_max,
            "Expected draws.timesteps values in [0, " + std::to_string(t_max) + ")");
    require(at::isfinite(draws->eps_vae).all().item<bool>() && at::isfinite(draws->noise).all().item<bool>(),
            "Expected finite values in draws.epsVae and draws.noise");
    if (mode == FinetuneMode::kFull) {
      require(draws->lora_init.empty(), "draws.loraInit is only used with mode \"lora\"");
    }
  }
}

FinetuneResult run_finetune(LoadedModels& models, const ModelSpec& spec, const c10::Device& device, DType dtype,
                            const FinetuneParams& p, const FinetuneProgressFn& progress,
                            const std::atomic<bool>& cancel, bool train_in_place) {
  p.validate(spec);
  const auto start = Clock::now();
  const at::ScalarType model_dtype = to_scalar_type(dtype);
  const bool mixed = device.is_cuda();
  const int64_t n = p.targets.size(0), s = p.targets.size(2), f = spec.latent_scale, h = s / f;
  const int64_t batch = p.batch_size;
  const int64_t num_train_timesteps = spec.scheduler.integer("num_train_timesteps", 1000);
  FinetuneResult result;
  at::Generator gen = at::detail::createCPUGenerator(p.seed);
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  const auto i64 = at::TensorOptions().dtype(at::kLong);

  try {
    at::AutoGradMode grad_mode(true);
    CpuMemoryGuard memory_guard;
    // Frozen modules: no weight gradients (the embedding's gradient still flows through the text encoder).
    for (torch::jit::Module* m : {&models.text_encoder, &models.unet, &models.vae_encoder}) {
      for (at::Tensor t : m->parameters()) t.requires_grad_(false);
    }

    // 1. The VAE posterior of each picture, once: the VAE is frozen and deterministic, so each step's
    //    sample is mean + std * eps of its picture.
    at::Tensor mean, stdev;
    {
      at::NoGradGuard no_grad;
      std::vector<at::Tensor> means, stds;
      for (int64_t i = 0; i < n; ++i) {
        if (cancel.load()) throw AbortError();
        const c10::IValue out =
            models.vae_encoder.forward({p.targets.narrow(0, i, 1).to(device, model_dtype)});
        const auto& parts = out.toTupleRef().elements();
        means.push_back(parts.at(0).toTensor().to(at::kFloat));
        stds.push_back(at::exp(0.5 * parts.at(1).toTensor().to(at::kFloat)));
      }
      mean = at::cat(means, 0);
      stdev = at::cat(stds, 0);
    }
    const at::Tensor acp = make_scheduler(SchedulerKind::kPndm, spec.scheduler)->alphas_cumprod().to(device);

    // 2. Trainable tensors. The loaded UNet's parameters are swapped for trainable ones and put back at the end.
    ParamSwap swap(models.unet);
    std::vector<std::pair<std::string, at::Tensor>> named;  // LAVIS names, for the decay rule
    at::Tensor ctx = p.ctx_init.to(device, at::kFloat).clone().requires_grad_(true);
    named.emplace_back("ctx_embeddings_cache", ctx);
    std::vector<std::pair<std::string, at::Tensor>> full_params;
    std::vector<LoraModule> lora;
    const double lora_scale = p.lora_alpha / static_cast<double>(p.lora_rank);
    LoraAttachment attachment(models.unet);
    bool merge_lora = false;  // an export without AdaptableLinear
    if (p.mode == FinetuneMode::kFull) {
      for (const std::string& name : swap.parameter_names()) {
        at::Tensor t = swap.get(name);
        if (train_in_place && t.scalar_type() == at::kFloat) {
          t.requires_grad_(true);
        } else {
          t = trainable_copy(t);
          swap.set(name, t);
        }
        full_params.emplace_back(name, t);
        named.emplace_back("unet." + name, t);
      }
    } else {
      for (const std::string& module : lora_target_modules(models.unet)) {
        LoraModule m;
        m.name = module;
        m.base = swap.get(module + ".weight").detach();
        const int64_t out = m.base.size(0), in = m.base.size(1);
        if (p.lora_rank > std::min(out, in)) {
          throw InvalidArgument("Expected loraRank <= " + std::to_string(std::min(out, in)) + " (the size of " +
                                module + ", " + dims(m.base) + ") but received " + std::to_string(p.lora_rank));
        }
        at::Tensor a;
        const at::Tensor* given = nullptr;
        if (p.draws) {
          const auto it = p.draws->lora_init.find(module);
          if (it != p.draws->lora_init.end()) given = &it->second;
        }
        if (given) {
          require(given->sizes().equals({p.lora_rank, in}),
                  "Expected [" + std::to_string(p.lora_rank) + ", " + std::to_string(in) + "] for draws.loraInit[\"" +
                      module + "\"] but received " + dims(*given));
          a = given->to(at::kFloat).clone();
        } else {
          // kaiming_uniform_(a=sqrt(5)) as torch.nn.Linear and PEFT initialize: U(-1/sqrt(in), 1/sqrt(in)).
          const double bound = 1.0 / std::sqrt(static_cast<double>(in));
          a = at::empty({p.lora_rank, in}, f32).uniform_(-bound, bound, gen);
        }
        m.a = a.to(device).requires_grad_(true);
        m.b = at::zeros({out, p.lora_rank}, f32.device(device)).requires_grad_(true);
        named.emplace_back("unet." + module + ".lora.down.weight", m.a);
        named.emplace_back("unet." + module + ".lora.up.weight", m.b);
        if (attachment.supported(module)) {
          attachment.attach(module, m.a, m.b, lora_scale);
        } else {
          merge_lora = true;
        }
        lora.push_back(std::move(m));
      }
      if (p.draws) {
        for (const auto& [module, t] : p.draws->lora_init) {
          bool known = false;
          for (const auto& m : lora) known = known || m.name == module;
          require(known, "draws.loraInit names \"" + module + "\", which is not an attention projection of this UNet");
        }
      }
    }

    // 3. AdamW with LAVIS's two groups; a constant learning rate.
    std::vector<at::Tensor> decay, no_decay;
    for (const auto& [name, t] : named) (lavis_decays(name, t.dim()) ? decay : no_decay).push_back(t);
    auto options = [&](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(p.lr).betas({p.beta1, p.beta2}).eps(p.eps).weight_decay(wd));
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    if (!decay.empty()) groups.emplace_back(decay, options(p.weight_decay));
    if (!no_decay.empty()) groups.emplace_back(no_decay, options(0.0));
    torch::optim::AdamW optimizer(groups, torch::optim::AdamWOptions(p.lr));

    const at::Tensor ids =
        at::tensor(p.caption_ids, at::kLong).reshape({1, static_cast<int64_t>(p.caption_ids.size())}).to(device);
    sync_device(device);
    result.timings.prepare_ms = ms_since(start);

    // 4. The steps.
    const auto train_start = Clock::now();
    for (int64_t step = 0; step < p.steps; ++step) {
      if (cancel.load()) throw AbortError();
      const auto step_start = Clock::now();
      at::Tensor index, timesteps, eps_vae, noise;
      if (p.draws) {
        index = p.draws->index[step];
        timesteps = p.draws->timesteps[step];
        eps_vae = p.draws->eps_vae[step];
        noise = p.draws->noise[step];
      } else {
        index = at::randint(n, {batch}, gen, i64);
        timesteps = at::randint(num_train_timesteps, {batch}, gen, i64);
        eps_vae = at::randn({batch, spec.latent_channels, h, h}, gen, f32);
        noise = at::randn({batch, spec.latent_channels, h, h}, gen, f32);
      }
      index = index.to(device);
      timesteps = timesteps.to(device);
      noise = noise.to(device, at::kFloat);
      at::Tensor latents, noisy;
      {
        at::NoGradGuard no_grad;
        latents = (mean.index_select(0, index) + stdev.index_select(0, index) * eps_vae.to(device, at::kFloat)) *
                  spec.vae_scaling_factor;
        // DDPMScheduler.add_noise: sqrt(acp[t]) * x + sqrt(1 - acp[t]) * noise, coefficients in float32.
        const at::Tensor a_t = acp.index_select(0, timesteps).view({batch, 1, 1, 1});
        noisy = a_t.sqrt() * latents + (1 - a_t).sqrt() * noise;
      }

      at::Tensor loss, states;
      {
        CudaAutocast autocast(mixed);
        if (merge_lora) {
          for (const LoraModule& m : lora) {
            if (attachment.supported(m.name)) continue;
            swap.set(m.name + ".weight", m.base.to(at::kFloat) + lora_scale * at::matmul(m.b, m.a));
          }
        }
        states = first_tensor(models.text_encoder.forward({ids, ctx.to(model_dtype), spec.ctx_begin_pos}),
                              "text_encoder");
        const at::Tensor batch_states = states.expand({batch, states.size(1), states.size(2)});
        const at::Tensor pred = first_tensor(
            models.unet.forward({mixed ? noisy : noisy.to(model_dtype), timesteps, batch_states, c10::IValue(),
                                 c10::IValue()}),
            "unet");
        loss = at::mse_loss(pred.to(at::kFloat), noise);
      }
      optimizer.zero_grad();
      loss.backward();
      if (p.record && step == 0) {
        FinetuneStep0 rec;
        rec.latents = to_cpu_output(latents, at::kFloat);
        rec.noisy = to_cpu_output(noisy, at::kFloat);
        rec.states = to_cpu_output(states.expand({batch, states.size(1), states.size(2)}), at::kFloat);
        rec.grads.emplace_back("cache", to_cpu_output(ctx.grad(), at::kFloat));
        for (const auto& [name, t] : full_params) {
          if (t.grad().defined()) rec.grads.emplace_back("unet." + name, to_cpu_output(t.grad(), at::kFloat));
        }
        for (const LoraModule& m : lora) {
          rec.grads.emplace_back(m.name + ".A", to_cpu_output(m.a.grad(), at::kFloat));
          rec.grads.emplace_back(m.name + ".B", to_cpu_output(m.b.grad(), at::kFloat));
        }
        result.step0 = std::move(rec);
      }
      optimizer.step();
      const double value = loss.item<double>();
      if (!std::isfinite(value)) {
        throw Error(codes::kNonFinite, "the loss became non-finite (NaN or Inf) at step " + std::to_string(step + 1) +
                                           "; lower the learning rate");
      }
      result.losses.push_back(value);
      sync_device(device);
      result.timings.step_ms.push_back(ms_since(step_start));
      if (progress) progress({step + 1, p.steps, value});
    }
    result.timings.train_ms = ms_since(train_start);

    // 5. The results, then the loaded weights go back (ParamSwap's destructor).
    result.ctx = to_cpu_output(ctx, at::kFloat);
    for (const auto& [name, t] : full_params) result.tensors.emplace_back(name, to_cpu_output(t, p.save_dtype));
    for (const LoraModule& m : lora) {
      result.tensors.emplace_back(m.name + ".lora.down.weight", to_cpu_output(m.a, p.save_dtype));
      result.tensors.emplace_back(m.name + ".lora.up.weight", to_cpu_output(m.b, p.save_dtype));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    if (is_oom(e)) {
      throw Error(codes::kOom, "ran out of " + std::string(device.is_cuda() ? "GPU" : "host") +
                                   " memory while fine-tuning (mode " +
                                   (p.mode == FinetuneMode::kFull ? "full" : "lora") + ", batch " +
                                   std::to_string(batch) + ", resolution " + std::to_string(s) + ")");
    }
    rethrow_with_context("while fine-tuning");
  }
  result.timings.total_ms = ms_since(start);
  return result;
}

}  // namespace blipdiff
