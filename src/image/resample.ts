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

/** precompute_coeffs + normalize_coeffs_8bpc for box [in0, in1) of an input of `inSize` pixels. */
function precomputeCoeffs(inSize: number, in0: number, in1: number, outSize: number): Coeffs {
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = BICUBIC_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const prekk = new Float64Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    // C casts (int) truncate toward zero.
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const base = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      const w = bicubicFilter((x + xmin - center + 0.5) * ss);
      prekk[base + x] = w;
      ww += w;
    }
    if (ww !== 0.0) for (let x = 0; x < xmax; x++) prekk[base + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  const kk = new Int32Array(outSize * ksize);
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
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1)
    throw new RangeError(`Expected a positive integer size for resize but received ${width}x${height}`);
  if (src.data.length !== src.width * src.height * src.channels)
    throw new RangeError(`Expected ${src.width * src.height * src.channels} bytes for the image but received ${src.data.length}`);
  const [x0, y0, x1, y1] = box.map((v) => Math.fround(v)) as [number, number, number, number];
  const needH = width !== src.width || x0 !== 0 || x1 !== width;
  const needV = height !== src.height || y0 !== 0 || y1 !== height;
  if (!needH && !needV) return { ...src, data: src.data.slice() };
  const horiz = precomputeCoeffs(src.width, x0, x1, width);
  const vert = precomputeCoeffs(src.height, y0, y1, height);
  let img = src;
  if (needH) {
    const first = vert.bounds[0];
    const last = vert.bounds[height * 2 - 2] + vert.bounds[height * 2 - 1];
    for (let i = 0; i < height; i++) vert.bounds[i * 2] -= first;
    img = resampleHorizontal(src, first, last - first, width, horiz);
  }
  if (needV) img = resampleVertical(img, height, vert);
  return img;
}
