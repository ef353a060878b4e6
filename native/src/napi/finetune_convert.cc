// JS <-> core conversions for fine-tuning and fine-tuned weights (the contract: src/bindings/types.ts).
#include <ATen/ATen.h>

#include <cstring>

#include "napi/convert.h"

namespace blipdiff::napi {

namespace {

at::Tensor int_tensor_from_js(const Napi::Value& value, const std::string& name, int64_t rows, int64_t cols) {
  const std::vector<int64_t> v = ids_from_js(value, name);
  if (static_cast<int64_t>(v.size()) != rows * cols) {
    range_error(std::to_string(rows * cols) + " values (steps x batch)", name, std::to_string(v.size()) + " values");
  }
  return at::tensor(v, at::kLong).reshape({rows, cols});
}

std::vector<int64_t> shape_from_js(const Napi::Value& value, const std::string& name, int64_t* numel) {
  if (!value.IsArray()) type_error("an array of sizes", name, value);
  const Napi::Array array = value.As<Napi::Array>();
  std::vector<int64_t> shape;
  *numel = 1;
  for (uint32_t i = 0; i < array.Length(); ++i) {
    const Napi::Value s = array.Get(i);
    if (!s.IsNumber()) type_error("an array of sizes", name, value);
    const double d = s.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != std::floor(d) || d > 1e12) range_error("non-negative integer sizes", name, describe_value(s));
    shape.push_back(static_cast<int64_t>(d));
    *numel *= shape.back();
  }
  return shape;
}

// NativeRawTensor {dtype: "F32" | "F16", shape, data: Uint8Array} -> a CPU tensor (copied).
at::Tensor raw_tensor_from_js(const Napi::Value& value, const std::string& name) {
  const Napi::Object obj = object_arg(value, name);
  const std::string dtype = string(obj, "dtype", name + ".");
  at::ScalarType type;
  if (dtype == "F32") {
    type = at::kFloat;
  } else if (dtype == "F16") {
    type = at::kHalf;
  } else {
    range_error("\"F32\" or \"F16\"", name + ".dtype", "\"" + dtype + "\"");
  }
  int64_t numel = 0;
  const std::vector<int64_t> shape = shape_from_js(obj.Get("shape"), name + ".shape", &numel);
  const Napi::Value data = obj.Get("data");
  if (!data.IsTypedArray() || data.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    type_error("a Uint8Array", name + ".data", data);
  }
  const Napi::Uint8Array bytes = data.As<Napi::Uint8Array>();
  const size_t want = static_cast<size_t>(numel) * at::elementSize(type);
  if (bytes.ByteLength() != want) {
    range_error(std::to_string(want) + " bytes (" + dtype + " " + c10::str(at::IntArrayRef(shape)) + ")",
                name + ".data", std::to_string(bytes.ByteLength()) + " bytes");
  }
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  if (want > 0) std::memcpy(t.data_ptr(), bytes.Data(), want);
  return t;
}

std::map<std::string, at::Tensor> tensor_map_from_js(const Napi::Value& value, const std::string& name, bool raw) {
  const Napi::Object obj = object_arg(value, name);
  std::map<std::string, at::Tensor> out;
  const Napi::Array keys = obj.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    const std::string key = keys.Get(i).As<Napi::String>().Utf8Value();
    const std::string item = name + "[\"" + key + "\"]";
    out.emplace(key, raw ? raw_tensor_from_js(obj.Get(key), item) : tensor_from_js(obj.Get(key), item));
  }
  return out;
}

Napi::Object raw_tensor_to_js(Napi::Env env, const at::Tensor& tensor) {
  const at::Tensor t = tensor.contiguous();
  const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
  Napi::Uint8Array data = Napi::Uint8Array::New(env, bytes);
  if (bytes > 0) std::memcpy(data.Data(), t.data_ptr(), bytes);
  Napi::Array shape = Napi::Array::New(env, static_cast<size_t>(t.dim()));
  for (int64_t i = 0; i < t.dim(); ++i) shape.Set(static_cast<uint32_t>(i), Napi::Number::New(env, double(t.size(i))));
  Napi::Object out = Napi::Object::New(env);
  out.Set("dtype", Napi::String::New(env, t.scalar_type() == at::kHalf ? "F16" : "F32"));
  out.Set("shape", shape);
  out.Set("data", data);
  return out;
}

}  // namespace

UnetOverride unet_override_from_js(const Napi::Value& value, const std::string& name) {
  const Napi::Object obj = object_arg(value, name);
  UnetOverride o;
  const std::string mode = string(obj, "mode", name + ".");
  if (mode == "full") {
    o.mode = UnetOverride::Mode::kFull;
  } else if (mode == "lora") {
    o.mode = UnetOverride::Mode::kLora;
    o.scale = number(obj, "scale", name + ".");
  } else {
    range_error("\"full\" or \"lora\"", name + ".mode", "\"" + mode + "\"");
  }
  o.tensors = tensor_map_from_js(obj.Get("tensors"), name + ".tensors", true);
  return o;
}

FinetuneParams finetune_params_from_js(const Napi::Value& value) {
  const Napi::Object obj = object_arg(value, "params");
  FinetuneParams p;
  p.mode = ranged([&] { return finetune_mode_from_string(string(obj, "mode", "params.")); });
  p.targets = tensor_from_js(obj.Get("targets"), "params.targets");
  p.caption_ids = ids_from_js(obj.Get("captionIds"), "params.captionIds");
  p.ctx_init = tensor_from_js(obj.Get("ctxInit"), "params.ctxInit");
  p.steps = integer(obj, "steps", "params.");
  p.batch_size = integer(obj, "batchSize", "params.");
  p.lr = number(obj, "lr", "params.");
  p.weight_decay = number(obj, "weightDecay", "params.");
  if (!obj.Get("loraRank").IsUndefined()) p.lora_rank = integer(obj, "loraRank", "params.");
  p.lora_alpha = obj.Get("loraAlpha").IsUndefined() ? static_cast<double>(p.lora_rank) : number(obj, "loraAlpha", "params.");
  const int64_t seed = integer(obj, "seed", "params.");
  if (seed < 0) range_error("a non-negative integer", "params.seed", std::to_string(seed));
  p.seed = static_cast<uint64_t>(seed);
  const std::string save = string(obj, "saveDtype", "params.");
  if (save == "float32") {
    p.save_dtype = at::kFloat;
  } else if (save == "float16") {
    p.save_dtype = at::kHalf;
  } else {
    range_error("\"float32\" or \"float16\"", "params.saveDtype", "\"" + save + "\"");
  }
  const Napi::Value record = obj.Get("record");
  if (!record.IsUndefined()) {
    if (!record.IsBoolean()) type_error("a boolean", "params.record", record);
    p.record = record.As<Napi::Boolean>().Value();
  }
  const Napi::Value draws = obj.Get("draws");
  if (!draws.IsUndefined() && !draws.IsNull()) {
    const Napi::Object d = object_arg(draws, "params.draws");
    FinetuneDraws fd;
    fd.index = int_tensor_from_js(d.Get("index"), "params.draws.index", p.steps, p.batch_size);
    fd.timesteps = int_tensor_from_js(d.Get("timesteps"), "params.draws.timesteps", p.steps, p.batch_size);
    fd.eps_vae = tensor_from_js(d.Get("epsVae"), "params.draws.epsVae");
    fd.noise = tensor_from_js(d.Get("noise"), "params.draws.noise");
    const Napi::Value init = d.Get("loraInit");
    if (!init.IsUndefined() && !init.IsNull()) fd.lora_init = tensor_map_from_js(init, "params.draws.loraInit", false);
    p.draws = std::move(fd);
  }
  return p;
}

Napi::Object finetune_result_to_js(Napi::Env env, const FinetuneResult& result) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Array losses = Napi::Array::New(env, result.losses.size());
  for (size_t i = 0; i < result.losses.size(); ++i) losses.Set(static_cast<uint32_t>(i), Napi::Number::New(env, result.losses[i]));
  out.Set("losses", losses);
  out.Set("ctx", tensor_to_js(env, result.ctx));
  Napi::Object tensors = Napi::Object::New(env);
  for (const auto& [name, t] : result.tensors) tensors.Set(name, raw_tensor_to_js(env, t));
  out.Set("tensors", tensors);
  Napi::Object timings = Napi::Object::New(env);
  timings.Set("prepareMs", Napi::Number::New(env, result.timings.prepare_ms));
  timings.Set("trainMs", Napi::Number::New(env, result.timings.train_ms));
  timings.Set("totalMs", Napi::Number::New(env, result.timings.total_ms));
  Napi::Array step_ms = Napi::Array::New(env, result.timings.step_ms.size());
  for (size_t i = 0; i < result.timings.step_ms.size(); ++i)
    step_ms.Set(static_cast<uint32_t>(i), Napi::Number::New(env, result.timings.step_ms[i]));
  timings.Set("stepMs", step_ms);
  out.Set("timings", timings);
  if (result.step0) {
    Napi::Object s = Napi::Object::New(env);
    s.Set("latents", tensor_to_js(env, result.step0->latents));
    s.Set("noisy", tensor_to_js(env, result.step0->noisy));
    s.Set("states", tensor_to_js(env, result.step0->states));
    Napi::Object grads = Napi::Object::New(env);
    for (const auto& [name, t] : result.step0->grads) grads.Set(name, tensor_to_js(env, t));
    s.Set("grads", grads);
    out.Set("step0", s);
  }
  return out;
}

}  // namespace blipdiff::napi
