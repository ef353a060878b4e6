// Writing generated images: format by extension (PNG/JPEG/WebP) with sharp, parameters and seed embedded
// (PNG tEXt; EXIF ImageDescription for JPEG/WebP), written to a temporary name in the same folder and
// renamed into place so that no partial file is ever visible under the final name.
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, linkSync, openSync, renameSync, rmSync, unlinkSync, writeSync } from "node:fs";
import path from "node:path";
import sharp from "sharp";
import type { NativeImage } from "../bindings/types.js";
import { invalid } from "../errors.js";
import { insertPngText } from "./png-text.js";

export type ImageFormat = "png" | "jpeg" | "webp";

const EXTENSIONS: Record<string, ImageFormat> = { ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp" };

/** The output format of a file name (by extension). */
export function formatFromPath(file: string): ImageFormat {
  const ext = path.extname(file).toLowerCase();
  const f = EXTENSIONS[ext];
  if (!f) throw invalid("an output file ending in .png, .jpg, .jpeg or .webp", "output", file);
  return f;
}

/** Metadata embedded in every image: a tEXt "parameters" line and a "blipdiff" JSON document. */
export interface ImageMetadata {
  parameters: string;
  json: Record<string, unknown>;
}

/** Encodes an HWC uint8 image. */
export async function encodeImage(img: NativeImage, format: ImageFormat, meta?: ImageMetadata): Promise<Buffer> {
  let s = sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.byteLength), {
    raw: { width: img.width, height: img.height, channels: img.channels as 1 | 2 | 3 | 4 },
  });
  if (format === "png") {
    const png = await s.png().toBuffer();
    return meta ? insertPngText(png, { parameters: meta.parameters, blipdiff: JSON.stringify(meta.json) }) : png;
  }
  if (meta) s = s.withExif({ IFD0: { ImageDescription: JSON.stringify(meta.json).replace(/[^\x20-\x7e]/g, "?") } });
  return format === "jpeg" ? s.jpeg({ quality: 95 }).toBuffer() : s.webp({ quality: 95 }).toBuffer();
}

/** Temporary files currently being written (removed by {@link removePartialFiles} on abort). */
const pending = new Set<string>();

/** Writes `data` to `file` atomically: a temporary sibling, fsync, then rename. */
export function writeFileAtomic(file: string, data: Uint8Array, options: { overwrite?: boolean } = {}): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  pending.add(tmp);
  try {
    const fd = openSync(tmp, "wx");
    try {
      for (let off = 0; off < data.length; ) off += writeSync(fd, data, off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (options.overwrite ?? true) renameSync(tmp, file);
    else {
      // link() fails with EEXIST instead of replacing: no-clobber without a check-then-write race.
      linkSync(tmp, file);
      unlinkSync(tmp);
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  } finally {
    pending.delete(tmp);
  }
}

/** Removes temporary files of writes in flight (synchronous: safe in signal handlers). */
export function removePartialFiles(): void {
  for (const f of pending) rmSync(f, { force: true });
  pending.clear();
}
