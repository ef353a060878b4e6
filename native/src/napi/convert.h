// Conversions between JS values and the core's params structs, on the JS thread. Shape and type checks
// here are a backstop (TypeScript validates first); messages: "Expected <what> for <name> but received <value>".
#pragma once

#include <napi.h>

#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "core/params.h"

namespace blipdiff::napi {

// A bad argument found while converting: becomes a JS TypeError or RangeError.
class ArgError : public std::runtime_error {
 public:
  enum class Kind { kType, kRange };
  ArgError(Kind kind, const std::string& message) : std::runtime_error(message), kind(kind) {}
  Kind kind;
};

// An error captured on a worker thread, turned into a JS Error on the JS thread.
struct ErrorInfo {
  std::string message;
  std::string code;  // the JS Error's `code`; empty for none
  std::string name;  // "Error", "TypeError", "RangeError" or "AbortError"
};

// Call inside a catch block: describes the exception being handled.
ErrorInfo capture_error();
Napi::Error make_error(Napi::Env env, const ErrorInfo& info);

// Describes a JS value for error messages ("a string", "[1,2]", "undefined", ...).
std::string describe_value(const Napi::Value& value);

Napi::Object object_arg(const Napi::Value& value, const std::string& name);
at::Tensor tensor_from_js(const Napi::Value& value, const std::string& name);
std::vector<int64_t> ids_from_js(const Napi::Value& value, const std::string& name);

ModelSpec spec_from_js(const Napi::Value& value);
LoadOptions load_options_from_js(const Napi::Value& value);
GenerateParams generate_params_from_js(const Napi::Value& value);
SchedulerConfig scheduler_config_from_js(const Napi::Value& value);

Napi::Object tensor_to_js(Napi::Env env, const at::Tensor& tensor);
Napi::Object image_to_js(Napi::Env env, const Image& image);
Napi::Object result_to_js(Napi::Env env, const GenerateResult& result);

}  // namespace blipdiff::napi
