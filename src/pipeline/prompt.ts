// Prompt building exactly as the reference's `_build_prompt` (diffusers BlipDiffusionPipeline).
import { invalid } from "../errors.js";

/**
 * `", ".join([f"a {target} {prompt.strip()}"] * int(promptStrength * promptReps))`.
 * The count is truncated toward zero like Python's `int()` (0.33 * 20 gives 6).
 */
export function buildPrompt(prompt: string, targetSubject: string, promptStrength = 1, promptReps = 20): string {
  if (typeof prompt !== "string") throw invalid("a string", "prompt", prompt, "type");
  if (typeof targetSubject !== "string") throw invalid("a string", "targetSubject", targetSubject, "type");
  if (typeof promptStrength !== "number" || !Number.isFinite(promptStrength) || promptStrength < 0)
    throw invalid("a finite number >= 0", "promptStrength", promptStrength);
  if (!Number.isInteger(promptReps) || promptReps < 0) throw invalid("an integer >= 0", "promptReps", promptReps);
  const reps = Math.trunc(promptStrength * promptReps);
  // Python's str.strip() removes Unicode whitespace at both ends; JS trim() uses the same class for practical input.
  const one = `a ${targetSubject} ${prompt.trim()}`;
  return new Array<string>(reps).fill(one).join(", ");
}
