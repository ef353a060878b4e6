// Ctrl-C during `blipdiff convert`, sent to the CLI's process group as a terminal sends it. The exporter
// (Python) runs in a process group of its own: the CLI forwards exactly one SIGINT, the exporter removes its
// staging folder, prints one line and exits 130; if the CLI dies, the exporter stops by itself.
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fixtureNames, fixturesRoot } from "../helpers/fixtures.js";
import { buildCli } from "./cli.js";
import { convertAndSignal, interruptLines, type ConvertRun } from "./convert-helpers.js";

const tmp = mkdtempSync(path.join(os.tmpdir(), "blipdiff-convert-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ckpt = path.join(fixturesRoot, fixtureNames()[0], "ckpt");

/** One interrupt line, no Python or Node stack trace, and nothing at all in the destination's parent folder. */
function expectCleanStop(r: ConvertRun, parent: string): void {
  expect(interruptLines(r.stderr), r.stderr).toEqual(["interrupted: nothing was written"]);
  expect(r.stderr).not.toMatch(/Traceback|KeyboardInterrupt|^\s+at /m);
  expect(r.stdout).toBe("");
  // Neither the output folder nor the exporter's staging folder (.<name>.partial-<pid>).
  expect(readdirSync(parent)).toEqual([]);
}

describe("blipdiff convert: interrupts", () => {
  buildCli();

  it("Ctrl-C: exit 130, one line, no traceback, no output and no staging folder", async () => {
    const parent = mkdtempSync(path.join(tmp, "dest-"));
    const r = await convertAndSignal([ckpt, "--out", path.join(parent, "model")], ["SIGINT"]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.code, r.stderr).toBe(130);
    expectCleanStop(r, parent);
  });

  it("a second Ctrl-C during the cleanup ends the CLI at once and the cleanup still completes", async () => {
    const parent = mkdtempSync(path.join(tmp, "dest-"));
    const r = await convertAndSignal([ckpt, "--out", path.join(parent, "model")], ["SIGINT", "SIGINT"]);
    expect(r.signal, r.stderr).toBeNull();
    expect(r.code, r.stderr).toBe(130);
    expectCleanStop(r, parent);
  });

  it("the exporter does not outlive a killed CLI", async () => {
    const parent = mkdtempSync(path.join(tmp, "dest-"));
    // SIGKILL to the CLI's group: no exit handler runs, and an exporter in that group would die uncleaned.
    const r = await convertAndSignal([ckpt, "--out", path.join(parent, "model")], ["SIGKILL"]);
    expect(r.signal).toBe("SIGKILL");
    // The exporter noticed (its paused export would otherwise run on for a minute and write the model).
    expect(r.afterLastSignalMs).toBeLessThan(20_000);
    expectCleanStop(r, parent);
  });
});
