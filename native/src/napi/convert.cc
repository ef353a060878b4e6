#include "napi/convert.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>

#include "core/errors.h"

namespace blipdiff::napi {

[[noreturn]] void type_error(const std::string& what, const std::string& name, const Napi::Value& value) {
  throw ArgError(ArgError::Kind::kType, "Expected " + what + " for " + name + " but received " + describe_value(value));
}

[[noreturn]] void range_error(const std::string& what, const std::string& name, const std::string& received) {
  throw ArgError(ArgError::Kind::kRange, "Expected " + what + " for " + name + " but received " + received);
}

double number(const Napi::Object& obj, const char* key, const std::string& prefix) {
  const Napi::Value v = obj.Get(key);
  if (!v.IsNumber()) type_error("a number", prefix + key, v);
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d)) range_error("a finite number", prefix + key, std::to_string(d));
  return d;
}

int64_t integer(const Napi::Object& obj, const char* key, const std::string& prefix) {
  const double d = number(obj, key, prefix);
  if (d != std::floor(d) || std::fabs(d) > 9007199254740991.0) range_error("an integer", prefix + key, std::to_string(d));
  return static_cast<int64_t>(d);
}

std::string string(const Napi::Object& obj, const char* key, const std::string& prefix) {
  const Napi::Value v = obj.Get(key);
  if (!v.IsString()) type_error("a string", prefix + key, v);
  return v.As<Napi::String>().Utf8Value();
}

namespace {

ModuleFile module_file(const Napi::Object& modules, const char* key) {
  const std::string name = std::string("modules.") + key;
  const Napi::Object m = object_arg(modules.Get(key), name);
  ModuleFile file{string(m, "path", name + "."), string(m, "sha256", name + "."), "", ""};
  const Napi::Value weights = m.Get("weights");
  if (!weights.IsUndefined() && !weights.IsNull()) {
    const Napi::Object w = object_arg(weights, name + ".weights");
    file.weights = string(w, "path", name + ".weights.");
    file.weights_sha256 = string(w, "sha256", name + ".weights.");
  }
  return file;
}

}  // namespace

ErrorInfo capture_error() {
  try {
    throw;
  } catch (const ArgError& e) {
    return {e.what(), e.kind == ArgError::Kind::kType ? "ERR_INVALID_ARG_TYPE" : "ERR_INVALID_ARG_VALUE",
            e.kind == ArgError::Kind::kType ? "TypeError" : "RangeError"};
  } catch (const AbortError& e) {
    return {e.what(), e.code(), "AbortError"};
  } catch (const Error& e) {
    return {e.what(), e.code(), "Error"};
  } catch (const std::exception& e) {
    return {describe(e), codes::kRuntime, "Error"};
  } catch (...) {
    return {"unknown native error", codes::kRuntime, "Error"};
  }
}

Napi::Error make_error(Napi::Env env, const ErrorInfo& info) {
  Napi::Error error = info.name == "TypeError"    ? Napi::TypeError::New(env, info.message)
                      : info.name == "RangeError" ? Napi::RangeError::New(env, info.message)
                                                  : Napi::Error::New(env, info.message);
  if (info.name == "AbortError") error.Set("name", Napi::String::New(env, "AbortError"));
  if (!info.code.empty()) error.Set("code", Napi::String::New(env, info.code));
  return error;
}

std::string describe_value(const Napi::Value& value) {
  if (value.IsUndefined()) return "undefined";
  if (value.IsNull()) return "null";
  if (value.IsBoolean()) return value.As<Napi::Boolean>().Value() ? "true" : "false";
  if (value.IsNumber()) {
    const double d = value.As<Napi::Number>().DoubleValue();
    std::string s = std::to_string(d);
    if (d == std::floor(d) && std::fabs(d) < 1e15) s = std::to_string(static_cast<int64_t>(d));
    return s;
  }
  if (value.IsString()) {
    std::string s = value.As<Napi::String>().Utf8Value();
    if (s.size() > 60) s = s.substr(0, 57) + "...";
    return "\"" + s + "\"";
  }
  if (value.IsTypedArray()) {
    return "a typed array of length " + std::to_string(value.As<Napi::TypedArray>().ElementLength());
  }
  if (value.IsArray()) return "an array of length " + std::to_string(value.As<Napi::Array>().Length());
  if (value.IsFunction()) return "a function";
  return "an object";
}

Napi::Object object_arg(const Napi::Value& value, const std::string& name) {
  if (!value.IsObject() || value.IsArray()) type_error("an object", name, value);
  return value.As<Napi::Object>();
}

at::Tensor tensor_from_js(const Napi::Value& value, const std::string& name) {
  const Napi::Object obj = object_arg(value, name);
  const Napi::Value data = obj.Get("data");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    type_error("a Float32Array", name + ".data", data);
  }
  const Napi::Value shape_value = obj.Get("shape");
  if (!shape_value.IsArray()) type_error("an array of sizes", name + ".shape", shape_value);
  const Napi::Array shape_array = shape_value.As<Napi::Array>();
  std::vector<int64_t> shape;
  int64_t numel = 1;
  for (uint32_t i = 0; i < shape_array.Length(); ++i) {
    const Napi::Value s = shape_array.Get(i);
    if (!s.IsNumber()) type_error("an array of sizes", name + ".shape", shape_value);
    const double d = s.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != std::floor(d) || d > 1e12) range_error("non-negative integer sizes", name + ".shape", describe_value(s));
    shape.push_back(static_cast<int64_t>(d));
    numel *= shape.back();
  }
  const Napi::Float32Array array = data.As<Napi::Float32Array>();
  if (static_cast<int64_t>(array.ElementLength()) != numel) {
    range_error(std::to_string(numel) + " values (the product of shape " + c10::str(at::IntArrayRef(shape)) + ")",
                name + ".data", std::to_string(array.ElementLength()) + " values");
  }
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  if (numel > 0) std::memcpy(t.data_ptr<float>(), array.Data(), static_cast<size_t>(numel) * sizeof(float));
  return t;
}

std::vector<int64_t> ids_from_js(const Napi::Value& value, const std::string& name) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    type_error("an Int32Array", name, value);
  }
  const Napi::Int32Array array = value.As<Napi::Int32Array>();
  std::vector<int64_t> ids(array.ElementLength());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = array[i];
  return ids;
}

SchedulerConfig scheduler_config_from_js(const Napi::Value& value) {
  const Napi::Object obj = object_arg(value, "scheduler config");
  SchedulerConfig config;
  const Napi::Array keys = obj.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string key = keys.Get(i).ToString().Utf8Value();
    const Napi::Value v = obj.Get(key);
    if (v.IsBoolean()) {
      config.set(key, v.As<Napi::Boolean>().Value());
    } else if (v.IsNumber()) {
      config.set(key, v.As<Napi::Number>().DoubleValue());
    } else if (v.IsString()) {
      config.set(key, v.As<Napi::String>().Utf8Value());
    } else if (v.IsArray()) {
      const Napi::Array a = v.As<Napi::Array>();
      std::vector<double> numbers;
      bool all_numbers = true;
      for (uint32_t j = 0; j < a.Length() && all_numbers; ++j) {
        const Napi::Value e = a.Get(j);
        all_numbers = e.IsNumber();
        if (all_numbers) numbers.push_back(e.As<Napi::Number>().DoubleValue());
      }
      if (all_numbers) config.set(key, std::move(numbers));
    } else {
      config.set(key, std::monostate{});
    }
  }
  return config;
}

ModelSpec spec_from_js(const Napi::Value& value) {
  const Napi::Object obj = object_arg(value, "spec");
  ModelSpec spec;
  const Napi::Object modules = object_arg(obj.Get("modules"), "spec.modules");
  spec.qformer = module_file(modules, "qformer");
  spec.text_encoder = module_file(modules, "text_encoder");
  spec.unet = module_file(modules, "unet");
  spec.vae_decoder = module_file(modules, "vae_decoder");
  spec.vae_encoder = module_file(modules, "vae_encoder");
  const Napi::Value cn = modules.Get("controlnet");
  if (!cn.IsUndefined() && !cn.IsNull()) spec.controlnet = module_file(modules, "controlnet");
  spec.num_query_tokens = integer(obj, "numQueryTokens", "spec.");
  spec.ctx_begin_pos = integer(obj, "ctxBeginPos", "spec.");
  spec.text_max_length = integer(obj, "textMaxLength", "spec.");
  spec.latent_channels = integer(obj, "latentChannels", "spec.");
  spec.latent_scale = integer(obj, "latentScale", "spec.");
  spec.vae_scaling_factor = number(obj, "vaeScalingFactor", "spec.");
  spec.scheduler = scheduler_config_from_js(obj.Get("scheduler"));
  ranged([&] { spec.validate(); return 0; });
  return spec;
}

LoadOptions load_options_from_js(const Napi::Value& value) {
  const Napi::Object obj = object_arg(value, "options");
  LoadOptions options;
  options.device = string(obj, "device", "options.");
  options.dtype = ranged([&] { return dtype_from_string(string(obj, "dtype", "options.")); });
  const Napi::Value verify = obj.Get("verifyChecksums");
  if (!verify.IsUndefined()) {
    if (!verify.IsBoolean()) type_error("a boolean", "options.verifyChecksums", verify);
    options.verify_checksums = verify.As<Napi::Boolean>().Value();
  }
  const Napi::Value optimize = obj.Get("optimize");
  if (optimize.IsBoolean()) options.optimize = optimize.As<Napi::Boolean>().Value();
  const Napi::Value subject_only = obj.Get("subjectOnly");
  if (subject_only.IsBoolean()) options.subject_only = subject_only.As<Napi::Boolean>().Value();
  return options;
}

GenerateParams generate_params_from_js(const Napi::Value& value) {
  const Napi::Object obj = object_arg(value, "params");
  GenerateParams p;
  p.cond_ids = ids_from_js(obj.Get("condIds"), "params.condIds");
  p.uncond_ids = ids_from_js(obj.Get("uncondIds"), "params.uncondIds");
  p.query_embeds = tensor_from_js(obj.Get("queryEmbeds"), "params.queryEmbeds");
  p.width = integer(obj, "width", "params.");
  p.height = integer(obj, "height", "params.");
  p.steps = integer(obj, "steps", "params.");
  p.guidance = number(obj, "guidance", "params.");
  const int64_t seed = integer(obj, "seed", "params.");
  if (seed < 0) range_error("a non-negative integer", "params.seed", std::to_string(seed));
  p.seed = static_cast<uint64_t>(seed);
  p.num_images = integer(obj, "numImages", "params.");
  p.scheduler = ranged([&] { return scheduler_kind_from_string(string(obj, "scheduler", "params.")); });
  const Napi::Value latents = obj.Get("latents");
  if (!latents.IsUndefined() && !latents.IsNull()) p.latents = tensor_from_js(latents, "params.latents");
  const Napi::Value control = obj.Get("controlImage");
  if (!control.IsUndefined() && !control.IsNull()) p.control_image = tensor_from_js(control, "params.controlImage");
  if (!obj.Get("conditioningScale").IsUndefined()) p.conditioning_scale = number(obj, "conditioningScale", "params.");
  const Napi::Value record = obj.Get("recordSteps");
  if (!record.IsUndefined()) {
    if (!record.IsBoolean()) type_error("a boolean", "params.recordSteps", record);
    p.record_steps = record.As<Napi::Boolean>().Value();
  }
  const Napi::Value unet = obj.Get("unet");
  if (!unet.IsUndefined() && !unet.IsNull()) p.unet = unet_override_from_js(unet, "params.unet");
  return p;
}

Napi::Object tensor_to_js(Napi::Env env, const at::Tensor& tensor) {
  const at::Tensor t = tensor.to(at::kCPU, at::kFloat).contiguous();
  Napi::Float32Array data = Napi::Float32Array::New(env, static_cast<size_t>(t.numel()));
  if (t.numel() > 0) std::memcpy(data.Data(), t.data_ptr<float>(), static_cast<size_t>(t.numel()) * sizeof(float));
  Napi::Array shape = Napi::Array::New(env, static_cast<size_t>(t.dim()));
  for (int64_t i = 0; i < t.dim(); ++i) shape.Set(static_cast<uint32_t>(i), Napi::Number::New(env, double(t.size(i))));
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", data);
  out.Set("shape", shape);
  return out;
}

Napi::Object image_to_js(Napi::Env env, const Image& image) {
  Napi::Uint8Array data = Napi::Uint8Array::New(env, image.data.size());
  if (!image.data.empty()) std::memcpy(data.Data(), image.data.data(), image.data.size());
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", data);
  out.Set("width", Napi::Number::New(env, double(image.width)));
  out.Set("height", Napi::Number::New(env, double(image.height)));
  out.Set("channels", Napi::Number::New(env, double(image.channels)));
  return out;
}

Napi::Object result_to_js(Napi::Env env, const GenerateResult& result) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Array images = Napi::Array::New(env, result.images.size());
  for (size_t i = 0; i < result.images.size(); ++i) images.Set(static_cast<uint32_t>(i), image_to_js(env, result.images[i]));
  out.Set("images", images);
  Napi::Array seeds = Napi::Array::New(env, result.seeds.size());
  for (size_t i = 0; i < result.seeds.size(); ++i) seeds.Set(static_cast<uint32_t>(i), Napi::Number::New(env, double(result.seeds[i])));
  out.Set("seeds", seeds);
  Napi::Object timings = Napi::Object::New(env);
  timings.Set("textMs", Napi::Number::New(env, result.timings.text_ms));
  timings.Set("denoiseMs", Napi::Number::New(env, result.timings.denoise_ms));
  timings.Set("decodeMs", Napi::Number::New(env, result.timings.decode_ms));
  timings.Set("totalMs", Napi::Number::New(env, result.timings.total_ms));
  out.Set("timings", timings);
  if (!result.step_latents.empty()) {
    Napi::Array steps = Napi::Array::New(env, result.step_latents.size());
    for (size_t i = 0; i < result.step_latents.size(); ++i) steps.Set(static_cast<uint32_t>(i), tensor_to_js(env, result.step_latents[i]));
    out.Set("stepLatents", steps);
  }
  if (result.vae_input) out.Set("vaeInput", tensor_to_js(env, *result.vae_input));
  return out;
}

}  // namespace blipdiff::napi
