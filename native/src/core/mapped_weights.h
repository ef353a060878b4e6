// Putting a module's weights file (manifest format_version 2: a safetensors file beside the TorchScript archive,
// whose parameters and buffers are empty placeholders; docs/manifest.md) into the loaded module. Includes
// torch/script.h: include only from core .cc files.
#pragma once

#include <torch/script.h>

#include <string>

namespace blipdiff {

// Replaces every placeholder of `module` with the tensor of the same dotted name in the safetensors file `path`.
//
// On the CPU the tensors point into a private mapping of the file: nothing is read or copied at load, a call reads
// the pages it touches from the page cache (the file stays cached between CLI calls and is shared by every process
// that maps it), and a write (fine-tuning) copies only the page it changes, never the file. The mapping lives as
// long as any of its tensors. On other devices each tensor is copied to `device`.
//
// 4-D tensors listed in the header's `blipdiff.channels_last` are stored in (out, height, width, in) order and come
// back as (out, in, height, width) channels-last views. Throws std::runtime_error naming the problem when the file
// is not a valid safetensors file, or when its tensors and the placeholders differ in names, dtypes or alignment.
void attach_mapped_weights(torch::jit::Module& module, const std::string& path, const c10::Device& device);

}  // namespace blipdiff
