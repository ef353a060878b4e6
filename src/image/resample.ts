// PIL's `Image.resize(size, BICUBIC)` for 8-bit images, reproduced bit for bit (Pillow src/libImaging/Resample.c):
// separable two-pass convolution, horizontal pass first into a uint8 intermediate (only the rows the vertical
// pass reads), then vertical; cubic kernel with a = -0.5; support widened by the scale factor when downscaling
// (antialiasing); double coefficients normalized per output pixel, then converted to fixed point with
// PRECISION_BITS = 32 - 8 - 2 and rounded half away from zero; accumulators start at 1 << (PRECISION_BITS - 1)
// and are clamped to [0, 255] after the shift.

/** An 8-bit image, HWC, row-major. */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: number;
}

const PRECISION_BITS = 32 - 8 - 2;
const BICUBIC_SUPPORT = 2.0;

function bicubicFilter(x: number): number {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

interface Coeffs {
  ksize: number;
  /** Per output pixel: [first input index, count]. */
  bounds: Int32Array;
  /** Fixed-point coefficients, ksize per output pixel. */
  kk: Int32Array;
}

/**
 * precompute_coeffs + normalize_coeffs_8bpc for box [in0, in1) of an input of `inSize` pixels resized to
 * `outSize`, for the `count` output pixels from `first` on (each output pixel's coefficients depend only on
 * its own index, so a window gets exactly the values of the full resize).
 */
function precomputeCoeffs(inSize: number, in0: number, in1: number, outSize: number, first = 0, count = outSize): Coeffs {
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const prekk = new Float64Array(count * ksize);
  const bounds = new Int32Array(count * 2);
  for (let i = 0; i < count; i++) {
    const xx = first + i;
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    // C casts (int) truncate toward zero.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const base = i * ksize;
    for (let x = 0; x < xmax; x++) {
      const w = bicubicFilter((x + xmin - center + 0.5) * ss);
      prekk[base + x] = w;
      ww += w;
    }
    if (ww !== 0.0) for (let x = 0; x < xmax; x++) prekk[base + x] /= ww;
    bounds[i * 2] = xmin;
    bounds[i * 2 + 1] = xmax;
  }
  const kk = new Int32Array(count * ksize);
  const one = 2 ** PRECISION_BITS;
  for (let i = 0; i < prekk.length; i++) {
    const v = prekk[i];
    kk[i] = v < 0 ? Math.trunc(-0.5 + v * one) : Math.trunc(0.5 + v * one);
  }
  return { ksize, bounds, kk };
}

function clip8(v: number): number {
  if (v >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / 2 ** PRECISION_BITS);
}

const HALF = 2 ** (PRECISION_BITS - 1);

function resampleHorizontal(src: RawImage, yOffset: number, outHeight: number, outWidth: number, c: Coeffs): RawImage {
  const ch = src.channels;
  const out = new Uint8Array(outWidth * outHeight * ch);
  for (let yy = 0; yy < outHeight; yy++) {
    const row = (yy + yOffset) * src.width * ch;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = c.bounds[xx * 2];
      const xmax = c.bounds[xx * 2 + 1];
      const kb = xx * c.ksize;
      for (let k = 0; k < ch; k++) {
        // Integer sums below 2^31 in C (int32); exact in doubles here.
        let ss = HALF;
        for (let x = 0; x < xmax; x++) ss += src.data[row + (x + xmin) * ch + k] * c.kk[kb + x];
        out[(yy * outWidth + xx) * ch + k] = clip8(ss);
      }
    }
  }
  return { data: out, width: outWidth, height: outHeight, channels: ch };
}

function resampleVertical(src: RawImage, outHeight: number, c: Coeffs): RawImage {
  const ch = src.channels;
  const w = src.width;
  const out = new Uint8Array(w * outHeight * ch);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = c.bounds[yy * 2];
    const ymax = c.bounds[yy * 2 + 1];
    const kb = yy * c.ksize;
    for (let xx = 0; xx < w; xx++) {
      for (let k = 0; k < ch; k++) {
        let ss = HALF;
        for (let y = 0; y < ymax; y++) ss += src.data[((y + ymin) * w + xx) * ch + k] * c.kk[kb + y];
        out[(yy * w + xx) * ch + k] = clip8(ss);
      }
    }
  }
  return { data: out, width: w, height: outHeight, channels: ch };
}

/** Copies the rectangle [left, left + width) x [top, top + height) of an HWC image (no resampling). */
export function cropImage(img: RawImage, left: number, top: number, width: number, height: number): RawImage {
  const ch = img.channels;
  const out = new Uint8Array(width * height * ch);
  for (let y = 0; y < height; y++) {
    const from = ((y + top) * img.width + left) * ch;
    out.set(img.data.subarray(from, from + width * ch), y * width * ch);
  }
  return { data: out, width, height, channels: ch };
}

/** A rectangle of an image in pixels: left, top, width, height. */
export type PixelWindow = [left: number, top: number, width: number, height: number];

function checkInput(src: RawImage, width: number, height: number): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new RangeError(`Expected a positive integer size for resize but received ${width}x${height}`);
  if (src.data.length !== src.width * src.height * src.channels)
    throw new RangeError(`Expected ${src.width * src.height * src.channels} bytes for the image but received ${src.data.length}`);
}

/**
 * The pixels in `window` of `resizeBicubic(src, width, height, box)`, bit for bit, computing only those: the
 * horizontal pass runs on the input rows the window's vertical taps read, for the window's columns. Time and
 * memory follow the window, not the full output (a centre crop of a 2x60000 picture resized to 224 wide would
 * otherwise need a 224x6720000 intermediate).
 */
export function resizeBicubicWindow(
  src: RawImage,
  width: number,
  height: number,
  window: PixelWindow,
  box: [number, number, number, number] = [0, 0, src.width, src.height],
): RawImage {
  checkInput(src, width, height);
  const [left, top, w, h] = window;
  if (![left, top, w, h].every(Number.isInteger) || left < 0 || top < 0 || w < 1 || h < 1 || left + w > width || top + h > height)
    throw new RangeError(`Expected a window inside ${width}x${height} for resize but received [${window.join(", ")}]`);
  const [x0, y0, x1, y1] = box.map((v) => Math.fround(v)) as [number, number, number, number];
  // As Pillow decides: a pass runs unless its axis keeps both the size and the whole box.
  const needH = width !== src.width || x0 !== 0 || x1 !== width;
  const needV = height !== src.height || y0 !== 0 || y1 !== height;
  const vert = needV ? precomputeCoeffs(src.height, y0, y1, height, top, h) : undefined;
  // The input rows the window's output rows read.
  let rowFirst = top;
  let rowEnd = top + h;
  if (vert) {
    rowFirst = vert.bounds[0];
    rowEnd = vert.bounds[h * 2 - 2] + vert.bounds[h * 2 - 1];
    for (let i = 0; i < h; i++) vert.bounds[i * 2] -= rowFirst;
  }
  let img = needH
    ? resampleHorizontal(src, rowFirst, rowEnd - rowFirst, w, precomputeCoeffs(src.width, x0, x1, width, left, w))
    : cropImage(src, left, rowFirst, w, rowEnd - rowFirst);
  if (vert) img = resampleVertical(img, h, vert);
  return img;
}

/**
 * Resizes to width x height with PIL's BICUBIC filter. `box` (left, top, right, bottom, in input pixels)
 * selects the source region as PIL's `resize(..., box=)` does; it defaults to the whole image.
 */
export function resizeBicubic(
  src: RawImage,
  width: number,
  height: number,
  box: [number, number, number, number] = [0, 0, src.width, src.height],
): RawImage {
  return resizeBicubicWindow(src, width, height, [0, 0, width, height], box);
}
