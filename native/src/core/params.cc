#include "core/params.h"

#include <cmath>

#include "core/arg_checks.h"
#include "core/errors.h"

namespace blipdiff {

using arg_checks::expect;
using arg_checks::str;

SchedulerKind scheduler_kind_from_string(std::string_view name) {
  if (name == "pndm") return SchedulerKind::kPndm;
  if (name == "ddim") return SchedulerKind::kDdim;
  if (name == "dpmpp-2m") return SchedulerKind::kDpmpp2m;
  throw InvalidArgument("Expected one of pndm, ddim, dpmpp-2m for scheduler but received " + std::string(name));
}

std::string_view to_string(SchedulerKind kind) {
  switch (kind) {
    case SchedulerKind::kPndm:
      return "pndm";
    case SchedulerKind::kDdim:
      return "ddim";
    case SchedulerKind::kDpmpp2m:
      return "dpmpp-2m";
  }
  return "pndm";
}

DType dtype_from_string(std::string_view name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  throw InvalidArgument("Expected one of float32, float16, bfloat16 for dtype but received " + std::string(name));
}

std::string_view to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kFloat16:
      return "float16";
    case DType::kBFloat16:
      return "bfloat16";
  }
  return "float32";
}

at::ScalarType to_scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kFloat32:
      break;
  }
  return at::kFloat;
}

std::string_view to_string(Phase phase) {
  switch (phase) {
    case Phase::kText:
      return "text";
    case Phase::kDenoise:
      return "denoise";
    case Phase::kDecode:
      return "decode";
  }
  return "text";
}

// ---- SchedulerConfig ----

const ConfigValue* SchedulerConfig::find(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end() || std::holds_alternative<std::monostate>(it->second)) return nullptr;
  return &it->second;
}

bool SchedulerConfig::has(const std::string& key) const { return find(key) != nullptr; }

double SchedulerConfig::number(const std::string& key, double fallback) const {
  const ConfigValue* v = find(key);
  if (!v) return fallback;
  if (const auto* d = std::get_if<double>(v)) return *d;
  if (const auto* b = std::get_if<bool>(v)) return *b ? 1.0 : 0.0;
  throw InvalidArgument("Expected a number for scheduler config " + key);
}

int64_t SchedulerConfig::integer(const std::string& key, int64_t fallback) const {
  const double d = number(key, static_cast<double>(fallback));
  if (!std::isfinite(d) || d != std::floor(d)) {
    throw InvalidArgument("Expected an integer for scheduler config " + key + " but received " + str(d));
  }
  return static_cast<int64_t>(d);
}

bool SchedulerConfig::boolean(const std::string& key, bool fallback) const {
  const ConfigValue* v = find(key);
  if (!v) return fallback;
  if (const auto* b = std::get_if<bool>(v)) return *b;
  if (const auto* d = std::get_if<double>(v)) return *d != 0.0;
  throw InvalidArgument("Expected a boolean for scheduler config " + key);
}

std::string SchedulerConfig::string(const std::string& key, const std::string& fallback) const {
  const ConfigValue* v = find(key);
  if (!v) return fallback;
  if (const auto* s = std::get_if<std::string>(v)) return *s;
  throw InvalidArgument("Expected a string for scheduler config " + key);
}

std::optional<std::vector<double>> SchedulerConfig::numbers(const std::string& key) const {
  const ConfigValue* v = find(key);
  if (!v) return std::nullopt;
  if (const auto* list = std::get_if<std::vector<double>>(v)) return *list;
  throw InvalidArgument("Expected a list of numbers for scheduler config " + key);
}

// ---- validation (a backstop: TypeScript validates first) ----

void ModelSpec::validate() const {
  const std::pair<const char*, const ModuleFile*> files[] = {
      {"qformer", &qformer}, {"text_encoder", &text_encoder}, {"unet", &unet},
      {"vae_decoder", &vae_decoder}, {"vae_encoder", &vae_encoder}};
  for (const auto& [name, file] : files) {
    expect(!file->path.empty(), "a file path", std::string("modules.") + name + ".path", "an empty string");
  }
  expect(num_query_tokens > 0, "a positive integer", "numQueryTokens", str(num_query_tokens));
  expect(text_max_length > num_query_tokens, "an integer above numQueryTokens", "textMaxLength",
         str(text_max_length));
  expect(ctx_begin_pos >= 0 && ctx_begin_pos <= text_max_length - num_query_tokens,
         "an integer in [0, textMaxLength - numQueryTokens]", "ctxBeginPos", str(ctx_begin_pos));
  expect(latent_channels > 0, "a positive integer", "latentChannels", str(latent_channels));
  expect(latent_scale > 0, "a positive integer", "latentScale", str(latent_scale));
  expect(std::isfinite(vae_scaling_factor) && vae_scaling_factor > 0, "a positive number", "vaeScalingFactor",
         str(vae_scaling_factor));
}

void validate_query_size_steps(const ModelSpec& spec, const at::Tensor& query_embeds, int64_t width, int64_t height,
                               int64_t steps) {
  expect(query_embeds.defined() && query_embeds.dim() == 3 && query_embeds.size(0) == 1 &&
             query_embeds.size(1) == spec.num_query_tokens,
         "a [1, " + str(spec.num_query_tokens) + ", D] tensor", "queryEmbeds",
         query_embeds.defined() ? str(query_embeds.sizes()) : "nothing");
  const int64_t f = spec.latent_scale;
  expect(width >= f && width % f == 0, "a positive multiple of the latent scale " + str(f), "width", str(width));
  expect(height >= f && height % f == 0, "a positive multiple of the latent scale " + str(f), "height",
         str(height));
  expect(width <= 8192 && height <= 8192, "a size of at most 8192", "width x height",
         str(width) + "x" + str(height));
  expect(steps >= 1 && steps <= 1000, "an integer in [1, 1000]", "steps", str(steps));
}

void validate_latents(const ModelSpec& spec, const std::optional<at::Tensor>& latents, int64_t width, int64_t height) {
  if (!latents) return;
  const int64_t f = spec.latent_scale;
  const std::vector<int64_t> shape = {1, spec.latent_channels, height / f, width / f};
  expect(latents->sizes() == at::IntArrayRef(shape), "a " + str(at::IntArrayRef(shape)) + " tensor", "latents",
         str(latents->sizes()));
}

void GenerateParams::validate(const ModelSpec& spec) const {
  const int64_t cond_len = spec.text_max_length - spec.num_query_tokens;
  expect(static_cast<int64_t>(cond_ids.size()) == cond_len, str(cond_len) + " ids (textMaxLength - numQueryTokens)",
         "condIds", str(cond_ids.size()) + " ids");
  if (guidance > 1.0) {
    expect(static_cast<int64_t>(uncond_ids.size()) == spec.text_max_length,
           str(spec.text_max_length) + " ids (textMaxLength)", "uncondIds", str(uncond_ids.size()) + " ids");
  }
  validate_query_size_steps(spec, query_embeds, width, height, steps);
  expect(std::isfinite(guidance) && guidance >= 0, "a finite number >= 0", "guidance", str(guidance));
  expect(num_images >= 1 && num_images <= 1024, "an integer in [1, 1024]", "numImages", str(num_images));
  expect(std::isfinite(conditioning_scale), "a finite number", "conditioningScale", str(conditioning_scale));
  validate_latents(spec, latents, width, height);
  if (control_image) {
    const std::vector<int64_t> shape = {1, 3, height, width};
    expect(control_image->sizes() == at::IntArrayRef(shape), "a " + str(at::IntArrayRef(shape)) + " tensor",
           "controlImage", str(control_image->sizes()));
    expect(spec.controlnet.has_value(), "a model with a controlnet module", "controlImage",
           "a model without one");
  }
}

}  // namespace blipdiff
