// Editing goldens (edit.json, edit.safetensors) for the tests: the fixtures that have them, their tensors, the
// tolerances of edit.json (latents; relative closeness), the images [source, edited], the short layer names.
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { expect } from "vitest";
import type { NativeImage, NativeTensor } from "../../src/bindings/types.js";
import { fixtureNames, fixturesRoot, readSafetensors, type GoldenTensor } from "./fixtures.js";

/** Fixtures with editing goldens (an edit.json). */
export function editFixtureNames(): string[] {
  return fixtureNames().filter((n) => existsSync(path.join(fixturesRoot, n, "edit.json")));
}

/** Short golden layer names (spec section 13): d = down_blocks, u = up_blocks, m = mid_block, a = attentions, t = transformer_blocks. */
export function shortName(name: string): string {
  return name
    .replace(/down_blocks\.(\d+)/, "d$1")
    .replace(/up_blocks\.(\d+)/, "u$1")
    .replace("mid_block", "m")
    .replace(/attentions\.(\d+)/, "a$1")
    .replace(/transformer_blocks\.(\d+)/, "t$1");
}

/** One fixture's editing goldens and the checks against them (plain functions: they can be destructured). */
export interface EditGoldens {
  dir: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: Record<string, any>;
  tensors: Map<string, GoldenTensor>;
  /** A golden tensor; throws when it is missing. */
  g(key: string): GoldenTensor;
  f32(key: string): Float32Array;
  t32(key: string): NativeTensor;
  /** An I64 golden (ids, mapper) as the addon takes it. */
  i32(key: string): Int32Array;
  /** |a - b| <= 1e-4 + 2e-5 * max|b| over the tensor (edit.json's latent tolerance); DEBUG_EDIT=1 prints each. */
  latentClose(what: string, a: NativeTensor, key: string): void;
  /** |a - b| <= atol + rtol * |b| for every value. */
  relClose(what: string, a: NativeTensor, key: string, atol: number, rtol: number): void;
  /** Row `row` of <prefix>.image_u8 ([2, H, W, 3]: source, edited) against an HWC image: off by at most 1. */
  imageClose(what: string, img: NativeImage, prefix: string, row: number): void;
}

export function loadEditGoldens(name: string): EditGoldens {
  const dir = path.join(fixturesRoot, name);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const json = JSON.parse(readFileSync(path.join(dir, "edit.json"), "utf8")) as Record<string, any>;
  const tensors = readSafetensors(path.join(dir, "edit.safetensors"));
  const g = (key: string): GoldenTensor => {
    const t = tensors.get(key);
    if (!t) throw new Error(`golden ${key} missing`);
    return t;
  };
  const f32 = (key: string): Float32Array => g(key).data as Float32Array;
  const t32 = (key: string): NativeTensor => ({ data: f32(key), shape: g(key).shape });
  const i32 = (key: string): Int32Array => Int32Array.from(g(key).data as BigInt64Array, (v) => Number(v));
  const latentClose = (what: string, a: NativeTensor, key: string): void => {
    const b = f32(key);
    expect(a.shape, what).toEqual(g(key).shape);
    let maxB = 0;
    for (const v of b) maxB = Math.max(maxB, Math.abs(v));
    const tol = 1e-4 + 2e-5 * maxB;
    let max = 0;
    for (let i = 0; i < b.length; i++) max = Math.max(max, Math.abs(a.data[i] - b[i]));
    if (process.env.DEBUG_EDIT) console.log(`${what}: ${max.toExponential(2)} / ${tol.toExponential(2)}`);
    expect(max, `${what} vs ${key}: max |diff| ${max} > ${tol}`).toBeLessThanOrEqual(tol);
  };
  const relClose = (what: string, a: NativeTensor, key: string, atol: number, rtol: number): void => {
    const b = f32(key);
    expect(a.shape, what).toEqual(g(key).shape);
    let bad = 0;
    let max = 0;
    for (let i = 0; i < b.length; i++) {
      const d = Math.abs(a.data[i] - b[i]);
      max = Math.max(max, d);
      if (!(d <= atol + rtol * Math.abs(b[i]))) bad++;
    }
    expect(bad, `${what} vs ${key}: ${bad} values off, max |diff| ${max}`).toBe(0);
  };
  const imageClose = (what: string, img: NativeImage, prefix: string, row: number): void => {
    const u8 = g(`${prefix}.image_u8`);
    const [, h, w, c] = u8.shape;
    expect([img.height, img.width, img.channels], what).toEqual([h, w, c]);
    const want = (u8.data as Uint8Array).subarray(row * h * w * c, (row + 1) * h * w * c);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(img.data[i] - want[i]));
    expect(worst, `${what}: max pixel difference`).toBeLessThanOrEqual(1);
  };
  return { dir, json, tensors, g, f32, t32, i32, latentClose, relClose, imageClose };
}
