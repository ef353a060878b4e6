// Error types of the library. Only the CLI entry maps them to exit codes.

/** The operation was cancelled through an AbortSignal (or SIGINT in the CLI). */
export class AbortError extends Error {
  override readonly name = "AbortError";
  readonly code = "ABORT_ERR";
  constructor(message = "The operation was aborted") {
    super(message);
  }
}

/** A model folder that is missing, incomplete or of another format. */
export class ModelError extends Error {
  override readonly name = "ModelError";
}

/** An input file (image, embedding) that cannot be used. */
export class InputError extends Error {
  override readonly name = "InputError";
}

/** Describes a value for validation messages: strings quoted, numbers as written, objects by type. */
export function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  return `a value of type ${typeof value}`;
}

/** `Expected <what> for <name> but received <value>` (sharp's wording). */
export function invalid(what: string, name: string, value: unknown, kind: "type" | "range" = "range"): Error {
  const message = `Expected ${what} for ${name} but received ${describe(value)}`;
  return kind === "type" ? new TypeError(message) : new RangeError(message);
}

/** The message of anything thrown. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
