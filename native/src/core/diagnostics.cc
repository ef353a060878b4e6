#include "core/diagnostics.h"

#include <ATen/Context.h>
#include <c10/util/Exception.h>
#include <c10/util/Logging.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

namespace blipdiff {

namespace {

bool env_is_one(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "1";
}

class CollectingHandler : public c10::WarningHandler {
 public:
  explicit CollectingHandler(WarningCollector& collector) : collector_(collector) {}
  void process(const c10::Warning& warning) override { collector_.add(warning.msg()); }

 private:
  WarningCollector& collector_;
};

}  // namespace

bool debug_enabled() {
  static const bool debug = env_is_one("BLIPDIFF_DEBUG");
  return debug;
}

void init_runtime_diagnostics() {
  static std::once_flag once;
  std::call_once(once, [] {
    at::globalContext().setUserEnabledNNPACK(false);
    // FATAL (c10::GLOG_FATAL). This is the threshold of c10's own logger, which the official torch
    // builds use; a libtorch built with glog (USE_GLOG=ON) has glog's minloglevel instead, not set here.
    if (!debug_enabled()) FLAGS_caffe2_log_level = 3;
  });
}

void WarningCollector::add(const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!debug_enabled() && !seen_.insert(message).second) return;
  if (messages_.size() < (debug_enabled() ? kMaxDebugWarnings : kMaxWarnings)) {
    messages_.push_back(message);
  } else {
    ++dropped_;
  }
}

std::vector<std::string> WarningCollector::take() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  out.swap(messages_);
  if (dropped_ > 0) out.push_back("... and " + std::to_string(dropped_) + " more libtorch warnings");
  seen_.clear();
  dropped_ = 0;
  return out;
}

struct ScopedWarningCapture::Impl {
  explicit Impl(WarningCollector& collector) : handler(collector), guard(&handler) {}
  CollectingHandler handler;
  c10::WarningUtils::WarningHandlerGuard guard;
};

ScopedWarningCapture::ScopedWarningCapture(WarningCollector& collector)
    : impl_(std::make_unique<Impl>(collector)) {}

ScopedWarningCapture::~ScopedWarningCapture() = default;

void emit_test_warnings(const char* where) {
  if (!env_is_one("BLIPDIFF_TEST_NATIVE_WARNINGS")) return;
  TORCH_WARN("blipdiff test warning (", where, ")");
  LOG(WARNING) << "blipdiff test log line (" << where << ")";
}

void pause_for_test(const std::atomic<bool>& cancel, const char* checkpoint) {
  const char* at = std::getenv("BLIPDIFF_TEST_PAUSE_AT");
  if (!at || std::strcmp(at, checkpoint) != 0) return;
  if (const char* marker = std::getenv("BLIPDIFF_TEST_PAUSE_MARKER")) std::ofstream(marker).put('\n');
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!cancel.load() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

}  // namespace blipdiff
