// Replacing a loaded module's parameters for the length of one call, and putting them back: fine-tuned UNet
// weights for a generation (full or LoRA), and the trainable weights of a fine-tune. Includes torch/script.h:
// include only from core .cc files.
#pragma once

#include <torch/script.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/params.h"

namespace blipdiff {

// The submodules of `module` by dotted name ("" is the module itself); jit::Module is a handle, so a change
// made through one of these is seen by `module`.
std::map<std::string, torch::jit::Module> submodules_by_name(const torch::jit::Module& module);

// The names of the Linear modules LoRA adapts: every attention's to_q, to_k, to_v and to_out.0, in the
// module's parameter order.
std::vector<std::string> lora_target_modules(const torch::jit::Module& unet);

// Sets parameters of a module by dotted name ("down_blocks.0.resnets.0.conv1.weight") and restores the
// original tensors when destroyed (also on exceptions), so the module is unchanged afterwards.
class ParamSwap {
 public:
  explicit ParamSwap(torch::jit::Module module);
  ~ParamSwap();
  ParamSwap(const ParamSwap&) = delete;
  ParamSwap& operator=(const ParamSwap&) = delete;

  // The current tensor of parameter `name`; throws InvalidArgument when the module has none of that name.
  at::Tensor get(const std::string& name) const;
  // Replaces parameter `name` with `value` (same shape required; the first replacement remembers the original).
  void set(const std::string& name, const at::Tensor& value);
  // Every parameter name of the module, in its order.
  std::vector<std::string> parameter_names() const;
  // Puts every original back now.
  void restore();

 private:
  std::pair<torch::jit::Module, std::string> locate(const std::string& name) const;

  torch::jit::Module module_;
  std::map<std::string, torch::jit::Module> submodules_;
  std::vector<std::pair<std::string, at::Tensor>> originals_;
};

// Applies fine-tuned weights to `swap`'s UNet in `dtype` on `device` (4-D weights keep the loaded layout):
// full, each parameter replaced (all of them must be given, with the loaded shapes); LoRA, each adapted
// weight W replaced by W + scale * up @ down, computed in float32. Unknown names and wrong shapes throw
// InvalidArgument naming the tensor.
void apply_unet_override(ParamSwap& swap, const UnetOverride& override, const c10::Device& device,
                         at::ScalarType dtype);

}  // namespace blipdiff
