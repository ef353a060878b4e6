// The setup script fails fast, with the fix, when no Python package index is reachable.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot } from "../helpers/fixtures.js";

describe("setup (scripts/setup.mjs)", () => {
  it("stops at once with a clear message when PIP_INDEX_URL is unreachable", () => {
    const start = Date.now();
    const r = spawnSync(process.execPath, [path.join(repoRoot, "scripts", "setup.mjs"), "python"], {
      cwd: repoRoot,
      encoding: "utf8",
      // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
      env: { ...process.env, PIP_INDEX_URL: "http://127.0.0.1:9/simple", BLIPDIFF_SKIP_SETUP: "" },
      timeout: 60_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no Python package index is reachable \(tried http:\/\/127\.0\.0\.1:9\/simple\)/);
    expect(r.stderr).toMatch(/PIP_INDEX_URL/);
    expect(Date.now() - start).toBeLessThan(30_000);
  });
});
