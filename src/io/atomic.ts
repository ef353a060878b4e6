// Atomic file writes: a temporary sibling, fsync, then rename (or link, for no-clobber), so that no partial
// file is ever visible under the final name. Temporary files in flight are tracked so that an interrupt can
// remove them (removePartialFiles, called by the CLI's signal handlers).
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, linkSync, openSync, renameSync, rmSync, unlinkSync, writeSync } from "node:fs";
import path from "node:path";

/** Temporary files currently being written (removed by {@link removePartialFiles} on abort). */
const pending = new Set<string>();

export interface AtomicWriteOptions {
  /** Replace an existing file. When false, an existing file makes the write fail with EEXIST. Defaults to `true`. */
  overwrite?: boolean;
}

/** Writes all of `data` at the descriptor's current position (writeSync may write less than asked). */
export function writeAll(fd: number, data: Uint8Array): void {
  for (let off = 0; off < data.length; ) off += writeSync(fd, data, off);
}

/**
 * Creates `file` atomically from what `write` writes to a descriptor opened on a temporary sibling: the data is
 * fsynced and renamed into place only when `write` returns; on any error the temporary file is removed.
 */
export function writeFileAtomicWith(file: string, write: (fd: number) => void, options: AtomicWriteOptions = {}): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`);
  pending.add(tmp);
  try {
    const fd = openSync(tmp, "wx");
    try {
      write(fd);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (options.overwrite ?? true) renameSync(tmp, file);
    else {
      // link() fails with EEXIST instead of replacing: no-clobber without a check-then-write race.
      linkSync(tmp, file);
      unlinkSync(tmp);
    }
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  } finally {
    pending.delete(tmp);
  }
}

/** Writes `data` to `file` atomically: a temporary sibling, fsync, then rename. */
export function writeFileAtomic(file: string, data: Uint8Array, options: AtomicWriteOptions = {}): void {
  writeFileAtomicWith(file, (fd) => writeAll(fd, data), options);
}

/** Removes temporary files of writes in flight (synchronous: safe in signal handlers). */
export function removePartialFiles(): void {
  for (const f of pending) rmSync(f, { force: true });
  pending.clear();
}
