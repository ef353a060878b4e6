// Error types of the core. The N-API layer maps `code()` onto the JS Error's `code` property.
#pragma once

#include <atomic>
#include <exception>
#include <stdexcept>
#include <string>

namespace blipdiff {

// Stable error codes; the TypeScript side matches on these strings.
namespace codes {
inline constexpr const char* kInvalidArgument = "ERR_BLIPDIFF_INVALID_ARG";
inline constexpr const char* kChecksum = "ERR_BLIPDIFF_CHECKSUM";
inline constexpr const char* kDevice = "ERR_BLIPDIFF_DEVICE";
inline constexpr const char* kModel = "ERR_BLIPDIFF_MODEL";
inline constexpr const char* kNotLoaded = "ERR_BLIPDIFF_NOT_LOADED";
inline constexpr const char* kRuntime = "ERR_BLIPDIFF_RUNTIME";
inline constexpr const char* kNonFinite = "ERR_BLIPDIFF_NONFINITE";
inline constexpr const char* kOom = "ERR_BLIPDIFF_OOM";
inline constexpr const char* kAbort = "ABORT_ERR";
}  // namespace codes

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const noexcept { return code_; }

 private:
  std::string code_;
};

class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& message) : Error(codes::kInvalidArgument, message) {}
};

// Thrown between steps when the caller's cancel flag is set.
class AbortError : public Error {
 public:
  AbortError() : Error(codes::kAbort, "The operation was aborted") {}
};

// Throws AbortError when `cancel` is set (a null `cancel` never aborts). `checkpoint` names the place
// ("checksum", "module", ...) for the test hook BLIPDIFF_TEST_PAUSE_AT (core/diagnostics.h).
void check_cancel(const std::atomic<bool>* cancel, const char* checkpoint);

// The message of any exception without c10's backtrace (c10::Error::what() appends one). For an error
// raised inside TorchScript ("The following operation failed in the TorchScript interpreter." followed by
// two tracebacks), the root cause comes first, on one line, then where it happened:
// "<innermost error message> (in TorchScript: <innermost frame of the serialized code>)".
std::string describe(const std::exception& e);

// Rethrows the exception being handled as an Error whose message starts with `context`
// ("while running UNet step 12/50: <message>"). Errors of our own keep their code; aborts pass unchanged.
[[noreturn]] void rethrow_with_context(const std::string& context);

}  // namespace blipdiff
