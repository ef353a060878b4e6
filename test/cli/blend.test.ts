// `blipdiff blend` end to end: the blend goldens through blend then generate --subject-embedding, the output
// document, the overwrite policy, and the bad-input list (one-line errors, nothing written).
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { finetunedSubject, saveFinetunedSubject } from "../../src/finetune/file.js";
import { loadSubjectEmbedding, saveSubjectEmbedding } from "../../src/pipeline/embedding.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { blendFixtureNames, blendInputs, loadBlendFixture, writeBlendInputs, type BlendFixture } from "../helpers/blend.js";
import { maxAbsDiff } from "../helpers/fixtures.js";
import { buildCli, expectCliFailure, expectImageClose, runCli } from "./cli.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-blend-cli-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** `generate` arguments of the blend case (its prompt, sizes, steps, guidance, seed) without the subject and -o. */
function generateArgs(fx: BlendFixture): string[] {
  const p = fx.params;
  return [
    "generate",
    "--model", fx.model,
    "--target-subject", p.tgt_subject,
    "--prompt", p.prompt,
    "--negative-prompt", p.neg_prompt,
    "--steps", String(p.num_inference_steps),
    "--guidance", String(p.guidance_scale),
    "--width", String(p.width),
    "--height", String(p.height),
    "--prompt-strength", String(p.prompt_strength),
    "--prompt-reps", String(p.prompt_reps),
    "--seed", String(p.latents_seed),
    "--device", "cpu",
  ];
}

for (const name of blendFixtureNames()) {
  describe(`blipdiff blend (${name})`, () => {
    const fx = loadBlendFixture(name);
    const p = fx.params;
    buildCli();
    const inputs = writeBlendInputs(fx, tmp);
    const specs = inputs.map((f, i) => `${f}:${p.ratio[i]}`);

    it("blend then generate --subject-embedding --seed reproduces blend.query_embeds and blend.image_u8", async () => {
      const out = path.join(tmp, `${name}-blend.safetensors`);
      const r = runCli(["blend", ...specs, "--quiet", "-o", out]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(r.stdout.toString()).toBe(`${out}\n`);
      const e = loadSubjectEmbedding(out);
      const golden = fx.f32("blend.query_embeds");
      expect(e.queryEmbeds.shape).toEqual(golden.shape);
      expect(Array.from(e.queryEmbeds.data)).toEqual(Array.from(golden.data));
      expect(e.subject).toBe(p.subjects[0][1]);
      expect(e.blend?.map((c) => [c.source, c.subject, c.ratio])).toEqual(inputs.map((f, i) => [path.basename(f), p.subjects[i][1], p.ratio[i]]));
      expect(e.model.qformerSha256).toBe(readManifest(fx.model).identity.qformer);

      const img = path.join(tmp, `${name}-blend.png`);
      const g = runCli([...generateArgs(fx), "--subject-embedding", out, "--quiet", "-o", img]);
      expect(g.stderr).toBe("");
      expect(g.code).toBe(0);
      const { data, info } = await sharp(img).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      const u8 = fx.tensor("blend.image_u8");
      expect([1, info.height, info.width, info.channels]).toEqual(u8.shape);
      expectImageClose(data, u8.data as Uint8Array);
    });

    it("--json prints the output, subject, shape and sources; --subject is recorded; --force replaces", () => {
      const out = path.join(tmp, `${name}-json.safetensors`);
      const r = runCli(["blend", ...specs, "--subject", "toy", "--json", "-o", out]);
      expect(r.code).toBe(0);
      const doc = JSON.parse(r.stdout.toString());
      expect(doc).toEqual({
        output: out,
        subject: "toy",
        shape: fx.f32("blend.query_embeds").shape,
        sources: inputs.map((f, i) => ({ file: f, subject: p.subjects[i][1], ratio: p.ratio[i] })),
      });
      expect(loadSubjectEmbedding(out).subject).toBe("toy");
      // Progress (one line) goes to stderr, never stdout.
      expect(r.stderr).toMatch(/^blend of \d+ subjects saved \(subject "toy"\)\n$/);
      const again = runCli(["blend", ...[...specs].reverse(), "--quiet", "--force", "-o", out]);
      expect(again.code, again.stderr).toBe(0);
      const back = loadSubjectEmbedding(out);
      expect(back.subject).toBe(p.subjects[p.subjects.length - 1][1]);
      expect(maxAbsDiff(back.queryEmbeds.data, fx.f32("blend.query_embeds").data)).toBeLessThan(1e-5);
    });

    describe("bad input: one line, the right exit code, nothing written", () => {
      const m = readManifest(fx.model);
      const base = blendInputs(fx)[0];
      const file = (n: string): string => path.join(tmp, `${name}-${n}`);
      const otherQformer = file("other-qformer.safetensors");
      saveSubjectEmbedding(otherQformer, { ...base, model: { qformerSha256: "f".repeat(64) } });
      const noQformer = file("no-qformer.safetensors");
      saveSubjectEmbedding(noQformer, { ...base, model: {} });
      const wide = file("wide.safetensors");
      const [, q, d] = base.queryEmbeds.shape;
      saveSubjectEmbedding(wide, { ...base, queryEmbeds: { data: new Float32Array(q * (d + 1)), shape: [1, q, d + 1] } });
      const junk = file("junk.safetensors");
      writeFileSync(junk, "not a tensor file");
      const ft = file("finetuned.safetensors");
      const sha = m.identity;
      saveFinetunedSubject(
        ft,
        finetunedSubject(base.queryEmbeds, {}, {
          mode: "lora",
          loraRank: 1,
          subject: "dog",
          sourceImages: [],
          baseModel: { sha256: { unet: sha.unet, text_encoder: sha.text_encoder, qformer: sha.qformer, vae_encoder: sha.vae_encoder } },
          hyperparameters: {},
          losses: [],
          saveDtype: "float32",
        }),
      );
      const existing = file("existing.safetensors");
      writeFileSync(existing, "keep me");
      const [a, b] = inputs;
      const ok = ["blend", `${a}:0.5`, `${b}:0.5`];
      const cases: [string, string[], number, RegExp, string?][] = [
        ["one file", ["blend", `${a}:1`], 2, /^error: blend needs at least 2 subject files \(FILE:WEIGHT each\); to use one subject as it is, give its file to generate --subject-embedding$/],
        ["a missing :weight", ["blend", a, `${b}:1`], 2, /^error: Expected FILE:WEIGHT with a number as WEIGHT \(e\.g\. dog\.safetensors:0\.3\) for each subject but received ".*input-0\.safetensors"$/],
        ["an empty weight", ["blend", `${a}:`, `${b}:1`], 2, /Expected FILE:WEIGHT/],
        ["a weight that is not a number", ["blend", `${a}:half`, `${b}:0.5`], 2, /Expected FILE:WEIGHT .* but received ".*:half"$/],
        ["a NaN weight", ["blend", `${a}:nan`, `${b}:1`], 2, /^error: Expected a finite number for the weight of .*input-0\.safetensors but received "nan"$/],
        ["an infinite weight", ["blend", `${a}:1e999`, `${b}:0`], 2, /^error: Expected a finite number for the weight of .*input-0\.safetensors but received Infinity$/],
        ["a negative weight", ["blend", `${a}:1.25`, `${b}:-0.25`], 2, /^error: Expected a number >= 0 for the weight of .*input-1\.safetensors but received -0\.25$/],
        ["weights that do not sum to 1", ["blend", `${a}:0.3`, `${b}:0.6`], 2, /^error: Expected weights that sum to 1 \(within 1e-6\) but received 0\.3 \+ 0\.6 = 0\.9$/],
        ["an empty --subject", [...ok, "--subject", " "], 2, /^error: --subject must not be empty/],
        ["--output not .safetensors", ok, 2, /^error: Expected a \.safetensors file for --output but received ".*out\.png"$/, "out.png"],
        ["--output in a missing folder", ok, 1, /^error: cannot write .*: the folder .*missing does not exist$/, path.join("missing", "out.safetensors")],
        ["an existing output without --force", ok, 1, /^error: .*existing\.safetensors already exists; use --force to overwrite it, or choose another --output$/, existing],
        ["a missing file", ["blend", `${a}:0.5`, `${file("none.safetensors")}:0.5`], 1, /^error: subject embedding not found: .*none\.safetensors$/],
        ["a folder", ["blend", `${a}:0.5`, `${tmp}:0.5`], 1, /^error: cannot read /],
        ["a file that is not safetensors", ["blend", `${a}:0.5`, `${junk}:0.5`], 1, /^error: .*junk\.safetensors is not a blipdiff subject embedding: .*; make it again with `blipdiff encode`$/],
        ["a fine-tuned file", ["blend", `${a}:0.5`, `${ft}:0.5`], 1, /^error: .*finetuned\.safetensors is a fine-tuned subject \(blipdiff finetune\): its UNet weights belong to its own embedding and blending fine-tuned UNets is not defined by the method; blend subjects made with `blipdiff encode`$/],
        ["another Q-Former", ["blend", `${a}:0.5`, `${otherQformer}:0.5`], 1, /^error: .*other-qformer\.safetensors was made with Q-Former sha256 ffffffffffff but .*input-0\.safetensors with [0-9a-f]{12}; blend subjects encoded with the same model$/],
        ["a file without its Q-Former", ["blend", `${noQformer}:0.5`, `${a}:0.5`], 1, /^error: .*no-qformer\.safetensors does not record the Q-Former that made it \(model\.qformerSha256\)/],
        ["another shape", ["blend", `${a}:0.5`, `${wide}:0.5`], 1, new RegExp(`^error: .*wide\\.safetensors has shape \\[1, ${q}, ${d + 1}\\] but .*input-0\\.safetensors has \\[1, ${q}, ${d}\\]; blend subjects encoded with the same model$`)],
      ];
      for (const [what, args, code, message, out] of cases)
        it(what, () => {
          expectCliFailure(tmp, args, code, message, out ?? "out.safetensors");
        });

      it("leaves an existing output unchanged when refusing", () => {
        expect(runCli(["blend", `${a}:0.5`, `${b}:0.5`, "-o", existing]).code).toBe(1);
        expect(readFileSync(existing, "utf8")).toBe("keep me");
        expect(readdirSync(tmp).filter((f) => f.endsWith(".tmp"))).toEqual([]);
      });

      it("--output - (blend writes a file, never stdout)", () => {
        const r = runCli(["blend", `${a}:0.5`, `${b}:0.5`, "-o", "-"]);
        expect(r.code).toBe(2);
        expect(r.stdout.length).toBe(0);
        expect(r.stderr).toBe("error: blend writes a file: give --output a path ending in .safetensors\n");
      });
    });
  });
}
