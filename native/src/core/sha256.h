// SHA-256 (FIPS 180-4), streaming; used to verify exported module files before loading them.
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
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// Hex SHA-256 of a file's contents; throws blipdiff::Error when it cannot be read.
std::string sha256_file(const std::string& path);

// Throws an Error (code ERR_BLIPDIFF_CHECKSUM) naming the file when its hash differs from `expected_hex`.
void verify_sha256(const std::string& path, const std::string& expected_hex, const std::string& what);

}  // namespace blipdiff
