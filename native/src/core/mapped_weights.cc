#include "core/mapped_weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/safetensors.h"
#include "core/unet_weights.h"

namespace blipdiff {

namespace {

constexpr const char* kChannelsLastKey = "blipdiff.channels_last";

// One read-only file mapped private and writable: tensors may be written in place (fine-tuning), which copies the
// page written and never reaches the file.
class Mapping {
 public:
  explicit Mapping(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open it: " + std::string(std::strerror(errno)));
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw std::runtime_error("cannot stat it: " + std::string(std::strerror(err)));
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      addr_ = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);
      if (addr_ == MAP_FAILED) {
        addr_ = nullptr;
        throw std::runtime_error("cannot map it: " + std::string(std::strerror(err)));
      }
    } else {
      ::close(fd);
    }
  }
  ~Mapping() {
    if (addr_) ::munmap(addr_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  unsigned char* data() const { return static_cast<unsigned char*>(addr_); }
  uint64_t size() const { return size_; }

  // Asks the kernel to read the file ahead, in the background, while the call starts computing. A developer
  // switch turns it off (BLIPDIFF_WEIGHTS_READAHEAD=0) for measuring.
  void read_ahead() const {
    const char* env = std::getenv("BLIPDIFF_WEIGHTS_READAHEAD");
    if (env && std::string(env) == "0") return;
    if (addr_) (void)::madvise(addr_, size_, MADV_WILLNEED);
  }

 private:
  void* addr_ = nullptr;
  uint64_t size_ = 0;
};

at::ScalarType scalar_type(const std::string& dtype) {
  static const std::map<std::string, at::ScalarType> kTypes = {
      {"F32", at::kFloat}, {"F16", at::kHalf},  {"BF16", at::kBFloat16}, {"F64", at::kDouble}, {"I64", at::kLong},
      {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},       {"U8", at::kByte},    {"BOOL", at::kBool}};
  return kTypes.at(dtype);  // parse_safetensors_header has checked the name
}

std::set<std::string> split_names(const std::string& list) {
  std::set<std::string> out;
  std::stringstream in(list);
  std::string name;
  while (std::getline(in, name, ',')) {
    if (!name.empty()) out.insert(name);
  }
  return out;
}

std::string first_few(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 5; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 5) out += ", ... (" + std::to_string(names.size()) + " in all)";
  return out;
}

}  // namespace

void attach_mapped_weights(torch::jit::Module& module, const std::string& path, const c10::Device& device) {
  const auto mapping = std::make_shared<Mapping>(path);
  const SafetensorsHeader header = parse_safetensors_header(mapping->data(), mapping->size());
  if (device.is_cpu()) mapping->read_ahead();
  const auto meta = header.metadata.find(kChannelsLastKey);
  const std::set<std::string> channels_last = split_names(meta == header.metadata.end() ? "" : meta->second);

  // Every tensor slot of the module (parameters and buffers) by dotted name, and which of them are placeholders.
  std::map<std::string, at::Tensor> slots;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) slots.emplace(p.name, p.value);
  for (const auto& b : module.named_buffers(/*recurse=*/true)) slots.emplace(b.name, b.value);
  const std::map<std::string, torch::jit::Module> submodules = submodules_by_name(module);

  std::set<std::string> filled;
  for (const SafetensorsEntry& e : header.tensors) {
    const auto slot = slots.find(e.name);
    if (slot == slots.end()) throw std::runtime_error("it has a tensor \"" + e.name + "\" that the module lacks");
    const at::Tensor& placeholder = slot->second;
    const at::ScalarType dtype = scalar_type(e.dtype);
    if (placeholder.numel() != 0) {
      throw std::runtime_error("the module already holds \"" + e.name + "\" (not a placeholder)");
    }
    if (placeholder.scalar_type() != dtype) {
      throw std::runtime_error("tensor \"" + e.name + "\" is " + e.dtype + " in the weights file but " +
                               std::string(c10::toString(placeholder.scalar_type())) + " in the module");
    }
    const uint64_t offset = header.data_offset + e.begin;
    if (offset % safetensors_itemsize(e.dtype) != 0) {
      throw std::runtime_error("tensor \"" + e.name + "\" is not aligned to its element size in the file");
    }

    std::vector<int64_t> sizes = e.shape;
    std::vector<int64_t> strides(sizes.size(), 1);
    for (int64_t i = static_cast<int64_t>(sizes.size()) - 2; i >= 0; --i) {
      strides[i] = strides[i + 1] * std::max<int64_t>(sizes[i + 1], 1);
    }
    if (channels_last.count(e.name)) {
      if (sizes.size() != 4) throw std::runtime_error("tensor \"" + e.name + "\" is listed channels-last but not 4-D");
      // Stored (out, height, width, in): present it as (out, in, height, width) with the same memory.
      sizes = {e.shape[0], e.shape[3], e.shape[1], e.shape[2]};
      strides = {strides[0], strides[3], strides[1], strides[2]};
    }
    at::Tensor t = at::from_blob(
        mapping->data() + offset, sizes, strides, [keep = mapping](void*) {},
        at::TensorOptions().dtype(dtype).device(at::kCPU));
    if (!device.is_cpu()) t = t.to(device);
    if (placeholder.requires_grad()) t.set_requires_grad(true);

    const size_t dot = e.name.rfind('.');
    const std::string owner = dot == std::string::npos ? "" : e.name.substr(0, dot);
    const std::string leaf = dot == std::string::npos ? e.name : e.name.substr(dot + 1);
    torch::jit::Module sub = submodules.at(owner);  // named_parameters/buffers only name attributes of submodules
    sub.setattr(leaf, t);
    filled.insert(e.name);
  }

  std::vector<std::string> missing;
  for (const auto& [name, t] : slots) {
    if (t.numel() == 0 && !filled.count(name)) missing.push_back(name);
  }
  if (!missing.empty()) throw std::runtime_error("it lacks the module's tensor(s) " + first_few(missing));
}

}  // namespace blipdiff
