import { describe, expect, it } from "vitest";
import { decodeRgb } from "../../src/image/decode.js";
import { resizeBicubic } from "../../src/image/resample.js";
import { preprocessCondition, preprocessSubject, resizeSubject } from "../../src/pipeline/preprocess.js";
import { maxAbsDiff } from "../helpers/fixtures.js";
import { fixtureNames, loadFixture } from "./golden.js";

for (const name of fixtureNames()) {
  describe(`preprocessing (${name})`, () => {
    const fx = loadFixture(name);
    const proc = fx.json.cases.preprocess.processor;
    const size: number = proc.size.height;
    const cfg = { size, mean: proc.image_mean as number[], std: proc.image_std as number[] };

    for (const [key, file] of [
      ["ref", "reference.png"],
      ["large", "reference_large.png"],
      ["rgba", "reference_rgba.png"],
    ]) {
      it(`reproduces pre.${key}.resized_u8 exactly and pixel_values`, async () => {
        const img = await decodeRgb(fx.input(file));
        const { pixels, resized } = preprocessSubject(img, cfg);
        const golden = fx.tensor(`pre.${key}.resized_u8`);
        expect([resized.height, resized.width, resized.channels]).toEqual(golden.shape);
        let diffs = 0;
        for (let i = 0; i < golden.data.length; i++) if (resized.data[i] !== golden.data[i]) diffs++;
        expect(diffs).toBe(0);
        expect(pixels.shape).toEqual([1, 3, size, size]);
        if (key !== "rgba") expect(maxAbsDiff(pixels.data, fx.tensor(`pre.${key}.pixel_values`).data as Float32Array)).toBeLessThanOrEqual(1e-6);
      });
    }

    it("reproduces pre.cond.pixel_values (ControlNet condition, [0,1], no normalization)", async () => {
      const call = fx.json.cases.preprocess.cases.cond.call;
      const img = await decodeRgb(fx.input("condition.png"));
      const t = preprocessCondition(img, call.size.width, call.size.height);
      const golden = fx.tensor("pre.cond.pixel_values");
      expect(t.shape).toEqual(golden.shape);
      expect(maxAbsDiff(t.data, golden.data as Float32Array)).toBeLessThanOrEqual(1e-6);
    });

    it("center crop: short side to size, then a centred square", async () => {
      const img = await decodeRgb(fx.input("reference_large.png"));
      const out = resizeSubject(img, size, "center");
      expect([out.width, out.height]).toEqual([size, size]);
      const w = Math.trunc((size * img.width) / img.height);
      const full = resizeBicubic(img, w, size);
      const left = Math.round((w - size) / 2);
      expect(Array.from(out.data.subarray(0, 3))).toEqual(Array.from(full.data.subarray(left * 3, left * 3 + 3)));
    });
  });
}

describe("resizeBicubic", () => {
  it("returns a copy for the same size and keeps constant images constant", () => {
    const img = { data: new Uint8Array(5 * 7 * 3).fill(77), width: 5, height: 7, channels: 3 };
    expect(resizeBicubic(img, 5, 7).data).toEqual(img.data);
    expect(resizeBicubic(img, 13, 3).data.every((v) => v === 77)).toBe(true);
  });
});
