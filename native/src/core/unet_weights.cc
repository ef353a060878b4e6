#include "core/unet_weights.h"

#include <ATen/ATen.h>

#include <set>

#include "core/errors.h"

namespace blipdiff {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

// Keeps a replacement in the layout of the tensor it replaces (channels-last convolution weights on the CPU).
at::Tensor like(const at::Tensor& value, const at::Tensor& original) {
  const at::MemoryFormat format = original.dim() == 4 && original.is_contiguous(at::MemoryFormat::ChannelsLast) &&
                                          !original.is_contiguous()
                                      ? at::MemoryFormat::ChannelsLast
                                      : at::MemoryFormat::Contiguous;
  return value.to(original.device(), original.scalar_type()).contiguous(format);
}

}  // namespace

std::map<std::string, torch::jit::Module> submodules_by_name(const torch::jit::Module& module) {
  std::map<std::string, torch::jit::Module> out;
  for (const auto& m : module.named_modules()) out.emplace(m.name, m.value);
  return out;
}

std::vector<std::string> lora_target_modules(const torch::jit::Module& unet) {
  static const std::vector<std::string> kSuffixes = {".to_q.weight", ".to_k.weight", ".to_v.weight",
                                                     ".to_out.0.weight"};
  std::vector<std::string> out;
  for (const auto& p : unet.named_parameters()) {
    if (p.value.dim() != 2) continue;
    for (const auto& suffix : kSuffixes) {
      if (ends_with(p.name, suffix) && p.name.find(".attn") != std::string::npos) {
        out.push_back(p.name.substr(0, p.name.size() - std::string(".weight").size()));
        break;
      }
    }
  }
  return out;
}

ParamSwap::ParamSwap(torch::jit::Module module) : module_(std::move(module)), submodules_(submodules_by_name(module_)) {}

ParamSwap::~ParamSwap() {
  try {
    restore();
  } catch (...) {
    // Restoring assigns tensors that were in place before: it does not fail in practice.
  }
}

std::pair<torch::jit::Module, std::string> ParamSwap::locate(const std::string& name) const {
  const size_t dot = name.rfind('.');
  const std::string owner = dot == std::string::npos ? "" : name.substr(0, dot);
  const std::string attr = dot == std::string::npos ? name : name.substr(dot + 1);
  const auto it = submodules_.find(owner);
  if (it == submodules_.end() || !it->second.hasattr(attr) || !it->second.attr(attr).isTensor()) {
    throw InvalidArgument("the UNet has no parameter named \"" + name + "\"");
  }
  return {it->second, attr};
}

at::Tensor ParamSwap::get(const std::string& name) const {
  auto [owner, attr] = locate(name);
  return owner.attr(attr).toTensor();
}

void ParamSwap::set(const std::string& name, const at::Tensor& value) {
  auto [owner, attr] = locate(name);
  const at::Tensor current = owner.attr(attr).toTensor();
  if (!current.sizes().equals(value.sizes())) {
    throw InvalidArgument("Expected shape " + shape_str(current) + " for UNet parameter \"" + name +
                          "\" but received " + shape_str(value));
  }
  bool seen = false;
  for (const auto& o : originals_) seen = seen || o.first == name;
  if (!seen) originals_.emplace_back(name, current);
  owner.setattr(attr, value);
}

std::vector<std::string> ParamSwap::parameter_names() const {
  std::vector<std::string> out;
  for (const auto& p : module_.named_parameters()) out.push_back(p.name);
  return out;
}

void ParamSwap::restore() {
  for (auto it = originals_.rbegin(); it != originals_.rend(); ++it) {
    auto [owner, attr] = locate(it->first);
    owner.setattr(attr, it->second);
  }
  originals_.clear();
}

void apply_unet_override(ParamSwap& swap, const UnetOverride& override, const c10::Device& device,
                         at::ScalarType dtype) {
  at::NoGradGuard no_grad;
  if (override.mode == UnetOverride::Mode::kFull) {
    for (const auto& [name, value] : override.tensors) {
      const at::Tensor current = swap.get(name);  // throws for unknown names
      if (!current.sizes().equals(value.sizes())) {
        throw InvalidArgument("Expected shape " + shape_str(current) + " for UNet parameter \"" + name +
                              "\" but received " + shape_str(value));
      }
    }
    // Every parameter must be given: a partial set would silently mix two models.
    for (const auto& p : swap.parameter_names()) {
      if (!override.tensors.count(p)) {
        throw InvalidArgument("the fine-tuned UNet weights lack parameter \"" + p + "\"");
      }
    }
    for (const auto& [name, value] : override.tensors) {
      const at::Tensor current = swap.get(name);
      swap.set(name, like(value.to(device, dtype), current));
    }
    return;
  }
  // LoRA: "<module>.lora.down.weight" and "<module>.lora.up.weight" pairs.
  std::set<std::string> modules;
  for (const auto& [name, value] : override.tensors) {
    const std::string down = ".lora.down.weight", up = ".lora.up.weight";
    if (ends_with(name, down)) {
      modules.insert(name.substr(0, name.size() - down.size()));
    } else if (ends_with(name, up)) {
      modules.insert(name.substr(0, name.size() - up.size()));
    } else {
      throw InvalidArgument("unexpected LoRA tensor \"" + name +
                            "\": expected <module>.lora.down.weight or <module>.lora.up.weight");
    }
  }
  for (const std::string& module : modules) {
    const auto down_it = override.tensors.find(module + ".lora.down.weight");
    const auto up_it = override.tensors.find(module + ".lora.up.weight");
    if (down_it == override.tensors.end() || up_it == override.tensors.end()) {
      throw InvalidArgument("LoRA module \"" + module + "\" needs both lora.down.weight and lora.up.weight");
    }
    const at::Tensor w = swap.get(module + ".weight");
    const at::Tensor& a = down_it->second;
    const at::Tensor& b = up_it->second;
    if (w.dim() != 2 || a.dim() != 2 || b.dim() != 2 || a.size(1) != w.size(1) || b.size(0) != w.size(0) ||
        a.size(0) != b.size(1)) {
      throw InvalidArgument("LoRA module \"" + module + "\": down " + shape_str(a) + " and up " + shape_str(b) +
                            " do not fit its weight " + shape_str(w) + " (expected [r, in] and [out, r])");
    }
    const at::Tensor delta = at::matmul(b.to(device, at::kFloat), a.to(device, at::kFloat)) * override.scale;
    swap.set(module + ".weight", (w.to(at::kFloat) + delta).to(dtype));
  }
}

}  // namespace blipdiff
