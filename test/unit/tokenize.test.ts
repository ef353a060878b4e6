import { describe, expect, it } from "vitest";
import { buildPrompt } from "../../src/pipeline/prompt.js";
import { ClipTokenizer, WordPieceTokenizer, tokenizePrompts } from "../../src/pipeline/tokenize.js";
import { fixtureNames, loadFixture, toNumbers } from "./golden.js";

for (const name of fixtureNames()) {
  describe(`tokenization (${name})`, () => {
    const fx = loadFixture(name);
    const q = fx.json.cases.qformer;
    const clip = new ClipTokenizer(fx.ckpt("tokenizer", "tokenizer.json"), { bos: 49406, eos: 49407, pad: 49407 });
    const wp = new WordPieceTokenizer(fx.ckpt("qformer_tokenizer", "tokenizer.json"), {
      cls: q.cls_token_id,
      sep: q.sep_token_id,
      pad: q.pad_token_id,
    });
    const nq: number = q.num_query_tokens;

    it("reproduces every CLIP id of tokenizer_checks", () => {
      for (const c of fx.json.tokenizer_checks.clip) {
        const { ids } = clip.encodeFixed(c.text, c.ids.length);
        expect(Array.from(ids), c.text).toEqual(c.ids);
      }
    });

    it("reproduces every WordPiece id of tokenizer_checks", () => {
      for (const c of fx.json.tokenizer_checks.qformer) expect(wp.encode(c.text), c.text).toEqual(c.ids);
    });

    it("pads a WordPiece batch with [PAD] and never inserts [DEC]", () => {
      const b = q.cases.batch2;
      const { ids, mask, shape } = wp.encodeBatch(b.subject_text);
      expect(Array.from(ids)).toEqual(b.input_ids.flat());
      expect(shape).toEqual([b.input_ids.length, b.input_ids[0].length]);
      expect(Array.from(mask)).toEqual(b.input_ids.flat().map((v: number, i: number) => (i % shape[1] < 3 || v !== 0 ? 1 : 0)));
      expect(Array.from(ids)).not.toContain(q.dec_token_id);
      for (const key of ["dog", "teddy"]) {
        const one = wp.encodeBatch(q.cases[key].subject_text);
        expect(Array.from(one.ids)).toEqual(toNumbers(fx.tensor(`qformer.${key}.input_ids`).data));
        expect(Array.from(one.mask)).toEqual(toNumbers(fx.tensor(`qformer.${key}.attention_mask`).data));
      }
    });

    it("tokenizes the built prompts (text.{dog,teddy}.input_ids) and the negative prompts", () => {
      const uncond = fx.json.cases.prompt.uncond;
      for (const key of Object.keys(fx.json.cases.prompt.cases)) {
        const c = fx.json.cases.prompt.cases[key];
        const built = buildPrompt(c.prompt, c.target_subject, c.prompt_strength, c.prompt_reps);
        for (const [negKey, neg] of Object.entries(uncond) as Array<[string, { neg_prompt: string }]>) {
          const r = tokenizePrompts(clip, built, neg.neg_prompt, 77, nq);
          expect(Array.from(r.condIds)).toEqual(toNumbers(fx.tensor(`text.${key}.input_ids`).data));
          expect(Array.from(r.uncondIds)).toEqual(toNumbers(fx.tensor(`text.uncond_${negKey}.input_ids`).data));
          expect(r.warnings).toEqual([]);
          expect(r.promptTruncated > 0).toBe(c.truncated);
        }
      }
    });

    it("truncates a too-long negative prompt with a warning, keeping <|endoftext|> last", () => {
      const neg = Array.from({ length: 100 }, () => "ugly").join(" ");
      const r = tokenizePrompts(clip, "a dog", neg, 77, nq);
      expect(r.uncondIds).toHaveLength(77);
      expect(r.uncondIds[0]).toBe(49406);
      expect(r.uncondIds[76]).toBe(49407);
      expect(r.warnings).toHaveLength(1);
      expect(r.warnings[0]).toMatch(/negative prompt is 25 token\(s\) longer than the 75 that fit/);
    });
  });
}
