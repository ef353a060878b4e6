// Editing options (src/edit/options.ts): the documented defaults, every refusal, the prompts, and the CLIP ids, token
// alignment and subject positions against each fixture's editing goldens (gen.src_ids, gen.edit_ids, gen.uncond_ids,
// real.inv_ids, ...), through the exported model's own tokenizer.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { InputError } from "../../src/errors.js";
import {
  EDIT_CLI_NAMES,
  EDIT_DEFAULTS,
  editPrompts,
  resolveEditPrompt,
  resolveEditSettings,
  tokenizeEdit,
  type EditSettings,
} from "../../src/edit/options.js";
import { readManifest } from "../../src/pipeline/manifest.js";
import { maxLatentTokens } from "../../src/pipeline/preflight.js";
import { exportRoot, fixtureNames, fixturesRoot, readSafetensors } from "../helpers/fixtures.js";

const editFixtures = fixtureNames().filter((n) => existsSync(path.join(fixturesRoot, n, "edit.json")));

it("at least one fixture has editing goldens", () => {
  expect(editFixtures.length).toBeGreaterThan(0);
});

for (const name of editFixtures) {
  const m = readManifest(path.join(exportRoot, name, "ckpt"));
  const dir = path.join(fixturesRoot, name);
  const json = JSON.parse(readFileSync(path.join(dir, "edit.json"), "utf8"));
  const golden = readSafetensors(path.join(dir, "edit.safetensors"));
  const ints = (key: string): number[] => Array.from(golden.get(key)!.data as BigInt64Array, (v) => Number(v));
  const floats = (key: string): number[] => Array.from(golden.get(key)!.data as Float32Array);
  const f = m.spec.latentScale;
  const P = m.spec.textMaxLength;
  const nq = m.spec.numQueryTokens;
  const maxTokens = maxLatentTokens(m)!;
  const gen = json.cases.p2p_generated.params;
  /** A size the model accepts (the 512 default is past a tiny model's bound). */
  const size = { width: gen.width as number, height: gen.height as number };

  describe(`edit settings (${name})`, () => {
    it("has LAVIS's defaults", () => {
      expect(EDIT_DEFAULTS).toMatchObject({ steps: 50, guidance: 7.5, crossReplace: 0.8, selfReplace: 0.4, blendThreshold: 0.3, negativePrompt: "", width: 512, height: 512 });
      const r = resolveEditSettings(m, { ...size, seed: 3 }, undefined);
      expect(r).toEqual({ source: "generated", steps: 50, guidance: 7.5, crossReplace: 0.8, selfReplace: 0.4, blendThreshold: 0.3, seed: 3, ...size });
      const s = resolveEditSettings(m, size, undefined).seed!;
      expect(Number.isSafeInteger(s) && s >= 0).toBe(true);
    });

    it("a photo: inversion steps default to the steps, the size to the photo's own rounded down, no seed", () => {
      const photo = { width: 3 * f + 1, height: 2 * f + f - 1, name: "p.png" };
      const r = resolveEditSettings(m, { steps: 7 }, photo);
      expect(r).toEqual({ source: "photo", steps: 7, inversionSteps: 7, guidance: 7.5, crossReplace: 0.8, selfReplace: 0.4, blendThreshold: 0.3, width: 3 * f, height: 2 * f });
      expect(resolveEditSettings(m, { steps: 7, inversionSteps: 3, width: 4 * f, height: 4 * f }, photo)).toMatchObject({ inversionSteps: 3, width: 4 * f, height: 4 * f });
    });

    it("refuses bad numbers, naming the option and the bound", () => {
      const bad: [EditSettings, RegExp][] = [
        [{ steps: 0 }, /^Expected an integer between 1 and \d+ for steps but received 0$/],
        [{ steps: 2.5 }, /for steps but received 2.5/],
        [{ steps: 100000 }, /for steps but received 100000/],
        [{ guidance: 1 }, /^Expected a number > 1 and <= 1000 \(editing needs classifier-free guidance\) for guidance but received 1$/],
        [{ guidance: 0.5 }, /for guidance but received 0.5/],
        [{ guidance: 1e6 }, /for guidance but received 1000000/],
        [{ guidance: Number.POSITIVE_INFINITY }, /for guidance but received Infinity/],
        [{ crossReplace: 1.5 }, /^Expected a number in \[0, 1\] for crossReplace but received 1.5$/],
        [{ crossReplace: -0.1 }, /for crossReplace but received -0.1/],
        [{ selfReplace: 2 }, /for selfReplace but received 2/],
        [{ blendThreshold: -1 }, /for blendThreshold but received -1/],
        [{ blendThreshold: Number.NaN }, /^Expected a number for blendThreshold but received NaN$/],
        [{ seed: -1 }, /for seed but received -1/],
        [{ width: f + 1 }, new RegExp(`^Expected a multiple of ${f} \\(the model's latent scale\\) for width but received ${f + 1}$`)],
        [{ height: 0 }, /for height but received 0/],
        [{ inversionSteps: 5 }, /^inversionSteps applies to editing a photo \(image\) only; a generated source is not inverted$/],
      ];
      for (const [o, message] of bad) expect(() => resolveEditSettings(m, { ...size, ...o }, undefined), JSON.stringify(o)).toThrow(message);
      expect(() => resolveEditSettings(m, { ...size, guidance: "7" as never }, undefined)).toThrow(TypeError);
      expect(() => resolveEditSettings(m, { ...size, crossReplace: 2 }, undefined)).toThrow(RangeError);
      const side = Math.floor(Math.sqrt(maxTokens)) * f;
      expect(() => resolveEditSettings(m, { width: side + f, height: side }, undefined)).toThrow(new RegExp(`at most ${maxTokens} latent tokens .*: use a smaller width/height for size`));
    });

    it("refuses a seed with a photo, a photo smaller than the latent scale, and a photo past the size bound", () => {
      const photo = { width: 4 * f, height: 4 * f, name: "p.png" };
      expect(() => resolveEditSettings(m, { seed: 1 }, photo)).toThrow(/^seed applies to a generated source only \(without image\); editing a photo draws nothing at random$/);
      const tiny = { width: f - 1, height: 4 * f, name: "tiny.png" };
      expect(() => resolveEditSettings(m, {}, tiny)).toThrow(InputError);
      expect(() => resolveEditSettings(m, {}, tiny, EDIT_CLI_NAMES)).toThrow(
        new RegExp(`^--image: tiny.png is ${f - 1}x${4 * f} pixels, smaller than the model's latent scale ${f}; give --width and --height to enlarge it$`),
      );
      expect(resolveEditSettings(m, { width: 2 * f, height: 2 * f }, tiny)).toMatchObject({ width: 2 * f, height: 2 * f });
      const huge = { width: 10_000, height: 10_000, name: "huge.png" };
      expect(() => resolveEditSettings(m, {}, huge, EDIT_CLI_NAMES)).toThrow(/the photo's own size, rounded down to the latent scale\): give --width and --height; the photo is resized/);
    });

    it("uses the CLI's flag names in the CLI", () => {
      expect(() => resolveEditSettings(m, { ...size, guidance: 1 }, undefined, EDIT_CLI_NAMES)).toThrow(/for --guidance but received 1$/);
      expect(() => resolveEditSettings(m, { ...size, selfReplace: 3 }, undefined, EDIT_CLI_NAMES)).toThrow(/for --self-replace but received 3$/);
      expect(() => resolveEditSettings(m, { ...size, inversionSteps: 3 }, undefined, EDIT_CLI_NAMES)).toThrow(/^--inversion-steps applies to editing a photo \(--image\) only/);
    });
  });

  describe(`edit prompts and ids (${name})`, () => {
    for (const [caseName, prefix] of [["p2p_generated", "gen"], ["p2p_real", "real"]] as const) {
      const c = json.cases[caseName];
      const p = c.params;
      const prompt = resolveEditPrompt({ prompt: p.prompt, sourceSubject: p.src_subject, targetSubject: p.tgt_subject, negativePrompt: p.neg_prompt }, p.cond_subject);

      it(`${caseName}: the prompts`, () => {
        expect(prompt.sourcePrompt).toBe(c.src_prompt);
        expect(prompt.editPrompt).toBe(c.edit_prompt);
        if (c.inversion_prompt) expect(prompt.inversionPrompt).toBe(c.inversion_prompt);
      });

      it(`${caseName}: ids, mapper, alphas and subject_alpha equal the goldens`, () => {
        const t = tokenizeEdit(m, prompt);
        expect(Array.from(t.srcIds)).toEqual(ints(`${prefix}.src_ids`).slice(0, P));
        expect(t.srcIds.length).toBe(P);
        expect(Array.from(t.editIds)).toEqual(ints(`${prefix}.edit_ids`));
        expect(t.editIds.length).toBe(P - nq);
        expect(Array.from(t.uncondIds)).toEqual(ints(`${prefix}.uncond_ids`));
        expect(Array.from(t.mapper)).toEqual(ints(`${prefix}.mapper`));
        expect(Array.from(t.alphas)).toEqual(floats(`${prefix}.alphas`));
        expect(Array.from(t.subjectAlpha)).toEqual(floats(`${prefix}.subject_alpha`));
        expect(t.subjectPositions).toEqual(c.subject_token_positions);
        if (prefix === "real") expect(Array.from(t.inversionIds)).toEqual(ints("real.inv_ids"));
      });
    }

    it("the target subject defaults to the subject's word; the inversion prompt trims the prompt", () => {
      const r = resolveEditPrompt({ prompt: "  on a sofa ", sourceSubject: "cat" }, "dog");
      expect(r.targetSubject).toBe("dog");
      expect(editPrompts("  on a sofa ", "cat", "dog")).toEqual({ sourcePrompt: "a cat   on a sofa ", editPrompt: "a dog   on a sofa ", inversionPrompt: "a cat on a sofa" });
      expect(r.negativePrompt).toBe("");
      expect(() => resolveEditPrompt({ prompt: "x", sourceSubject: " " }, "dog")).toThrow(/^Expected a non-empty string for sourceSubject but received " "$/);
      expect(() => resolveEditPrompt({ prompt: "x", sourceSubject: "cat" }, undefined)).toThrow(/for targetSubject but received undefined/);
      expect(() => resolveEditPrompt({ prompt: 3 as never, sourceSubject: "cat" }, "dog")).toThrow(TypeError);
      expect(() => resolveEditPrompt({ prompt: "x", sourceSubject: "cat", negativePrompt: 1 as never }, "dog")).toThrow(/for negativePrompt/);
    });

    it("a multi-token source subject marks each of its tokens", () => {
      const t = tokenizeEdit(m, resolveEditPrompt({ prompt: "sit", sourceSubject: "teddy bear", targetSubject: "dog" }, undefined));
      expect(t.subjectPositions).toEqual([2, 3]);
      expect(Array.from(t.subjectAlpha).flatMap((v, i) => (v ? [i] : []))).toEqual([2, 3]);
      // [BOS, a, ctx x nq, dog, sit, EOS]: "sit" aligns to the source's position 4, EOS to 5.
      expect(Array.from(t.mapper).slice(0, nq + 5)).toEqual([0, 1, ...new Array(nq + 1).fill(-1), 4, 5]);
    });

    it("refuses prompts that do not fit the text window, naming the limit", () => {
      // "dog" is one CLIP token: "a {subject} " + k x "dog" has 2 + k content tokens for a one-token subject.
      const words = (k: number): string => new Array(k).fill("dog").join(" ");
      const editRoom = P - nq - 2;
      const tooLongForEdit = words(editRoom - 2 + 1);
      const r = (o: { prompt: string; sourceSubject?: string; targetSubject?: string; negativePrompt?: string }) =>
        tokenizeEdit(m, resolveEditPrompt({ sourceSubject: "cat", targetSubject: "dog", ...o }, undefined), EDIT_CLI_NAMES);
      expect(() => r({ prompt: words(editRoom - 2) })).not.toThrow();
      expect(() => r({ prompt: tooLongForEdit })).toThrow(
        new RegExp(`^Expected a prompt whose edited prompt "a \\{target subject\\} \\{prompt\\}" is at most ${editRoom} CLIP tokens \\(${P} text positions less ${nq} subject tokens and 2 markers\\) for --prompt but received text of ${editRoom + 1} tokens$`),
      );
      // A long source subject: the source prompt is refused where the edited one fits.
      const longSubject = words(nq + 5);
      const k = P - 2 - nq - 5;
      expect(() => r({ prompt: words(k), sourceSubject: longSubject })).toThrow(
        new RegExp(`^Expected a prompt whose source prompt "a \\{source subject\\} \\{prompt\\}" is at most ${P - 2} CLIP tokens \\(${P} text positions less 2 markers\\) for --prompt but received text of ${P - 1} tokens$`),
      );
      expect(() => r({ prompt: words(k - 1), sourceSubject: longSubject })).not.toThrow();
      expect(() => r({ prompt: "sit", negativePrompt: words(P - 2 + 1) })).toThrow(
        new RegExp(`^Expected a negative prompt of at most ${P - 2} CLIP tokens \\(${P} text positions less 2 markers\\) for --negative-prompt but received text of ${P - 1} tokens$`),
      );
      expect(() => r({ prompt: "sit", negativePrompt: words(P - 2) })).not.toThrow();
      expect(() => r({ prompt: "sit", sourceSubject: "!!!" })).not.toThrow();
    });
  });
}
