// Loads the native addon once. BLIPDIFF_ADDON overrides the path; otherwise
// <package root>/native/build/Release/blipdiff.node.
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { messageOf } from "../errors.js";
import type { NativeAddon } from "./types.js";

export type * from "./types.js";

/** The package root (this file is src/bindings/index.ts or dist/bindings/index.js). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The addon is not built or cannot be loaded. */
export class AddonNotFoundError extends Error {
  override readonly name = "AddonNotFoundError";
}

let cached: NativeAddon | undefined;

/** Where the addon is looked for. */
export function addonPath(): string {
  const override = process.env.BLIPDIFF_ADDON;
  return override ? path.resolve(override) : path.join(packageRoot, "native", "build", "Release", "blipdiff.node");
}

/** The addon if this process has loaded it already (never loads it). */
export function loadedAddon(): NativeAddon | undefined {
  return cached;
}

/** Loads (once) and returns the native addon; one clear error when it is missing. */
export function loadAddon(): NativeAddon {
  if (cached) return cached;
  const file = addonPath();
  if (!existsSync(file)) {
    const where = process.env.BLIPDIFF_ADDON ? ` (BLIPDIFF_ADDON=${process.env.BLIPDIFF_ADDON})` : "";
    throw new AddonNotFoundError(`the native addon is not built: run \`npm run build:native\` (looked for ${file}${where})`);
  }
  try {
    cached = createRequire(import.meta.url)(file) as NativeAddon;
  } catch (err) {
    throw new AddonNotFoundError(
      `the native addon at ${file} cannot be loaded: ${messageOf(err).split("\n")[0]} (rebuild it with \`npm run build:native\`)`,
    );
  }
  return cached;
}
