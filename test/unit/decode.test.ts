import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import sharp from "sharp";
import { afterAll, describe, expect, it } from "vitest";
import { decodeRgb } from "../../src/image/decode.js";
import { fixtureNames, loadFixture } from "./golden.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "blipdiff-dec-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("decoding input pictures", () => {
  it("drops alpha without compositing (rgba equals ref) and expands grey", async () => {
    const fx = loadFixture(fixtureNames()[0]);
    const rgb = await decodeRgb(fx.input("reference.png"));
    const rgba = await decodeRgb(fx.input("reference_rgba.png"));
    expect(rgba.channels).toBe(3);
    expect(Buffer.from(rgba.data).equals(Buffer.from(rgb.data))).toBe(true);
    const grey = await sharp({ create: { width: 3, height: 2, channels: 3, background: { r: 90, g: 90, b: 90 } } })
      .greyscale()
      .png()
      .toBuffer();
    const g = await decodeRgb(grey);
    expect(Array.from(g.data.subarray(0, 3))).toEqual([90, 90, 90]);
  });

  it("does not apply the EXIF orientation (like PIL.Image.open)", async () => {
    const jpg = await sharp({ create: { width: 6, height: 2, channels: 3, background: "#808080" } })
      .jpeg()
      .withMetadata({ orientation: 6 })
      .toBuffer();
    const img = await decodeRgb(jpg);
    expect([img.width, img.height]).toEqual([6, 2]);
  });

  it("gives one-line errors for missing, empty, non-image and enormous inputs", async () => {
    await expect(decodeRgb(path.join(dir, "none.png"), { label: "--subject-image" })).rejects.toThrow(
      /^--subject-image: file not found: /,
    );
    const empty = path.join(dir, "empty.png");
    writeFileSync(empty, "");
    await expect(decodeRgb(empty)).rejects.toThrow(/is empty \(0 bytes\)/);
    const text = path.join(dir, "text.png");
    writeFileSync(text, "this is not an image\n");
    await expect(decodeRgb(text)).rejects.toThrow(/is not a readable image/);
    await expect(decodeRgb(dir)).rejects.toThrow(/is a folder/);
    const big = await sharp({ create: { width: 300, height: 300, channels: 3, background: "#000" } }).png().toBuffer();
    await expect(decodeRgb(big, { maxPixels: 1000 })).rejects.toThrow(/is too large \(more than 1000 pixels\)/);
  });
});
