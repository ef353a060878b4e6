// The token alignment of editing (src/edit/align.ts, edit.json spec sections 3 and 8) against every fixture's editing
// goldens (cases.*.alignment_edit_sequence, mapper, alphas, subject_token_positions and the <p>.mapper, <p>.alphas,
// <p>.subject_alpha tensors) and against hand-worked cases: a multi-token subject, a word that differs, the subject
// word twice in the prompt, ties.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { PLACEHOLDER, SUBJECT_START, alignTokens, alignmentSequence, subjectPositions, tokenAlignment } from "../../src/edit/align.js";
import { fixtureNames, fixturesRoot, readSafetensors } from "../helpers/fixtures.js";

const editFixtures = fixtureNames().filter((n) => existsSync(path.join(fixturesRoot, n, "edit.json")));

it("at least one fixture has editing goldens", () => {
  expect(editFixtures.length).toBeGreaterThan(0);
});

const CASES: Record<string, "gen" | "real"> = { p2p_generated: "gen", p2p_real: "real" };

for (const name of editFixtures) {
  describe(`token alignment against the editing goldens (${name})`, () => {
    const dir = path.join(fixturesRoot, name);
    const json = JSON.parse(readFileSync(path.join(dir, "edit.json"), "utf8"));
    const golden = readSafetensors(path.join(dir, "edit.safetensors"));
    const { num_query_tokens: nq, ctx_begin_pos: cbp, max_position_embeddings: P } = json.model;
    const ints = (key: string): number[] => Array.from(golden.get(key)!.data as BigInt64Array, (v) => Number(v));
    const floats = (key: string): number[] => Array.from(golden.get(key)!.data as Float32Array);

    for (const [caseName, prefix] of Object.entries(CASES)) {
      const c = json.cases[caseName];
      it(`${caseName}: sequence, mapper and alphas`, () => {
        expect(c.placeholder_id_in_alignment).toBe(PLACEHOLDER);
        const a = tokenAlignment(c.src_input_ids_unpadded, c.edit_input_ids_unpadded, cbp, nq, P);
        expect(a.sequence).toEqual(c.alignment_edit_sequence);
        expect(Array.from(a.mapper)).toEqual(c.mapper);
        expect(Array.from(a.mapper)).toEqual(ints(`${prefix}.mapper`));
        expect(Array.from(a.alphas)).toEqual(c.alphas);
        expect(Array.from(a.alphas)).toEqual(floats(`${prefix}.alphas`));
        // LAVIS's own mapper (with "sks" placeholders) is the same.
        expect(Array.from(a.mapper)).toEqual(c.lavis_info.mapper);
      });

      it(`${caseName}: the source subject's positions and subject_alpha`, () => {
        const { positions, subjectAlpha } = subjectPositions(c.subject_token_positions.length, P);
        expect(positions).toEqual(c.subject_token_positions);
        expect(Array.from(subjectAlpha)).toEqual(floats(`${prefix}.subject_alpha`));
      });
    }
  });
}

describe("token alignment: hand-worked cases", () => {
  // Abstract ids: BOS 100, EOS 101, "a" 1; nq = 2 ctx positions at cbp = 2 in a window of P = 12.
  const B = 100;
  const E = 101;
  const A = 1;
  const nq = 2;
  const cbp = 2;
  const P = 12;
  const PH = PLACEHOLDER;

  it("builds y with nq placeholders at cbp", () => {
    expect(alignmentSequence([B, A, 7, 8, E], cbp, nq)).toEqual([B, A, PH, PH, 7, 8, E]);
    expect(alignmentSequence([B, A, E], 0, 3)).toEqual([PH, PH, PH, B, A, E]);
  });

  it("a word that differs: the ctx positions and the new word get -1, later words shift by nq", () => {
    // "a cat sit" -> "a dog sit"
    const a = tokenAlignment([B, A, 10, 20, E], [B, A, 11, 20, E], cbp, nq, P);
    expect(Array.from(a.mapper)).toEqual([0, 1, -1, -1, -1, 3, 4, 7, 8, 9, 10, 11]);
    expect(Array.from(a.alphas)).toEqual([1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
  });

  it("the same subject aligns to itself", () => {
    // "a dog sit" -> "a dog sit"
    const a = tokenAlignment([B, A, 10, 20, E], [B, A, 10, 20, E], cbp, nq, P);
    expect(Array.from(a.mapper).slice(0, 7)).toEqual([0, 1, -1, -1, 2, 3, 4]);
  });

  it("a multi-token source subject: both tokens are subject positions, neither aligns to a different target", () => {
    // "a teddy bear sit" -> "a dog sit"
    const a = tokenAlignment([B, A, 30, 31, 20, E], [B, A, 11, 20, E], cbp, nq, P);
    expect(Array.from(a.mapper).slice(0, 7)).toEqual([0, 1, -1, -1, -1, 4, 5]);
    expect(Array.from(a.mapper).slice(7)).toEqual([7, 8, 9, 10, 11]);
    expect(subjectPositions(2, P).positions).toEqual([SUBJECT_START, SUBJECT_START + 1]);
    // "a teddy bear sit" -> "a teddy bear sit": token by token.
    const same = tokenAlignment([B, A, 30, 31, 20, E], [B, A, 30, 31, 20, E], cbp, nq, P);
    expect(Array.from(same.mapper).slice(0, 8)).toEqual([0, 1, -1, -1, 2, 3, 4, 5]);
  });

  it("the subject word twice in the prompt: the later copy aligns to the later copy; only the first is a subject position", () => {
    // "a cat near another cat" -> "a dog near another cat"
    const a = tokenAlignment([B, A, 10, 40, 41, 10, E], [B, A, 11, 40, 41, 10, E], cbp, nq, P);
    expect(Array.from(a.mapper).slice(0, 9)).toEqual([0, 1, -1, -1, -1, 3, 4, 5, 6]);
    const { subjectAlpha } = subjectPositions(1, P);
    expect(Array.from(subjectAlpha)).toEqual([0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
  });

  it("swapped words: the longest common subsequence wins", () => {
    // "a dog and a cat" -> "a cat and a dog" (nq = 1)
    const a = tokenAlignment([B, A, 11, 50, A, 10, E], [B, A, 10, 50, A, 11, E], cbp, 1, P);
    expect(Array.from(a.mapper).slice(0, 8)).toEqual([0, 1, -1, -1, 3, 4, -1, 6]);
  });

  it("ties prefer skipping the later y token (left before up before diagonal)", () => {
    // x = [A, B], y = [B, A]: one match either way; the traceback keeps B.
    expect(Array.from(alignTokens([7, 8], [8, 7]))).toEqual([1, -1]);
    // A word repeated in y matched by one copy in x: the earlier copy in y aligns.
    expect(Array.from(alignTokens([B, 10, E], [B, 10, 10, E]))).toEqual([0, 1, -1, 2]);
    // A word repeated in x matched by one copy in y: the earlier copy in x (up before diagonal).
    expect(Array.from(alignTokens([B, 10, 10, E], [B, 10, E]))).toEqual([0, 1, 3]);
    // Nothing in common: every y position is -1.
    expect(Array.from(alignTokens([1, 2, 3], [4, 5]))).toEqual([-1, -1]);
    // Empty x.
    expect(Array.from(alignTokens([], [4, 5]))).toEqual([-1, -1]);
  });

  it("aligned pairs are matches, strictly increasing, as many as the longest common subsequence", () => {
    // Deterministic pseudo-random sequences over a small alphabet (many ties).
    let s = 12345;
    const rnd = (n: number): number => {
      s = (s * 1103515245 + 12345) % 2 ** 31;
      return s % n;
    };
    const lcs = (x: number[], y: number[]): number => {
      const d = Array.from({ length: x.length + 1 }, () => new Array<number>(y.length + 1).fill(0));
      for (let i = 1; i <= x.length; i++)
        for (let j = 1; j <= y.length; j++) d[i][j] = x[i - 1] === y[j - 1] ? d[i - 1][j - 1] + 1 : Math.max(d[i - 1][j], d[i][j - 1]);
      return d[x.length][y.length];
    };
    for (let t = 0; t < 200; t++) {
      const x = Array.from({ length: 1 + rnd(12) }, () => rnd(4));
      const y = Array.from({ length: 1 + rnd(12) }, () => rnd(4));
      const m = Array.from(alignTokens(x, y));
      const pairs = m.map((i, j) => [j, i]).filter(([, i]) => i !== -1);
      for (const [j, i] of pairs) expect(x[i]).toBe(y[j]);
      for (let k = 1; k < pairs.length; k++) expect(pairs[k][1]).toBeGreaterThan(pairs[k - 1][1]);
      expect(pairs.length).toBe(lcs(x, y));
    }
  });

  it("refuses prompts that do not fit and bad subject counts", () => {
    expect(() => tokenAlignment(new Array(P + 1).fill(5), [B, A, E], cbp, nq, P)).toThrow(RangeError);
    expect(() => tokenAlignment([B, A, E], new Array(P - nq + 1).fill(5), cbp, nq, P)).toThrow(/at most 10 ids for the edit prompt/);
    expect(() => subjectPositions(0, P)).toThrow(RangeError);
    expect(() => subjectPositions(P, P)).toThrow(RangeError);
  });
});
