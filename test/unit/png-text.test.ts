import sharp from "sharp";
import { describe, expect, it } from "vitest";
import { crc32, insertPngText, readPngText } from "../../src/image/png-text.js";
import { encodeImage, formatFromPath } from "../../src/image/encode.js";

const img = { data: new Uint8Array(4 * 3 * 3).map((_, i) => i * 7), width: 4, height: 3, channels: 3 };

describe("PNG tEXt metadata", () => {
  it("computes the standard CRC-32", () => {
    expect(crc32(Buffer.from("123456789"))).toBe(0xcbf43926);
    expect(crc32(Buffer.from("IEND"))).toBe(0xae426082);
  });

  it("round-trips parameters and seed through an encoded PNG that sharp still decodes", async () => {
    const json = { prompt: "a dog — swimming", seed: 9007199254740991, steps: 5 };
    const png = await encodeImage(img, "png", { parameters: "a dog\nSteps: 5, Seed: 9007199254740991", json });
    const text = readPngText(png);
    expect(text.parameters).toBe("a dog\nSteps: 5, Seed: 9007199254740991");
    expect(JSON.parse(text.blipdiff)).toEqual(json);
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([4, 3, 3]);
    expect(Array.from(data)).toEqual(Array.from(img.data));
    const meta = await sharp(png).metadata();
    expect(meta.format).toBe("png");
  });

  it("escapes characters outside Latin-1 instead of corrupting the chunk", async () => {
    const png = insertPngText(await encodeImage(img, "png"), { parameters: "chien 🐕 café" });
    expect(readPngText(png).parameters).toBe("chien \\ud83d\\udc15 café");
  });

  it("rejects a bad keyword and detects a corrupted chunk", async () => {
    const png = await encodeImage(img, "png");
    expect(() => insertPngText(png, { "": "x" })).toThrow(RangeError);
    const withText = insertPngText(png, { k: "value" });
    const i = withText.indexOf("value");
    withText[i] = 0x56;
    expect(() => readPngText(withText)).toThrow(/bad CRC/);
  });

  it("picks the format by extension", () => {
    expect(formatFromPath("a/b.PNG")).toBe("png");
    expect(formatFromPath("x.jpeg")).toBe("jpeg");
    expect(formatFromPath("x.webp")).toBe("webp");
    expect(() => formatFromPath("x.gif")).toThrow(/Expected an output file ending in .png, .jpg, .jpeg or .webp for output but received "x.gif"/);
  });

  it("writes JPEG and WebP", async () => {
    for (const f of ["jpeg", "webp"] as const) {
      const buf = await encodeImage(img, f, { parameters: "p", json: { seed: 1 } });
      expect((await sharp(buf).metadata()).format).toBe(f);
    }
  });
});
