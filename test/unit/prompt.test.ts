import { describe, expect, it } from "vitest";
import { buildPrompt } from "../../src/pipeline/prompt.js";
import { fixtureNames, loadFixture } from "./golden.js";

describe("buildPrompt", () => {
  it("repeats 'a {target} {prompt.strip()}' int(strength*reps) times joined by ', '", () => {
    expect(buildPrompt("swimming", "dog", 1, 2)).toBe("a dog swimming, a dog swimming");
    expect(buildPrompt("  wearing a hat ", "teddy bear", 1, 1)).toBe("a teddy bear wearing a hat");
  });

  it("truncates the count toward zero like Python int(): 0.33 * 20 -> 6", () => {
    const p = buildPrompt("x", "dog", 0.33, 20);
    expect(p.split(", ")).toHaveLength(6);
    expect(buildPrompt("x", "dog", 0.04, 20)).toBe("");
  });

  it("rejects invalid values with sharp-style messages", () => {
    expect(() => buildPrompt("x", "dog", -1, 20)).toThrow(/Expected a finite number >= 0 for promptStrength but received -1/);
    expect(() => buildPrompt("x", "dog", 1, 2.5)).toThrow(RangeError);
    expect(() => buildPrompt(3 as unknown as string, "dog")).toThrow(TypeError);
  });

  for (const name of fixtureNames()) {
    it(`reproduces the built prompts of ${name}`, () => {
      const fx = loadFixture(name);
      for (const c of Object.values(fx.json.cases.prompt.cases) as Array<Record<string, never>>) {
        expect(buildPrompt(c.prompt, c.target_subject, c.prompt_strength, c.prompt_reps)).toBe(c.built_prompt);
      }
    });
  }
});
