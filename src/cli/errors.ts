// CLI error classification: only src/cli/main.ts turns these into exit codes.
import { CommanderError } from "commander";
import { AbortError } from "../errors.js";

/** A bad command line (exit code 2). */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

export const EXIT = { ok: 0, error: 1, usage: 2, aborted: 130, terminated: 143 } as const;

/** Runs a validation step, turning its TypeError/RangeError into a usage error. */
export function asUsage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof TypeError || err instanceof RangeError) throw new UsageError(err.message);
    throw err;
  }
}

/** Awaits a step, turning its TypeError/RangeError into a usage error. */
export async function asUsageAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof TypeError || err instanceof RangeError) throw new UsageError(err.message);
    throw err;
  }
}

export function exitCodeFor(err: unknown): number {
  if (err instanceof AbortError || (err instanceof Error && err.name === "AbortError")) return EXIT.aborted;
  if (err instanceof UsageError) return EXIT.usage;
  if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
  return EXIT.error;
}
