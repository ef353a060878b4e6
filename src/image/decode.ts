// Decoding input pictures with sharp into 8-bit RGB, the way the reference's PIL `convert("RGB")` sees them.
//
// Parity notes: PIL's `Image.open` does not apply the EXIF orientation and the reference never calls
// `ImageOps.exif_transpose`, so neither do we (a rotated phone photo reaches the model as stored). Alpha is
// dropped, not composited; grey is replicated to three channels; palette images are expanded.
import { readFile, stat } from "node:fs/promises";
import sharp from "sharp";
import { InputError, messageOf } from "../errors.js";
import type { RawImage } from "./resample.js";

/** Default pixel limit for input pictures (sharp's own default, about 268 megapixels). */
export const DEFAULT_MAX_INPUT_PIXELS = 0x3fff * 0x3fff;

/** Encoded bytes with the name to show in messages and metadata (e.g. a file already read once). */
export interface NamedBytes {
  name: string;
  data: Uint8Array;
}

/** An input: a file path, "-" for stdin, encoded bytes, or named encoded bytes. */
export type ImageSource = string | Uint8Array | NamedBytes;

export interface DecodeOptions {
  /** Refuse pictures with more pixels than this. Defaults to {@link DEFAULT_MAX_INPUT_PIXELS}. */
  maxPixels?: number;
  /** Name used in error messages (e.g. "--subject-image"). */
  label?: string;
}

let stdinCache: Promise<Buffer> | undefined;

/** The message for "-" when stdin is a terminal (reading would wait for typed bytes with no prompt). */
export function stdinIsTerminal(label: string): string {
  return `${label} - reads the picture from stdin, but stdin is a terminal; pipe a picture in (... < dog.jpg) or give a file path`;
}

/** Reads all of stdin once, asynchronously (so SIGINT is handled while it waits); several "-" inputs share it. */
function readStdin(label: string): Promise<Buffer> {
  if (process.stdin.isTTY) return Promise.reject(new InputError(stdinIsTerminal(label)));
  stdinCache ??= (async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  })();
  return stdinCache;
}

function isNamedBytes(src: unknown): src is NamedBytes {
  return typeof src === "object" && src !== null && !(src instanceof Uint8Array) && (src as NamedBytes).data instanceof Uint8Array;
}

/** The name of a source in messages and metadata. */
export function sourceName(src: ImageSource): string {
  if (typeof src === "string") return src === "-" ? "<stdin>" : src;
  return isNamedBytes(src) ? src.name : "<buffer>";
}

/**
 * Loads the bytes of a source, with one-line errors for missing, unreadable and empty files. Reads asynchronously
 * (a FIFO or a slow pipe does not block the event loop) and returns named bytes that can be decoded again
 * without reading the source twice.
 */
export async function readSource(src: ImageSource, label = "image"): Promise<NamedBytes> {
  if (isNamedBytes(src)) {
    if (src.data.length === 0) throw new InputError(`${label}: ${src.name} is empty (0 bytes)`);
    return src;
  }
  if (typeof src !== "string") {
    if (!(src instanceof Uint8Array)) throw new TypeError(`Expected a path or a Uint8Array for ${label} but received ${typeof src}`);
    if (src.length === 0) throw new InputError(`${label}: the data is empty (0 bytes)`);
    return { name: "<buffer>", data: src };
  }
  if (src === "-") {
    const data = await readStdin(label);
    if (data.length === 0) throw new InputError(`${label}: nothing was read from stdin`);
    return { name: "<stdin>", data };
  }
  try {
    const st = await stat(src);
    if (st.isDirectory()) throw new InputError(`${label}: ${src} is a folder, not an image file`);
    // A FIFO or a character device (process substitution, /dev/stdin) reports size 0 but has data.
    if (st.isFile() && st.size === 0) throw new InputError(`${label}: ${src} is empty (0 bytes)`);
  } catch (err) {
    if (err instanceof InputError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") throw new InputError(`${label}: file not found: ${src}`);
    throw new InputError(`${label}: cannot read ${src}: ${messageOf(err)}`);
  }
  let data: Buffer;
  try {
    data = await readFile(src);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM") throw new InputError(`${label}: permission denied reading ${src}`);
    throw new InputError(`${label}: cannot read ${src}: ${messageOf(err)}`);
  }
  if (data.length === 0) throw new InputError(`${label}: ${src} is empty (0 bytes)`);
  return { name: src, data };
}

function rewriteSharpError(err: unknown, label: string, name: string, maxPixels: number): InputError {
  const msg = messageOf(err);
  if (/pixel limit/i.test(msg))
    return new InputError(`${label}: ${name} is too large (more than ${maxPixels} pixels); resize it first`);
  if (/unsupported image format|bad seek|corrupt|premature end|not a known file format/i.test(msg))
    return new InputError(`${label}: ${name} is not a readable image (${msg.split("\n")[0]})`);
  return new InputError(`${label}: cannot decode ${name}: ${msg.split("\n")[0]}`);
}

/** Decodes a picture to 8-bit RGB, HWC (alpha dropped, grey expanded, EXIF orientation NOT applied). */
export async function decodeRgb(src: ImageSource, options: DecodeOptions = {}): Promise<RawImage> {
  const label = options.label ?? "image";
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_INPUT_PIXELS;
  const { name, data: bytes } = await readSource(src, label);
  let data: Buffer;
  let info: sharp.OutputInfo;
  try {
    ({ data, info } = await sharp(bytes, { limitInputPixels: maxPixels, autoOrient: false })
      .raw({ depth: "uchar" })
      .toBuffer({ resolveWithObject: true }));
  } catch (err) {
    throw rewriteSharpError(err, label, name, maxPixels);
  }
  const { width, height, channels } = info;
  if (width < 1 || height < 1) throw new InputError(`${label}: ${name} has no pixels (${width}x${height})`);
  const out = new Uint8Array(width * height * 3);
  const n = width * height;
  if (channels === 3) out.set(data.subarray(0, n * 3));
  else if (channels === 4) for (let i = 0; i < n; i++) out.set(data.subarray(i * 4, i * 4 + 3), i * 3);
  else if (channels === 1 || channels === 2)
    for (let i = 0; i < n; i++) out.fill(data[i * channels], i * 3, i * 3 + 3);
  else throw new InputError(`${label}: ${name} has ${channels} channels; expected grey, RGB or RGBA`);
  return { data: out, width, height, channels: 3 };
}
