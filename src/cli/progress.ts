// Progress on stderr: an ora spinner on a TTY, plain lines when stderr is not a TTY or CI is set,
// nothing with --quiet. stdout is reserved for results.
import chalk from "chalk";
import ora, { type Ora } from "ora";
import type { NativeEditProgress, NativeProgress } from "../bindings/types.js";

function isDebug(): boolean {
  const v = process.env.BLIPDIFF_DEBUG;
  return v !== undefined && v !== "" && v !== "0";
}

export class Progress {
  private spinner?: Ora;
  private readonly fancy: boolean;
  private lastLine = "";
  private readonly warned = new Set<string>();
  private firstStepAt?: { at: number; step: number };

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

  /** Editing progress: the photo's inversion and the edit are separate phases, each with its steps. */
  editStep(p: NativeEditProgress): void {
    const text =
      p.phase === "inversion"
        ? `inverting the photo: step ${p.step}/${p.total}`
        : p.phase === "edit"
          ? `editing step ${p.step}/${p.total}`
          : p.phase === "text"
            ? "encoding text"
            : p.phase === "encode"
              ? "encoding the photo"
              : "decoding";
    this.phase(text);
  }

  /** Fine-tuning progress: the step, its loss and the time left (from the mean step time since the first step). */
  trainStep(p: { step: number; total: number; loss: number }): void {
    const now = performance.now();
    if (p.step <= 1 || this.firstStepAt === undefined) this.firstStepAt = { at: now, step: p.step };
    const done = p.step - this.firstStepAt.step;
   const eta = done > 0 ? `, ETA ${formatDuration(((now - this.firstStepAt.at) / done) * (p.total - p.step))}` : "";
    this.phase(`fine-tuning step ${p.step}/${p.total}, loss ${formatLoss(p.loss)}${p.step < p.total ? eta : ""}`);
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

/** A loss with 4 significant digits ("0.1234", "1.106", "3.2e-05"). */
export function formatLoss(loss: number): string {
  return Number.isFinite(loss) ? String(Number(loss.toPrecision(4))) : String(loss);
}

/** "0:07", "1:05:09": minutes and seconds, hours when there are any. */
export function formatDuration(ms: number): string {
  const total = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = String(total % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}
