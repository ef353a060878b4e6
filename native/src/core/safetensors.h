// Reading the header of a safetensors file: an 8-byte little-endian length, then that many bytes of JSON naming each
// tensor's dtype, shape and byte range in the data that follows. Only what the format allows is accepted; anything
// else is an error naming the problem. No libtorch here: core/mapped_weights.cc makes the tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace blipdiff {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte range in the data section, [begin, end)
  uint64_t end = 0;
};

struct SafetensorsHeader {
  uint64_t data_offset = 0;  // where the data section starts in the file: 8 + the header's length
  std::vector<SafetensorsEntry> tensors;  // in the header's order
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

// Parses the header at the start of `file` (`size` bytes: the whole file, so that byte ranges are checked against
// it). Throws std::runtime_error with a message that says what is wrong ("the header length 12345 runs past the
// end of the file", "tensor \"x\": data_offsets [0, 10] hold 10 bytes, which its dtype F32 and shape do not fill
// exactly").
SafetensorsHeader parse_safetensors_header(const unsigned char* file, uint64_t size);

// Bytes per element of a safetensors dtype; 0 when the dtype is not one of the above.
size_t safetensors_itemsize(const std::string& dtype);

}  // namespace blipdiff
