// SHA-256 (FIPS 180-4), streaming, with the x86 SHA extensions when the CPU has them; used to verify
// exported module files before loading them (core/verify.h).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace blipdiff {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> digest();  // finishes the hash; the object must not be updated afterwards
  std::string hex_digest();

 private:
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Hex SHA-256 of a file's contents; throws blipdiff::Error when it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace blipdiff
