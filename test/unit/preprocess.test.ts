import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { decodeRgb } from "../../src/image/decode.js";
import { cropImage, resizeBicubic, resizeBicubicWindow, type RawImage } from "../../src/image/resample.js";
import { preprocessCondition, preprocessSubject, resizeSubject } from "../../src/pipeline/preprocess.js";
import { maxAbsDiff, repoRoot } from "../helpers/fixtures.js";
import { fixtureNames, loadFixture } from "./golden.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-pre-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const python = process.env.BLIPDIFF_PYTHON ?? path.join(repoRoot, ".venv", "bin", "python");

// LAVIS's subject processor, torchvision `Resize(size, BICUBIC)` + `CenterCrop(size)` on a PIL image, written
// out with Pillow alone (torchvision's _compute_resized_output_size and center_crop): the expectation comes
// from Pillow's own resampler, not from src/.
const PIL_CENTER_CROP = `
import json, sys
from PIL import Image
for i, case in enumerate(json.load(sys.stdin)):
    if "png" in case:
        img = Image.open(case["png"]).convert("RGB")
    else:
        with open(case["raw"], "rb") as f:
            img = Image.frombytes("RGB", (case["width"], case["height"]), f.read())
    size = case["size"]
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    img = img.resize((new_w, new_h), Image.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    with open(case["out"], "wb") as f:
        f.write(img.tobytes())
`;

type PilCase = { png: string; size: number } | { image: RawImage; size: number };

/** Runs {@link PIL_CENTER_CROP} on each case; a missing Pillow is a failure that says how to install it. */
function pilCenterCrop(cases: PilCase[]): Uint8Array[] {
  const jobs = cases.map((c, i) => {
    const out = path.join(tmp, `pil-${process.hrtime.bigint()}-${i}.rgb`);
    if ("png" in c) return { png: c.png, size: c.size, out };
    const raw = `${out}.in`;
    writeFileSync(raw, c.image.data);
    return { raw, width: c.image.width, height: c.image.height, size: c.size, out };
  });
  const r = spawnSync(python, ["-c", PIL_CENTER_CROP], { input: JSON.stringify(jobs), encoding: "utf8" });
  if (r.error || r.status !== 0)
    throw new Error(
      `Pillow in ${python} failed (${r.error?.message ?? r.stderr.trim().split("\n").pop()}); install it with \`.venv/bin/pip install pillow\``,
    );
  return jobs.map((j) => new Uint8Array(readFileSync(j.out)));
}

function countDiffs(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.max(a.length, b.length);
  let n = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) n++;
  return n;
}

/** A deterministic pseudo-random RGB picture (a small LCG, so failures reproduce). */
function randomImage(width: number, height: number, seed: number): RawImage {
  const data = new Uint8Array(width * height * 3);
  let s = seed >>> 0;
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    data[i] = s >>> 24;
  }
  return { data, width, height, channels: 3 };
}

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

    it("center crop of the fixture pictures equals Pillow's (torchvision Resize + CenterCrop semantics)", async () => {
      const files = ["reference.png", "reference_large.png", "reference_rgba.png"];
      const expected = pilCenterCrop(files.map((f) => ({ png: fx.input(f), size })));
      for (const [i, f] of files.entries()) {
        const out = resizeSubject(await decodeRgb(fx.input(f)), size, "center");
        expect([out.width, out.height]).toEqual([size, size]);
        expect(countDiffs(out.data, expected[i]), f).toBe(0);
      }
    });
  });
}

describe("center crop", () => {
  // Tall, wide, square, extreme strips, upscaling and downscaling, odd differences that put the crop offset
  // on a .5 (Python rounds half to even), and an axis that already has the target size.
  const shapes: [number, number, number][] = [
    [80, 56, 224], [300, 180, 224], [180, 300, 224], [57, 57, 32], [2, 600, 224], [600, 2, 224],
    [3, 500, 17], [41, 13, 16], [13, 41, 16], [224, 400, 224], [500, 224, 224], [1, 1, 5], [999, 37, 64],
  ];

  it("equals Pillow on random pictures of many shapes", () => {
    const cases = shapes.map(([w, h, size], i) => ({ image: randomImage(w, h, 1000 + i), size }));
    const expected = pilCenterCrop(cases);
    cases.forEach(({ image, size }, i) => {
      const out = resizeSubject(image, size, "center");
      expect([out.width, out.height]).toEqual([size, size]);
      expect(countDiffs(out.data, expected[i]), `${image.width}x${image.height} -> ${size}`).toBe(0);
    });
  });

  it("handles a 2x60000 strip (only the crop window is resampled)", async () => {
    // Red above, blue below, a green band of 21 rows across the middle: the crop window reads input rows
    // 29997..30003 only, so every output pixel is exactly green.
    const [w, h] = [2, 60000];
    const raw = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      const rgb = Math.abs(y - 30000) <= 10 ? [0, 200, 0] : y < 30000 ? [255, 0, 0] : [0, 0, 255];
      for (let x = 0; x < w; x++) raw.set(rgb, (y * w + x) * 3);
    }
    const png = await sharp(raw, { raw: { width: w, height: h, channels: 3 } }).png().toBuffer();
    const img = await decodeRgb(png);
    const { pixels, resized } = preprocessSubject(img, { size: 224, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], crop: "center" });
    expect(pixels.shape).toEqual([1, 3, 224, 224]);
    expect([resized.width, resized.height]).toEqual([224, 224]);
    for (let i = 0; i < 224 * 224; i++) expect(Array.from(resized.data.subarray(i * 3, i * 3 + 3))).toEqual([0, 200, 0]);
  });
});

describe("resizeBicubicWindow", () => {
  it("equals the full resize cropped to the window, bit for bit", () => {
    let seed = 7;
    const next = (n: number): number => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed % n;
    };
    const sizes: [number, number, number, number][] = [
      // [in w, in h, out w, out h]: up, down, mixed, one axis unchanged, both unchanged, 1-pixel sides.
      [17, 11, 40, 30], [60, 45, 13, 9], [9, 50, 31, 7], [23, 19, 23, 41], [23, 19, 5, 19], [12, 12, 12, 12],
      [1, 30, 9, 4], [30, 1, 4, 9], [3, 200, 20, 1500], [200, 3, 1500, 20],
    ];
    for (const [sw, sh, ow, oh] of sizes) {
      const src = randomImage(sw, sh, sw * 1000 + sh);
      const full = resizeBicubic(src, ow, oh);
      for (let k = 0; k < 6; k++) {
        const ww = 1 + next(ow);
        const wh = 1 + next(oh);
        const win: [number, number, number, number] = [next(ow - ww + 1), next(oh - wh + 1), ww, wh];
        const got = resizeBicubicWindow(src, ow, oh, win);
        expect([got.width, got.height]).toEqual([ww, wh]);
        expect(countDiffs(got.data, cropImage(full, ...win).data), `${sw}x${sh} -> ${ow}x${oh}, window ${win}`).toBe(0);
      }
      // With a source box too, as PIL's resize(box=) takes it.
      const box: [number, number, number, number] = [0.5, 1.25, sw - 0.75, sh];
      const boxed = resizeBicubic(src, ow, oh, box);
      const win: [number, number, number, number] = [Math.floor(ow / 3), Math.floor(oh / 4), Math.ceil(ow / 2), Math.ceil(oh / 2)];
      expect(countDiffs(resizeBicubicWindow(src, ow, oh, win, box).data, cropImage(boxed, ...win).data)).toBe(0);
    }
  });

  it("refuses a window outside the output", () => {
    const src = randomImage(4, 4, 1);
    expect(() => resizeBicubicWindow(src, 8, 8, [4, 0, 5, 8])).toThrow(RangeError);
    expect(() => resizeBicubicWindow(src, 8, 8, [0, -1, 8, 8])).toThrow(/Expected a window inside 8x8/);
    expect(() => resizeBicubicWindow(src, 8, 8, [0, 0, 0, 8])).toThrow(/Expected a window inside 8x8/);
  });
});

describe("resizeBicubic", () => {
  it("returns a copy for the same size and keeps constant images constant", () => {
    const img = { data: new Uint8Array(5 * 7 * 3).fill(77), width: 5, height: 7, channels: 3 };
    expect(resizeBicubic(img, 5, 7).data).toEqual(img.data);
    expect(resizeBicubic(img, 13, 3).data.every((v) => v === 77)).toBe(true);
  });
});
