// Conversions between JS values and the core's params structs, on the JS thread. Shape and type checks
// here are a backstop (TypeScript validates first); messages: "Expected <what> for <name> but received <value>".
#pragma once

#include <napi.h>

#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "core/errors.h"
#include "core/edit/edit.h"
#include "core/finetune/finetune.h"
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

// Field readers shared by the converters: TypeError/RangeError naming `prefix + key`.
[[noreturn]] void type_error(const std::string& what, const std::string& name, const Napi::Value& value);
[[noreturn]] void range_error(const std::string& what, const std::string& name, const std::string& received);
double number(const Napi::Object& obj, const char* key, const std::string& prefix);
int64_t integer(const Napi::Object& obj, const char* key, const std::string& prefix);
std::string string(const Napi::Object& obj, const char* key, const std::string& prefix);

// Calls `fn` and turns core InvalidArgument errors into RangeErrors.
template <typename Fn>
auto ranged(Fn&& fn) {
  try {
    return fn();
  } catch (const InvalidArgument& e) {
    throw ArgError(ArgError::Kind::kRange, e.what());
  }
}

at::Tensor tensor_from_js(const Napi::Value& value, const std::string& name);
std::vector<int64_t> ids_from_js(const Napi::Value& value, const std::string& name);

ModelSpec spec_from_js(const Napi::Value& value);
LoadOptions load_options_from_js(const Napi::Value& value);
GenerateParams generate_params_from_js(const Napi::Value& value);
SchedulerConfig scheduler_config_from_js(const Napi::Value& value);

Napi::Object tensor_to_js(Napi::Env env, const at::Tensor& tensor);
Napi::Object image_to_js(Napi::Env env, const Image& image);
Napi::Object result_to_js(Napi::Env env, const GenerateResult& result);

// Fine-tuning (finetune_convert.cc).
FinetuneParams finetune_params_from_js(const Napi::Value& value);
// NativeUnetOverride -> UnetOverride (tensors copied; float32 or float16).
UnetOverride unet_override_from_js(const Napi::Value& value, const std::string& name);
Napi::Object finetune_result_to_js(Napi::Env env, const FinetuneResult& result);

// Editing (edit_convert.cc).
EditParams edit_params_from_js(const Napi::Value& value);
Napi::Object edit_result_to_js(Napi::Env env, const EditResult& result);

}  // namespace blipdiff::napi
