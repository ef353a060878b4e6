// JS <-> core conversions for editing (the contract: src/bindings/types.ts, NativeEditParams / NativeEditResult).
#include <ATen/ATen.h>

#include "core/edit/edit.h"
#include "napi/convert.h"

namespace blipdiff::napi {

namespace {

std::vector<float> floats_from_js(const Napi::Value& value, const std::string& name) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    type_error("a Float32Array", name, value);
  }
  const Napi::Float32Array array = value.As<Napi::Float32Array>();
  return std::vector<float>(array.Data(), array.Data() + array.ElementLength());
}

bool optional_bool(const Napi::Object& obj, const char* key, const std::string& prefix) {
  const Napi::Value v = obj.Get(key);
  if (v.IsUndefined()) return false;
  if (!v.IsBoolean()) type_error("a boolean", prefix + key, v);
  return v.As<Napi::Boolean>().Value();
}

bool present(const Napi::Value& v) { return !v.IsUndefined() && !v.IsNull(); }

void set_optional(Napi::Env env, Napi::Object& out, const char* key, const std::optional<at::Tensor>& t) {
  if (t) out.Set(key, tensor_to_js(env, *t));
}

}  // namespace

EditParams edit_params_from_js(const Napi::Value& value) {
  const Napi::Object obj = object_arg(value, "params");
  const std::string pre = "params.";
  EditParams p;
  p.query_embeds = tensor_from_js(obj.Get("queryEmbeds"), pre + "queryEmbeds");
  p.uncond_ids = ids_from_js(obj.Get("uncondIds"), pre + "uncondIds");
  p.src_ids = ids_from_js(obj.Get("srcIds"), pre + "srcIds");
  p.edit_ids = ids_from_js(obj.Get("editIds"), pre + "editIds");
  p.mapper = ids_from_js(obj.Get("mapper"), pre + "mapper");
  p.alphas = floats_from_js(obj.Get("alphas"), pre + "alphas");
  p.subject_alpha = floats_from_js(obj.Get("subjectAlpha"), pre + "subjectAlpha");
  p.width = integer(obj, "width", pre);
  p.height = integer(obj, "height", pre);
  p.steps = integer(obj, "steps", pre);
  p.guidance = number(obj, "guidance", pre);
  p.cross_replace = number(obj, "crossReplace", pre);
  p.self_replace = number(obj, "selfReplace", pre);
  p.blend_threshold = number(obj, "blendThreshold", pre);
  const int64_t seed = integer(obj, "seed", pre);
  if (seed < 0) range_error("a non-negative integer", pre + "seed", std::to_string(seed));
  p.seed = static_cast<uint64_t>(seed);
  if (present(obj.Get("latents"))) p.latents = tensor_from_js(obj.Get("latents"), pre + "latents");
  if (present(obj.Get("image"))) {
    p.image = tensor_from_js(obj.Get("image"), pre + "image");
    p.inversion_ids = ids_from_js(obj.Get("inversionIds"), pre + "inversionIds");
    if (present(obj.Get("inversionSteps"))) p.inversion_steps = integer(obj, "inversionSteps", pre);
  }
  p.no_control = optional_bool(obj, "noControl", pre);
  p.record = optional_bool(obj, "record", pre);
  if (present(obj.Get("unet"))) p.unet = unet_override_from_js(obj.Get("unet"), pre + "unet");
  return p;
}

Napi::Object edit_result_to_js(Napi::Env env, const EditResult& result) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Array images = Napi::Array::New(env, result.images.size());
  for (size_t i = 0; i < result.images.size(); ++i) images.Set(static_cast<uint32_t>(i), image_to_js(env, result.images[i]));
  out.Set("images", images);
  out.Set("seed", Napi::Number::New(env, double(result.seed)));
  Napi::Object timings = Napi::Object::New(env);
  timings.Set("textMs", result.timings.text_ms);
  timings.Set("inversionMs", result.timings.inversion_ms);
  timings.Set("editMs", result.timings.edit_ms);
  timings.Set("decodeMs", result.timings.decode_ms);
  timings.Set("totalMs", result.timings.total_ms);
  out.Set("timings", timings);
  if (result.record) {
    const EditRecord& r = *result.record;
    Napi::Object rec = Napi::Object::New(env);
    rec.Set("textStates", tensor_to_js(env, r.text_states));
    rec.Set("latentsInit", tensor_to_js(env, r.latents_init));
    set_optional(env, rec, "latentsX0", r.latents_x0);
    set_optional(env, rec, "invTextStates", r.inv_text_states);
    if (!r.inversion.empty()) {
      Napi::Array inv = Napi::Array::New(env, r.inversion.size());
      for (size_t i = 0; i < r.inversion.size(); ++i) {
        Napi::Object s = Napi::Object::New(env);
        s.Set("noisePred", tensor_to_js(env, r.inversion[i].first));
        s.Set("latents", tensor_to_js(env, r.inversion[i].second));
        inv.Set(static_cast<uint32_t>(i), s);
      }
      rec.Set("inversion", inv);
    }
    Napi::Array steps = Napi::Array::New(env, r.steps.size());
    for (size_t i = 0; i < r.steps.size(); ++i) {
      const EditStepRecord& sr = r.steps[i];
      Napi::Object s = Napi::Object::New(env);
      s.Set("unetOut", tensor_to_js(env, sr.unet_out));
      s.Set("noisePred", tensor_to_js(env, sr.noise_pred));
      s.Set("latentsPreBlend", tensor_to_js(env, sr.latents_pre_blend));
      set_optional(env, s, "lbMap", sr.lb_map);
      set_optional(env, s, "lbNorm", sr.lb_norm);
      set_optional(env, s, "lbMask", sr.lb_mask);
      s.Set("latents", tensor_to_js(env, sr.latents));
      steps.Set(static_cast<uint32_t>(i), s);
    }
    rec.Set("steps", steps);
    Napi::Object attn = Napi::Object::New(env);
    for (const auto& [name, t] : r.attn_step0) attn.Set(name, tensor_to_js(env, t));
    rec.Set("attnStep0", attn);
    rec.Set("latentsFinal", tensor_to_js(env, r.latents_final));
    out.Set("record", rec);
  }
  return out;
}

}  // namespace blipdiff::napi
