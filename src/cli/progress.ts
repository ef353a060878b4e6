// Progress on stderr: an ora spinner on a TTY, plain lines when stderr is not a TTY or CI is set,
// nothing with --quiet. stdout is reserved for results.
import chalk from "chalk";
import ora, { type Ora } from "ora";
import type { NativeProgress } from "../bindings/types.js";

function isDebug(): boolean {
  const v = process.env.BLIPDIFF_DEBUG;
  return v !== undefined && v !== "" && v !== "0";
}

export class Progress {
  private spinner?: Ora;
  private readonly fancy: boolean;
  private lastLine = "";
  private readonly warned = new Set<string>();

  constructor(private readonly quiet: boolean) {
    // A pty without a size (columns 0) sends ora into an endless redraw: plain lines there.
    this.fancy = !quiet && process.stderr.isTTY === true && (process.stderr.columns ?? 0) > 0 && !process.env.CI;
  }

  /** Starts (or renames) the current phase. */
  phase(text: string): void {
    if (this.quiet) return;
    if (this.fancy) {
      if (this.spinner) this.spinner.text = text;
      else this.spinner = ora({ text, stream: process.stderr, discardStdin: false }).start();
    } else this.line(text);
  }

  /** Native per-step progress. */
  step(p: NativeProgress, numImages: number): void {
    const img = numImages > 1 ? `image ${p.image + 1}/${numImages}, ` : "";
    const text = p.phase === "denoise" ? `${img}denoising step ${p.step}/${p.total}` : `${img}${p.phase === "text" ? "encoding text" : "decoding"}`;
    this.phase(text);
  }

  succeed(text: string): void {
    if (this.quiet) return;
    if (this.spinner) {
      this.spinner.succeed(text);
      this.spinner = undefined;
    } else this.line(text);
  }

  /**
   * A warning on stderr: each distinct text once, none with --quiet; BLIPDIFF_DEBUG=1 shows every occurrence,
   * even with --quiet (libtorch's own diagnostics arrive here too: see README, "stderr").
   */
  warn(text: string): void {
    const debug = isDebug();
    if (!debug && (this.quiet || this.warned.has(text))) return;
    this.warned.add(text);
    this.stop();
    process.stderr.write(`${this.fancy ? chalk.yellow("warning:") : "warning:"} ${text}\n`);
  }

  stop(): void {
    this.spinner?.stop();
    this.spinner = undefined;
  }

  private line(text: string): void {
    if (text === this.lastLine) return;
    this.lastLine = text;
    process.stderr.write(`${text}\n`);
  }
}
