#include "core/errors.h"

#include <c10/util/Exception.h>

#include <regex>
#include <sstream>
#include <vector>

#include "core/diagnostics.h"

namespace blipdiff {

namespace {

constexpr const char* kTorchScriptHeader = "The following operation failed in the TorchScript interpreter.";

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  const size_t end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

// "The following operation failed in the TorchScript interpreter.\nTraceback of TorchScript, serialized
// code ...\n  File "code/__torch__/x.py", line 13, in inner\n ...\nRuntimeError: <message>" ->
// "RuntimeError: <message> (in TorchScript: inner, code/__torch__/x.py:13)". The root cause is the last
// "<Name>Error: " / "<Name>Exception: " line that starts a line after the tracebacks, with every line
// after it (some messages span lines), joined on one line.
std::string describe_torchscript(const std::string& text) {
  std::vector<std::string> lines = split_lines(text);
  static const std::regex kCause(R"(^([A-Za-z_][A-Za-z0-9_.]*(Error|Exception)): .*)");
  static const std::regex kFrame(R"re(^\s*File "([^"]+)", line (\d+), in (\S+))re");
  size_t cause = lines.size();
  // The innermost frame of the model's own code: of the original-code traceback when there is one, and
  // outside torch's own Python files (torch/nn/functional.py says less than the model line calling it).
  std::string where;
  bool in_original = false;
  bool have_original = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::smatch m;
    if (lines[i].rfind("Traceback of TorchScript, original code", 0) == 0) in_original = true;
    if (std::regex_search(lines[i], m, kFrame)) {
      const std::string file = m[1].str();
      const bool torch_internal = file.find("/torch/") != std::string::npos;
      if (in_original && !have_original) where.clear();
      if (!torch_internal && (in_original || !have_original))
        where = m[3].str() + ", " + file + ":" + m[2].str();
      have_original = have_original || in_original;
    }
    if (std::regex_match(lines[i], kCause)) cause = i;
  }
  if (cause == lines.size()) return text;
  std::string message;
  // TorchScript names Python's own exceptions "builtins.ValueError" and so on.
  if (lines[cause].rfind("builtins.", 0) == 0) lines[cause].erase(0, std::string("builtins.").size());
  for (size_t i = cause; i < lines.size(); ++i) {
    const std::string line = trim(lines[i]);
    if (line.empty()) continue;
    if (!message.empty()) message += ' ';
    message += line;
  }
  if (!where.empty()) message += " (in TorchScript: " + where + ")";
  // The whole interpreter report stays available for developers.
  if (debug_enabled()) message += "\n" + text;
  return message;
}

}  // namespace

void check_cancel(const std::atomic<bool>* cancel, const char* checkpoint) {
  if (!cancel) return;
  pause_for_test(*cancel, checkpoint);
  if (cancel->load()) throw AbortError();
}

std::string describe(const std::exception& e) {
  std::string text = e.what();
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) text = c10_error->what_without_backtrace();
  if (text.find(kTorchScriptHeader) != std::string::npos) return describe_torchscript(text);
  return text;
}

void rethrow_with_context(const std::string& context) {
  try {
    throw;
  } catch (const AbortError&) {
    throw;
  } catch (const Error& e) {
    throw Error(e.code(), context + ": " + e.what());
  } catch (const std::exception& e) {
    throw Error(codes::kRuntime, context + ": " + describe(e));
  }
}

}  // namespace blipdiff
