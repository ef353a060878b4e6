// Plain parameter structs of the core (sharp's "baton"): the N-API layer fills them on the JS thread,
// workers read them. Defaults live here and nowhere else.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace blipdiff {

enum class SchedulerKind { kPndm, kDdim, kDpmpp2m };
// The one converter between scheduler names ("pndm", "ddim", "dpmpp-2m") and the enum.
SchedulerKind scheduler_kind_from_string(std::string_view name);
std::string_view to_string(SchedulerKind kind);

enum class DType { kFloat32, kFloat16, kBFloat16 };
DType dtype_from_string(std::string_view name);
std::string_view to_string(DType dtype);
at::ScalarType to_scalar_type(DType dtype);

// A diffusers scheduler config: snake_case keys with JSON-like values (null, bool, number, string,
// list of numbers). Getters return the diffusers default when a key is missing or null.
using ConfigValue = std::variant<std::monostate, bool, double, std::string, std::vector<double>>;

class SchedulerConfig {
 public:
  void set(const std::string& key, ConfigValue value) { values_[key] = std::move(value); }
  bool has(const std::string& key) const;
  double number(const std::string& key, double fallback) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  std::optional<std::vector<double>> numbers(const std::string& key) const;

 private:
  const ConfigValue* find(const std::string& key) const;
  std::map<std::string, ConfigValue> values_;
};

struct ModuleFile {
  std::string path;
  std::string sha256;  // lowercase hex; empty skips verification of this file
  // Manifest format_version 2: the safetensors file holding the module's tensors (the archive keeps empty
  // placeholders; core/mapped_weights.h) and its sha256. Empty for format 1, whose archives hold their tensors.
  std::string weights;
  std::string weights_sha256;
};

struct ModelSpec {
  ModuleFile qformer;
  ModuleFile text_encoder;
  ModuleFile unet;
  ModuleFile vae_decoder;
  ModuleFile vae_encoder;
  std::optional<ModuleFile> controlnet;
  int64_t num_query_tokens = 16;
  int64_t ctx_begin_pos = 2;
  int64_t text_max_length = 77;
  int64_t latent_channels = 4;
  int64_t latent_scale = 8;
  double vae_scaling_factor = 0.18215;
  SchedulerConfig scheduler;

  void validate() const;
};

struct LoadOptions {
  std::string device = "cpu";  // "cpu", "cuda" or "cuda:N"
  DType dtype = DType::kFloat32;
  bool verify_checksums = true;
  // torch::jit::freeze + optimize_for_inference on load: full size on CPU, about 12 s more load and, with
  // channels-last weights, no faster steps (docs/benchmarks.md); unmeasured on CUDA. Off by default.
  bool optimize = false;
  // Load only the Q-Former (for encode_subject, e.g. `blipdiff encode`): 2 GB instead of 6 GB at full
  // size. generate() is then refused.
  bool subject_only = false;
};

// Fine-tuned UNet weights applied for one generate() call (core/unet_weights.h); CPU tensors, float32 or float16.
struct UnetOverride {
  enum class Mode { kFull, kLora };
  Mode mode = Mode::kFull;
  // kFull: every UNet parameter by name ("conv_in.weight"). kLora: "<module>.lora.down.weight" [r, in] and
  // "<module>.lora.up.weight" [out, r] per adapted Linear module.
  std::map<std::string, at::Tensor> tensors;
  double scale = 1.0;  // kLora: alpha / rank
};

// The checks generate and edit share (InvalidArgument naming the field): queryEmbeds [1, Q, D]; width and height
// positive multiples of the latent scale, at most 8192; steps in [1, 1000].
void validate_query_size_steps(const ModelSpec& spec, const at::Tensor& query_embeds, int64_t width, int64_t height,
                               int64_t steps);
// Explicit initial latents, when given, must be [1, C, height / f, width / f].
void validate_latents(const ModelSpec& spec, const std::optional<at::Tensor>& latents, int64_t width, int64_t height);

struct GenerateParams {
  std::vector<int64_t> cond_ids;    // textMaxLength - numQueryTokens ids
  std::vector<int64_t> uncond_ids;  // textMaxLength ids; used only when guidance > 1
  at::Tensor query_embeds;          // [1, Q, D] float32
  int64_t width = 512;
  int64_t height = 512;
  int64_t steps = 50;
  double guidance = 7.5;
  uint64_t seed = 0;
  int64_t num_images = 1;
  SchedulerKind scheduler = SchedulerKind::kPndm;
  std::optional<at::Tensor> latents;        // [1, C, H/f, W/f] for image 0
  std::optional<at::Tensor> control_image;  // [1, 3, H, W] in [0, 1]
  double conditioning_scale = 1.0;
  bool record_steps = false;
  std::optional<UnetOverride> unet;

  // Checks everything that does not need the loaded model.
  void validate(const ModelSpec& spec) const;
};

struct Image {
  std::vector<uint8_t> data;  // HWC
  int64_t width = 0;
  int64_t height = 0;
  int64_t channels = 3;
};

struct Timings {
  double text_ms = 0;
  double denoise_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
};

struct GenerateResult {
  std::vector<Image> images;
  std::vector<uint64_t> seeds;
  Timings timings;
  std::vector<at::Tensor> step_latents;  // with record_steps: float32 CPU, image 0
  std::optional<at::Tensor> vae_input;   // with record_steps: float32 CPU, image 0
};

enum class Phase { kText, kDenoise, kDecode };
std::string_view to_string(Phase phase);

struct Progress {
  Phase phase = Phase::kText;
  int64_t image = 0;
  int64_t step = 0;  // 1-based within the phase
  int64_t total = 0;
};

using ProgressFn = std::function<void(const Progress&)>;

}  // namespace blipdiff
