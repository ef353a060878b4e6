// Encoding generated images: format by extension (PNG/JPEG/WebP) with sharp, parameters and seed embedded
// (PNG tEXt; EXIF ImageDescription for JPEG/WebP). Files are written atomically by src/io/atomic.ts.
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
