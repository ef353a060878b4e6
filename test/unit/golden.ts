// Unit-test access to the fixtures: golden.json (Python's json writes -Infinity/NaN, which JSON.parse
// rejects, so it is read leniently here) and golden tensors through test/helpers/fixtures.ts.
import { existsSync, readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { parseJsonLenient } from "../../src/pipeline/manifest.js";
import { fixturesRoot, readSafetensors, type GoldenTensor } from "../helpers/fixtures.js";

/**
 * Every fixture folder under `root` (those with a golden.json), sorted. Throws when there are none: tests are
 * generated once per fixture, so an empty list would make them pass without checking anything.
 */
export function fixtureNames(root: string = fixturesRoot): string[] {
  if (!existsSync(root)) throw new Error(`no fixtures at ${root}: set BLIPDIFF_FIXTURES`);
  const names = readdirSync(root)
    .filter((d) => existsSync(path.join(root, d, "golden.json")))
    .sort();
  if (names.length === 0)
    throw new Error(`no fixture folders (with a golden.json) in ${root}: the per-fixture tests would check nothing; set BLIPDIFF_FIXTURES`);
  return names;
}

export const parseLenientJson = parseJsonLenient;

export interface GoldenFixture {
  name: string;
  dir: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
  tensor(name: string): GoldenTensor;
  input(name: string): string;
  ckpt(...parts: string[]): string;
}

export function loadFixture(name: string): GoldenFixture {
  const dir = path.join(fixturesRoot, name);
  const json = parseLenientJson(readFileSync(path.join(dir, "golden.json"), "utf8"));
  let tensors: Map<string, GoldenTensor> | undefined;
  return {
    name,
    dir,
    json,
    tensor(t: string) {
      tensors ??= readSafetensors(path.join(dir, "golden.safetensors"));
      const v = tensors.get(t);
      if (!v) throw new Error(`golden tensor ${t} missing in ${name}`);
      return v;
    },
    input: (f: string) => path.join(dir, "inputs", f),
    ckpt: (...parts: string[]) => path.join(dir, "ckpt", ...parts),
  };
}

export function toNumbers(data: GoldenTensor["data"]): number[] {
  return Array.from(data as ArrayLike<number | bigint>, (v) => Number(v));
}
