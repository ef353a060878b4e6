// Subject-image and ControlNet-condition preprocessing, identical to the reference (diffusers
// BlipImageProcessor): PIL bicubic resize on uint8, x = float32(u8 * (1/255) in float64),
// (x - float32(mean)) / float32(std) in float32, NCHW.
import type { NativeTensor } from "../bindings/types.js";
import { invalid } from "../errors.js";
import { resizeBicubic, resizeBicubicWindow, type RawImage } from "../image/resample.js";

/** How a non-square subject picture is brought to the processor's square size. */
export type SubjectCrop = "squash" | "center";

export const SUBJECT_CROPS: readonly SubjectCrop[] = ["squash", "center"];

export function parseSubjectCrop(value: unknown): SubjectCrop {
  if (typeof value === "string" && (SUBJECT_CROPS as readonly string[]).includes(value)) return value as SubjectCrop;
  throw invalid(`one of ${SUBJECT_CROPS.join(", ")}`, "subjectCrop", value);
}

export interface SubjectPreprocessConfig {
  /** Processor size (square). */
  size: number;
  mean: readonly number[];
  std: readonly number[];
  /** `squash` (the diffusers reference, default) or `center` (LAVIS: short side to size, centre crop). */
  crop?: SubjectCrop;
}

const INV255 = 1 / 255;

/** Python's round(): half to even. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The uint8 picture the processor normalizes: squashed to size x size (diffusers), or, with `center`,
 * torchvision's `Resize(size, BICUBIC)` (short side to size, long side int(size * long / short), PIL bicubic)
 * followed by `CenterCrop(size)` (offsets int(round((d - size) / 2)), Python rounding). Only the crop window of
 * the resize is computed: the same pixels, at a cost that does not grow with the aspect ratio.
 */
export function resizeSubject(img: RawImage, size: number, mode: SubjectCrop = "squash"): RawImage {
  if (mode === "squash") return resizeBicubic(img, size, size);
  const { width: w, height: h } = img;
  const short = Math.min(w, h);
  const long = Math.max(w, h);
  const newLong = Math.trunc((size * long) / short);
  const [nw, nh] = w <= h ? [size, newLong] : [newLong, size];
  const top = roundHalfEven((nh - size) / 2);
  const left = roundHalfEven((nw - size) / 2);
  return resizeBicubicWindow(img, nw, nh, [left, top, size, size]);
}

/** HWC uint8 RGB -> NCHW float32 `(u8/255 - mean) / std` (or just u8/255 without mean/std). */
export function toNormalizedChw(img: RawImage, mean?: readonly number[], std?: readonly number[]): Float32Array {
  if (img.channels !== 3) throw invalid("an RGB image (3 channels)", "image", img.channels);
  const plane = img.width * img.height;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    const m = mean ? Math.fround(mean[c]) : 0;
    const s = std ? Math.fround(std[c]) : 1;
    for (let i = 0; i < plane; i++) {
      const x = Math.fround(img.data[i * 3 + c] * INV255);
      out[c * plane + i] = mean ? Math.fround(Math.fround(x - m) / s) : x;
    }
  }
  return out;
}

/** Subject picture -> pixel_values [1, 3, size, size] for the Q-Former. */
export function preprocessSubject(img: RawImage, cfg: SubjectPreprocessConfig): { pixels: NativeTensor; resized: RawImage } {
  if (cfg.mean.length !== 3 || cfg.std.length !== 3) throw invalid("3 values", "image mean/std", cfg.mean.length);
  const resized = resizeSubject(img, cfg.size, cfg.crop ?? "squash");
  return { pixels: { data: toNormalizedChw(resized, cfg.mean, cfg.std), shape: [1, 3, cfg.size, cfg.size] }, resized };
}

/**
 * A fine-tuning target picture as LAVIS prepares it (subject_driven_t2i_dataset): torchvision's Resize(size, BICUBIC)
 * and CenterCrop(size) on the PIL image (the `center` subject crop: shorter side to size, longer side
 * int(size * long / short), offsets Python-rounded), ToTensor (u8 / 255 in float32) and Normalize(0.5, 0.5):
 * [1, 3, size, size] in [-1, 1].
 */
export function preprocessTarget(img: RawImage, size: number): NativeTensor {
  if (img.channels !== 3) throw invalid("an RGB image (3 channels)", "image", img.channels);
  const resized = resizeSubject(img, size, "center");
  const plane = size * size;
  const out = new Float32Array(3 * plane);
  for (let c = 0; c < 3; c++)
    for (let i = 0; i < plane; i++) {
      // float32(u8 / 255) as torch divides, then (x - 0.5) / 0.5 in float32 (the subtraction is the one rounding).
      const x = Math.fround(resized.data[i * 3 + c] / 255);
      out[c * plane + i] = Math.fround(Math.fround(x - 0.5) / 0.5);
    }
  return { data: out, shape: [1, 3, size, size] };
}

/** ControlNet condition -> [1, 3, height, width] in [0, 1]: bicubic resize, /255, no normalization, no crop. */
export function preprocessCondition(img: RawImage, width: number, height: number): NativeTensor {
  const resized = resizeBicubic(img, width, height);
  return { data: toNormalizedChw(resized), shape: [1, 3, height, width] };
}

/** Stacks [1,3,S,S] tensors into [B,3,S,S]. */
export function stackBatch(tensors: NativeTensor[]): NativeTensor {
  const [, c, h, w] = tensors[0].shape;
  const data = new Float32Array(tensors.length * c * h * w);
  tensors.forEach((t, i) => data.set(t.data, i * c * h * w));
  return { data, shape: [tensors.length, c, h, w] };
}
