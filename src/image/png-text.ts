// PNG tEXt chunks: sharp cannot write arbitrary text metadata, so chunks are inserted into the encoded
// buffer directly (after IHDR), each with its CRC-32 over type + data.

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO 3309 / PNG). */
export function crc32(...parts: Uint8Array[]): number {
  let c = 0xffffffff;
  for (const p of parts) for (let i = 0; i < p.length; i++) c = CRC_TABLE[(c ^ p[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** tEXt text is Latin-1; characters outside it are written as \uXXXX escapes so nothing is lost. */
function toLatin1(s: string): string {
  return s.replace(/[^\u0000-\u00ff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

function textChunk(keyword: string, text: string): Buffer {
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(keyword) || keyword !== keyword.trim())
    throw new RangeError(`Expected a PNG keyword of 1-79 Latin-1 characters but received ${JSON.stringify(keyword)}`);
  const type = Buffer.from("tEXt", "latin1");
  const data = Buffer.concat([Buffer.from(keyword, "latin1"), Buffer.from([0]), Buffer.from(toLatin1(text).replace(/\0/g, ""), "latin1")]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(type, data));
  return Buffer.concat([len, type, data, crc]);
}

function assertPng(png: Uint8Array): void {
  if (png.length < 33 || !Buffer.from(png.subarray(0, 8)).equals(SIGNATURE)) throw new Error("not a PNG buffer");
}

/** Returns a copy of `png` with one tEXt chunk per entry inserted right after IHDR. */
export function insertPngText(png: Uint8Array, entries: Record<string, string>): Buffer {
  assertPng(png);
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const ihdrEnd = 8 + 12 + buf.readUInt32BE(8);
  const chunks = Object.entries(entries).map(([k, v]) => textChunk(k, v));
  return Buffer.concat([buf.subarray(0, ihdrEnd), ...chunks, buf.subarray(ihdrEnd)]);
}

/** Reads every tEXt chunk (keyword -> text); throws on a CRC mismatch. */
export function readPngText(png: Uint8Array): Record<string, string> {
  assertPng(png);
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const out: Record<string, string> = {};
  for (let off = 8; off + 12 <= buf.length; ) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString("latin1", off + 4, off + 8);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (crc32(buf.subarray(off + 4, off + 8), data) !== buf.readUInt32BE(off + 8 + len))
      throw new Error(`PNG chunk ${type} has a bad CRC`);
    if (type === "tEXt") {
      const nul = data.indexOf(0);
      out[data.toString("latin1", 0, nul)] = data.toString("latin1", nul + 1);
    }
    if (type === "IEND") break;
    off += 12 + len;
  }
  return out;
}
