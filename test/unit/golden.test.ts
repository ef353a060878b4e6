import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fixtureNames } from "./golden.js";

const root = mkdtempSync(path.join(os.tmpdir(), "blipdiff-golden-"));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe("fixture discovery", () => {
  it("throws instead of returning no fixtures", () => {
    expect(() => fixtureNames(path.join(root, "missing"))).toThrow(/no fixtures at .*missing: set BLIPDIFF_FIXTURES/);
    const empty = path.join(root, "empty");
    mkdirSync(path.join(empty, "not-a-fixture"), { recursive: true });
    expect(() => fixtureNames(empty)).toThrow(/no fixture folders \(with a golden.json\) in .*empty: the per-fixture tests would check nothing/);
  });

  it("lists the folders that have a golden.json, sorted", () => {
    const dir = path.join(root, "some");
    for (const d of ["tiny-b", "tiny-a", "other"]) mkdirSync(path.join(dir, d), { recursive: true });
    for (const d of ["tiny-b", "tiny-a"]) writeFileSync(path.join(dir, d, "golden.json"), "{}");
    expect(fixtureNames(dir)).toEqual(["tiny-a", "tiny-b"]);
    expect(fixtureNames().length).toBeGreaterThan(0);
  });
});
