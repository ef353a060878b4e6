// SHA-256 (FIPS 180-4), streaming, with the x86 SHA extensions when the CPU has them; used to verify
// exported module files before loading them (core/verify.h).
#pragma once

#include <array>
#include <atomic>
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

// Hex SHA-256 of a file's contents; throws blipdiff::Error when it cannot be read, and AbortError when
// `cancel` is set (checked after every 1 MiB chunk; checkpoint "checksum").
std::string sha256_file(const std::string& path, const std::atomic<bool>* cancel = nullptr);

// Which compression routine this process uses ("sha-ni" or "portable"; BLIPDIFF_SHA256_PORTABLE=1 forces
// the portable one) and how many bytes each has compressed so far (tests check that a path really ran).
struct Sha256Stats {
  const char* implementation;
  uint64_t portable_bytes;
  uint64_t sha_ni_bytes;
};
Sha256Stats sha256_stats();

}  // namespace blipdiff
