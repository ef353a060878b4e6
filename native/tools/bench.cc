// blipdiff_bench: times load, subject encoding and generation of an exported model folder without Node
// (for GPU machines). Sizes come from the command line (this harness has no JSON parser):
//   blipdiff_bench --model DIR [--device cuda] [--dtype float16] [--width 512] [--height 512] [--steps 25]
//                  [--guidance 7.5] [--scheduler pndm] [--runs 2] [--num-query-tokens 16] [--ctx-begin-pos 2]
//                  [--text-max-length 77] [--latent-channels 4] [--latent-scale 8] [--scaling-factor 0.18215]
//                  [--image-size 224] [--steps-offset 1] [--optimize 0|1] [--per-module-load 0|1]
// --encode-runs N times N subject encodings (cold, then warm) and lists them on stderr.
// --dump-image FILE writes image 0 of the last run as raw HWC uint8 (to compare devices and dtypes).
// --per-module-load 1 first times, for each module on its own, the sha256 check (archive and weights file) and load_module.
// --finetune full|lora times a fine-tune instead of generation: [--finetune-steps 80] [--finetune-batch 3]
//   [--finetune-resolution 512] [--lora-rank 4] (random target pictures, seeded draws).
// --edit 1 times, in one process and interleaved, a CFG generation, an edit of a generated source and an edit of a
//   (random) real picture with the same size and steps (edit: PNDM; real: DDIM inversion with --steps, then DDIM),
//   `--runs` times each: prompt-to-prompt costs a 4-way UNet batch, inversion one batch-1 call per step.
// Prints one JSON line per measurement on stderr and a summary JSON document on stdout.
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "core/diagnostics.h"
#include "core/errors.h"
#include "core/model.h"
#include "core/pipeline.h"
#include "core/sha256.h"

using blipdiff::DType;

namespace {

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main(int argc, char** argv) {
  blipdiff::init_runtime_diagnostics();  // stderr carries only the harness's lines (core/diagnostics.h)
  std::map<std::string, std::string> args = {
      {"device", "cpu"}, {"dtype", "float32"}, {"width", "512"}, {"height", "512"}, {"steps", "25"},
      {"guidance", "7.5"}, {"scheduler", "pndm"}, {"runs", "2"}, {"num-query-tokens", "16"},
      {"ctx-begin-pos", "2"}, {"text-max-length", "77"}, {"latent-channels", "4"}, {"latent-scale", "8"},
      {"scaling-factor", "0.18215"}, {"image-size", "224"}, {"steps-offset", "1"}, {"seed", "42"}, {"optimize", "0"}, {"per-module-load", "0"}, {"dump-image", ""},
      {"finetune", ""}, {"edit", ""}, {"encode-runs", "1"}, {"finetune-steps", "80"}, {"finetune-batch", "3"}, {"finetune-resolution", "512"},
      {"lora-rank", "4"}};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) {
      std::fprintf(stderr, "blipdiff_bench: unexpected argument %s\n", argv[i]);
      return 2;
    }
    args[key.substr(2)] = argv[i + 1];
  }
  if (!args.count("model")) {
    std::fprintf(stderr, "usage: blipdiff_bench --model DIR [--device cuda] [--dtype float16] ...\n");
    return 2;
  }
  auto num = [&](const char* k) { return std::stod(args.at(k)); };
  auto integer = [&](const char* k) { return static_cast<int64_t>(std::stoll(args.at(k))); };
  try {
    const std::string dir = args["model"];
    blipdiff::ModelSpec spec;
    // Exports of format 2 keep each module's tensors in <name>.safetensors beside it.
    auto module_file = [&](const std::string& name) {
      const std::string weights = dir + "/" + name + ".safetensors";
      return blipdiff::ModuleFile{dir + "/" + name + ".pt", "", std::filesystem::exists(weights) ? weights : "", ""};
    };
    spec.qformer = module_file("qformer");
    spec.text_encoder = module_file("text_encoder");
    spec.unet = module_file("unet");
    spec.vae_decoder = module_file("vae_decoder");
    spec.vae_encoder = module_file("vae_encoder");
    spec.num_query_tokens = integer("num-query-tokens");
    spec.ctx_begin_pos = integer("ctx-begin-pos");
    spec.text_max_length = integer("text-max-length");
    spec.latent_channels = integer("latent-channels");
    spec.latent_scale = integer("latent-scale");
    spec.vae_scaling_factor = num("scaling-factor");
    spec.scheduler.set("beta_schedule", std::string("scaled_linear"));
    spec.scheduler.set("beta_start", 0.00085);
    spec.scheduler.set("beta_end", 0.012);
    spec.scheduler.set("skip_prk_steps", true);
    spec.scheduler.set("steps_offset", num("steps-offset"));

    blipdiff::LoadOptions options;
    options.device = args["device"];
    options.dtype = blipdiff::dtype_from_string(args["dtype"]);
    options.verify_checksums = false;
    options.optimize = args["optimize"] == "1";

    std::string per_module = "{}";
    if (args["per-module-load"] == "1") {
      const c10::Device device = blipdiff::resolve_device(options.device);
      per_module = "{";
      for (const char* name : {"qformer", "text_encoder", "unet", "vae_decoder", "vae_encoder", "controlnet"}) {
        const blipdiff::ModuleFile file = module_file(name);
        const std::string& path = file.path;
        if (!std::filesystem::exists(path)) continue;
        auto start = std::chrono::steady_clock::now();
        (void)blipdiff::sha256_file(path);
        if (!file.weights.empty()) (void)blipdiff::sha256_file(file.weights);
        const double sha_ms = ms_since(start);
        start = std::chrono::steady_clock::now();
        { torch::jit::Module m = blipdiff::load_module(file, name, options, device); }
        const double load_ms = ms_since(start);
        if (per_module.size() > 1) per_module += ", ";
        char buf[256];
        std::snprintf(buf, sizeof buf, "\"%s\": {\"sha256Ms\": %.1f, \"loadMs\": %.1f, \"bytes\": %llu}", name, sha_ms,
                      load_ms,
                      static_cast<unsigned long long>(std::filesystem::file_size(path) +
                                                      (file.weights.empty() ? 0 : std::filesystem::file_size(file.weights))));
        per_module += buf;
        std::fprintf(stderr, "{%s}\n", buf);
      }
      per_module += "}";
    }

    blipdiff::Pipeline pipeline;
    auto t0 = std::chrono::steady_clock::now();
    pipeline.load(spec, options);
    const double load_ms = ms_since(t0);

    const int64_t s = integer("image-size");
    const at::Tensor pixels = at::randn({1, 3, s, s});
    const at::Tensor ids = at::tensor(std::vector<int64_t>{101, 3899, 102}, at::kLong).reshape({1, 3});
    const at::Tensor mask = at::ones({1, 3}, at::kLong);
    t0 = std::chrono::steady_clock::now();
    const at::Tensor query = pipeline.encode_subject(pixels, ids, mask);
    const double encode_ms = ms_since(t0);
    // --encode-runs N: N - 1 more subject encodings, each timed (the first call's extra cost, issue #9).
    std::string encode_runs = std::to_string(encode_ms);
    for (int64_t r = 1; r < integer("encode-runs"); ++r) {
      t0 = std::chrono::steady_clock::now();
      (void)pipeline.encode_subject(pixels, ids, mask);
      encode_runs += ", " + std::to_string(ms_since(t0));
    }
    if (integer("encode-runs") > 1) std::fprintf(stderr, "{\"encodeMs\": [%s]}\n", encode_runs.c_str());

    if (!args["finetune"].empty()) {
      blipdiff::FinetuneParams ft;
      ft.mode = blipdiff::finetune_mode_from_string(args["finetune"]);
      const int64_t res = integer("finetune-resolution");
      ft.targets = at::rand({2, 3, res, res}) * 2 - 1;
      ft.caption_ids = {49406, 320, 1929, 49407};
      ft.ctx_init = query;
      ft.steps = integer("finetune-steps");
      ft.batch_size = integer("finetune-batch");
      ft.lr = ft.mode == blipdiff::FinetuneMode::kFull ? 5e-6 : 1e-4;
      ft.lora_rank = integer("lora-rank");
      ft.lora_alpha = static_cast<double>(ft.lora_rank);
      ft.seed = static_cast<uint64_t>(integer("seed"));
      ft.save_dtype = ft.mode == blipdiff::FinetuneMode::kFull ? at::kHalf : at::kFloat;
      std::atomic<bool> cancel{false};
      t0 = std::chrono::steady_clock::now();
      const blipdiff::FinetuneResult r = pipeline.finetune(
          ft,
          [](const blipdiff::FinetuneProgress& p) {
            std::fprintf(stderr, "{\"step\": %lld, \"loss\": %.5f}\n", static_cast<long long>(p.step), p.loss);
          },
          cancel);
      const double total_ms = ms_since(t0);
      std::vector<double> steps = r.timings.step_ms;
      std::sort(steps.begin(), steps.end());
      size_t bytes = 0;
      for (const auto& [name, t] : r.tensors) bytes += static_cast<size_t>(t.numel()) * t.element_size();
      for (const std::string& w : pipeline.take_warnings()) std::fprintf(stderr, "libtorch warning: %s\n", w.c_str());
      std::printf(
          "{\"device\": \"%s\", \"dtype\": \"%s\", \"finetune\": \"%s\", \"resolution\": %lld, \"batch\": %lld, "
          "\"steps\": %lld, \"loadMs\": %.1f, \"prepareMs\": %.1f, \"trainMs\": %.1f, \"totalMs\": %.1f, "
          "\"firstStepMs\": %.1f, \"medianStepMs\": %.1f, \"outputBytes\": %zu, \"lastLoss\": %.5f}\n",
          pipeline.device().c_str(), std::string(blipdiff::to_string(pipeline.dtype())).c_str(), args["finetune"].c_str(),
          static_cast<long long>(res), static_cast<long long>(ft.batch_size), static_cast<long long>(ft.steps), load_ms,
          r.timings.prepare_ms, r.timings.train_ms, total_ms, r.timings.step_ms.empty() ? 0.0 : r.timings.step_ms[0],
          steps.empty() ? 0.0 : steps[steps.size() / 2], bytes, r.losses.empty() ? 0.0 : r.losses.back());
      return 0;
    }

    if (args["edit"] == "1") {
      const int64_t p = spec.text_max_length, nq = spec.num_query_tokens, cbp = spec.ctx_begin_pos;
      // "a dog" in both prompts: BOS, a, dog, EOS, padding.
      auto prompt = [](int64_t n) {
        std::vector<int64_t> v(size_t(n), 49407);
        v[0] = 49406, v[1] = 320, v[2] = 1929;
        return v;
      };
      blipdiff::GenerateParams gen;
      gen.cond_ids = prompt(p - nq);
      gen.uncond_ids = prompt(p);
      gen.query_embeds = query;
      gen.width = integer("width"), gen.height = integer("height"), gen.steps = integer("steps");
      gen.guidance = num("guidance");
      gen.seed = static_cast<uint64_t>(integer("seed"));
      blipdiff::EditParams ed;
      ed.query_embeds = query;
      ed.uncond_ids = prompt(p);
      ed.src_ids = prompt(p);
      ed.edit_ids = prompt(p - nq);
      // The alignment of "a dog" with "a [ctx] dog": ctx positions unaligned, the rest shifted by nq.
      for (int64_t j = 0; j < p; ++j) {
        const bool ctx = j >= cbp && j < cbp + nq;
        const int64_t m = j < cbp ? j : (ctx ? -1 : std::min(j - nq, p - 1));
        ed.mapper.push_back(m);
        ed.alphas.push_back(ctx ? 0.0f : 1.0f);
        ed.subject_alpha.push_back(j == 2 ? 1.0f : 0.0f);
      }
      ed.width = gen.width, ed.height = gen.height, ed.steps = gen.steps, ed.guidance = gen.guidance;
      ed.seed = gen.seed;
      blipdiff::EditParams real = ed;
      real.image = at::rand({1, 3, ed.height, ed.width}) * 2 - 1;
      real.inversion_ids = prompt(p);
      std::atomic<bool> cancel{false};
      // One JSON line per run on stderr, then arrays of every figure on stdout.
      std::map<std::string, std::vector<double>> figures;
      for (int64_t r = 0; r < integer("runs"); ++r) {
        t0 = std::chrono::steady_clock::now();
        const blipdiff::GenerateResult g = pipeline.generate(gen, nullptr, cancel);
        figures["generateMs"].push_back(ms_since(t0));
        figures["generateDenoiseMs"].push_back(g.timings.denoise_ms);
        t0 = std::chrono::steady_clock::now();
        const blipdiff::EditResult e = pipeline.edit(ed, nullptr, cancel);
        figures["editMs"].push_back(ms_since(t0));
        figures["editLoopMs"].push_back(e.timings.edit_ms);
        t0 = std::chrono::steady_clock::now();
        const blipdiff::EditResult e2 = pipeline.edit(real, nullptr, cancel);
        figures["realMs"].push_back(ms_since(t0));
        figures["realInversionMs"].push_back(e2.timings.inversion_ms);
        figures["realLoopMs"].push_back(e2.timings.edit_ms);
        std::string line = "{\"run\": " + std::to_string(r);
        for (const auto& [k, v] : figures) line += ", \"" + k + "\": " + std::to_string(v.back());
        std::fprintf(stderr, "%s}\n", line.c_str());
      }
      for (const std::string& w : pipeline.take_warnings()) std::fprintf(stderr, "libtorch warning: %s\n", w.c_str());
      std::string out = "{\"device\": \"" + pipeline.device() + "\", \"dtype\": \"" +
                        std::string(blipdiff::to_string(pipeline.dtype())) + "\", \"width\": " +
                        std::to_string(gen.width) + ", \"height\": " + std::to_string(gen.height) +
                        ", \"steps\": " + std::to_string(gen.steps) + ", \"loadMs\": " + std::to_string(load_ms);
      for (const auto& [k, v] : figures) {
        out += ", \"" + k + "\": [";
        for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
        out += "]";
      }
      std::printf("%s}\n", out.c_str());
      return 0;
    }

    blipdiff::GenerateParams params;
    const int64_t cond_len = spec.text_max_length - spec.num_query_tokens;
    params.cond_ids.assign(size_t(cond_len), 49407);
    params.cond_ids[0] = 49406;
    params.cond_ids[1] = 320;
    params.uncond_ids.assign(size_t(spec.text_max_length), 49407);
    params.uncond_ids[0] = 49406;
    params.query_embeds = query;
    params.width = integer("width");
    params.height = integer("height");
    params.steps = integer("steps");
    params.guidance = num("guidance");
    params.seed = static_cast<uint64_t>(integer("seed"));
    params.scheduler = blipdiff::scheduler_kind_from_string(args["scheduler"]);
    std::atomic<bool> cancel{false};
    const int64_t runs = integer("runs");
    double best_ms = 1e300;
    std::string run_ms;  // every run's time, cold first
    blipdiff::GenerateResult last;
    for (int64_t r = 0; r < runs; ++r) {
      t0 = std::chrono::steady_clock::now();
      last = pipeline.generate(params, nullptr, cancel);
      const double ms = ms_since(t0);
      best_ms = std::min(best_ms, ms);
      run_ms += (r ? ", " : "") + std::to_string(ms);
      std::fprintf(stderr, "{\"run\": %lld, \"ms\": %.1f, \"textMs\": %.1f, \"denoiseMs\": %.1f, \"decodeMs\": %.1f}\n",
                   static_cast<long long>(r), ms, last.timings.text_ms, last.timings.denoise_ms,
                   last.timings.decode_ms);
    }
    // libtorch's warnings, collected by the pipeline instead of printed (gpu-check.sh shows them).
    for (const std::string& w : pipeline.take_warnings())
      std::fprintf(stderr, "libtorch warning: %s\n", w.c_str());
    if (!args["dump-image"].empty() && !last.images.empty()) {
      std::FILE* f = std::fopen(args["dump-image"].c_str(), "wb");
      if (!f || std::fwrite(last.images[0].data.data(), 1, last.images[0].data.size(), f) != last.images[0].data.size()) {
        std::fprintf(stderr, "blipdiff_bench: cannot write %s\n", args["dump-image"].c_str());
        if (f) std::fclose(f);
        return 1;
      }
      std::fclose(f);
    }
    const double unet_calls = static_cast<double>(params.scheduler == blipdiff::SchedulerKind::kPndm ? params.steps + 1
                                                                                                   : params.steps);
    std::printf(
        "{\"device\": \"%s\", \"dtype\": \"%s\", \"width\": %lld, \"height\": %lld, \"steps\": %lld, \"loadMs\": %.1f, "
        "\"encodeMs\": %.1f, \"bestImageMs\": %.1f, \"imageMs\": [%s], \"stepsPerSecond\": %.3f, \"modules\": %s}\n",
        pipeline.device().c_str(), std::string(blipdiff::to_string(pipeline.dtype())).c_str(),
        static_cast<long long>(params.width), static_cast<long long>(params.height),
        static_cast<long long>(params.steps), load_ms, encode_ms, best_ms, run_ms.c_str(),
        unet_calls / (last.timings.denoise_ms / 1000.0), per_module.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "blipdiff_bench: %s\n", blipdiff::describe(e).c_str());
    return 1;
  }
  return 0;
}
