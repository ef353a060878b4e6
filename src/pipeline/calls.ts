// How the library calls the addon: AbortSignal wiring, the caller's stack on native errors, progress callbacks
// that cannot break a run, and what the runners outside pipeline.ts get from the pipeline object. Shared by
// generate/encode (pipeline.ts), finetune (finetune.ts) and edit (edit.ts).
import type { NativeDType, NativePipeline } from "../bindings/types.js";
import { AbortError } from "../errors.js";
import type { ImageSource } from "../image/decode.js";
import type { RawImage } from "../image/resample.js";
import type { SubjectEmbedding } from "./embedding.js";
import type { ModelManifest } from "./manifest.js";
import type { SubjectCrop } from "./preprocess.js";

/** What a run outside pipeline.ts (finetune, edit) needs from the loaded pipeline object. */
export interface PipelineHost {
  native: NativePipeline;
  manifest: ModelManifest;
  device: string;
  dtype: NativeDType;
  /** Decodes the subject's pictures (checking `signal` between them) and names them. */
  decode(images: ImageSource[], maxPixels: number | undefined, signal?: AbortSignal): Promise<{ images: RawImage[]; names: string[] }>;
  /** The subject embedding of decoded pictures (as encodeSubject). */
  encode(images: RawImage[], names: string[], subject: string, crop: SubjectCrop, signal?: AbortSignal): Promise<SubjectEmbedding>;
  /** The native warnings of the last call (handed to onWarning too). */
  nativeWarnings(): string[];
}

/** Rethrows a native error with the caller's stack (the native stack says nothing useful). */
export function withCallerStack(err: unknown, caller: Error): Error {
  if (!(err instanceof Error)) return new Error(String(err));
  const frames = (caller.stack ?? "").split("\n").slice(1).join("\n");
  err.stack = `${err.name}: ${err.message}\n${frames}`;
  return err;
}

export function isAbort(err: unknown): boolean {
  return err instanceof Error && ((err as { code?: string }).code === "ABORT_ERR" || err.name === "AbortError");
}

export function asArray<T>(v: T | T[]): T[] {
  return Array.isArray(v) ? v : [v];
}

/** Runs a native call with `signal` wired to the pipeline's abort(); an abort rejects with an AbortError. */
export async function abortable<T>(native: NativePipeline, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  if (signal?.aborted) throw new AbortError();
  const abort = (): void => native.abort();
  signal?.addEventListener("abort", abort, { once: true });
  try {
    return await fn();
  } catch (err) {
    if (isAbort(err) || signal?.aborted) throw new AbortError();
    throw err;
  } finally {
    signal?.removeEventListener("abort", abort);
  }
}

/** A progress callback whose exceptions are swallowed: a user's callback must not break the run. */
export function guardProgress<P>(onProgress: ((p: P) => void) | undefined): ((p: P) => void) | undefined {
  if (!onProgress) return undefined;
  return (p: P): void => {
    try {
      onProgress(p);
    } catch {
      // ignored by design
    }
  };
}
