// What libtorch may print, and where it goes instead.
//
// Policy: stderr carries only blipdiff's own messages, on any CPU, whether blipdiff runs as the CLI or
// as a library inside someone else's process.
//  - NNPACK is disabled at init (init_runtime_diagnostics). On CPUs it does not support, libtorch logs
//    "Could not initialize NNPACK! Reason: Unsupported hardware." once per convolution; with NNPACK
//    disabled that check is never reached. blipdiff's batch sizes are below the size at which libtorch
//    would pick NNPACK, so no convolution changes.
//  - c10's log level (FLAGS_caffe2_log_level, the LOG(WARNING)/LOG(ERROR) stream that writes straight to
//    std::cerr) is raised to FATAL at init: such lines are dropped, not collected (c10 offers no sink
//    for them). Errors that matter reach us as exceptions, not log lines.
//  - TORCH_WARN warnings raised while a Pipeline works are collected by a thread-local c10 warning
//    handler (ScopedWarningCapture) into the Pipeline's WarningCollector; the N-API `takeWarnings()`
//    drains them and the TypeScript side shows them once on its warning channel (`-q` silences them).
//    Outside a capture, c10's default handler writes through the log stream above, so it is silent too.
//  - BLIPDIFF_DEBUG=1 keeps everything: the log level is left as libtorch set it (TORCH_CPP_LOG_LEVEL
//    applies) and every warning occurrence is kept, not only the first of each message.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

namespace blipdiff {

// BLIPDIFF_DEBUG=1 (read once per process).
bool debug_enabled();

// Disables NNPACK and raises c10's log level (unless BLIPDIFF_DEBUG=1). Idempotent and cheap after the
// first call; called when the addon loads and again by Pipeline::load.
void init_runtime_diagnostics();

// Warnings collected for one owner (a Pipeline). Thread-safe: workers add, the JS thread takes.
class WarningCollector {
 public:
  // Keeps the first occurrence of each message (every occurrence with BLIPDIFF_DEBUG=1). Bounded: past
  // kMaxWarnings kept entries (kMaxDebugWarnings with BLIPDIFF_DEBUG=1) between two takes, further
  // messages are counted in a final "... and N more libtorch warnings" entry.
  void add(const std::string& message);
  // The collected messages in order of arrival; empties the collector (and forgets what was seen).
  std::vector<std::string> take();

  static constexpr size_t kMaxWarnings = 100;
  static constexpr size_t kMaxDebugWarnings = 100000;

 private:
  std::mutex mutex_;
  std::vector<std::string> messages_;
  std::unordered_set<std::string> seen_;
  size_t dropped_ = 0;
};

// Routes c10 warnings (TORCH_WARN) raised on this thread into `collector` while it lives; restores the
// previous handler on destruction. c10's warning handler is thread-local, so other threads are unaffected.
class ScopedWarningCapture {
 public:
  explicit ScopedWarningCapture(WarningCollector& collector);
  ~ScopedWarningCapture();
  ScopedWarningCapture(const ScopedWarningCapture&) = delete;
  ScopedWarningCapture& operator=(const ScopedWarningCapture&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Test hook: with BLIPDIFF_TEST_NATIVE_WARNINGS=1, raises one TORCH_WARN ("blipdiff test warning
// (<where>)") and one LOG(WARNING) ("blipdiff test log line (<where>)") on the calling thread, so tests
// can check the policy above on any CPU.
void emit_test_warnings(const char* where);

// Test hook for cancellation: with BLIPDIFF_TEST_PAUSE_AT=<checkpoint>, a thread that reaches that
// checkpoint (see check_cancel in core/errors.h) creates the file BLIPDIFF_TEST_PAUSE_MARKER (when set)
// and waits there until `cancel` is set (at most 30 s), so a test can abort a call at a known place
// without depending on timing. The caller's own cancellation check follows the wait: a checkpoint that
// did not check would let the call run on and succeed.
void pause_for_test(const std::atomic<bool>& cancel, const char* checkpoint);

}  // namespace blipdiff
