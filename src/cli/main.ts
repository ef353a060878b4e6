// The CLI entry: builds the commander program, maps errors to exit codes (0 ok, 1 error, 2 usage,
// 130 aborted) and turns SIGINT into an abort of the running command (generate, encode, finetune, a load).
import chalk from "chalk";
import { Command, CommanderError } from "commander";
import { readFileSync } from "node:fs";
import path from "node:path";
import { loadedAddon, packageRoot } from "../bindings/index.js";
import { messageOf } from "../errors.js";
import { removePartialFiles } from "../io/atomic.js";
import { blendCommand } from "./blend.js";
import { ChildExit, convertCommand } from "./convert.js";
import { editCommand } from "./edit.js";
import { encodeCommand } from "./encode.js";
import { finetuneCommand } from "./finetune.js";
import { EXIT, exitCodeFor } from "./errors.js";
import { generateCommand } from "./generate.js";
import { infoCommand } from "./info.js";
import { ENV_HELP } from "./shared.js";

function version(): string {
  try {
    return (JSON.parse(readFileSync(path.join(packageRoot, "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "unknown";
  }
}

export function buildProgram(signal: AbortSignal): Command {
  const program = new Command("blipdiff")
    .description("subject-driven image generation with BLIP-Diffusion (TorchScript on libtorch)")
    .version(version())
    .addHelpText("after", ENV_HELP);
  program.addCommand(generateCommand(signal));
  program.addCommand(encodeCommand(signal));
  program.addCommand(finetuneCommand(signal));
  program.addCommand(editCommand(signal));
  program.addCommand(blendCommand());
  program.addCommand(infoCommand());
  program.addCommand(convertCommand(signal));
  const configure = (cmd: Command): void => {
    cmd.exitOverride();
    cmd.configureOutput({ writeErr: (s) => process.stderr.write(s), outputError: (s, write) => write(s) });
    cmd.commands.forEach(configure);
  };
  configure(program);
  return program;
}

/** How long the first Ctrl-C waits for the running step or load to stop before the process ends anyway. */
const GRACE_MS = 5_000;

/**
 * Ends the process now with `code`, after removing partial files. process.exit() would join the thread pool, and a
 * native step or model load running there would keep the process alive (for minutes at large sizes), deaf to
 * further signals; the addon's exitNow() calls _exit() instead. Without the addon loaded no native work can be
 * running, and process.exit is safe.
 */
function exitAtOnce(code: number): never {
  removePartialFiles();
  const addon = loadedAddon();
  if (addon) addon.exitNow(code);
  process.exit(code);
}

export async function main(argv: string[] = process.argv): Promise<number> {
  const controller = new AbortController();
  let interrupted = false;
  let command = "";
  const onSignal = (sig: NodeJS.Signals): void => {
    removePartialFiles();
    const code = sig === "SIGTERM" ? EXIT.terminated : EXIT.aborted;
    if (interrupted || sig === "SIGTERM") {
      if (!interrupted) controller.abort();
      exitAtOnce(code);
    }
    interrupted = true;
    controller.abort();
    if (command === "convert") return; // the exporter cleans up and prints its own single line
    process.stderr.write(`\ninterrupted: stopping (press Ctrl-C again to quit at once)\n`);
    setTimeout(() => exitAtOnce(EXIT.aborted), GRACE_MS).unref();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    const program = buildProgram(controller.signal);
    program.hook("preAction", (_root, action) => {
      command = action.name();
    });
    await program.parseAsync(argv);
    // convert's exporter decides: a Ctrl-C during its final rename completes the export (exit 0).
    return interrupted && command !== "convert" ? EXIT.aborted : EXIT.ok;
  } catch (err) {
    removePartialFiles();
    if (err instanceof ChildExit) return err.code;
    if (interrupted) return EXIT.aborted;
    if (err instanceof CommanderError) return exitCodeFor(err); // commander already printed it
    const code = exitCodeFor(err);
    if (code !== EXIT.aborted) {
      // The whole message: native errors carry their root cause on later lines (indented by the addon).
      const text = messageOf(err).trimEnd();
      process.stderr.write(`${process.stderr.isTTY && !process.env.CI ? chalk.red("error:") : "error:"} ${text}\n`);
      if (process.env.BLIPDIFF_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    } else process.stderr.write("aborted\n");
    return code;
  }
  // The handlers stay installed until the process has exited: a Ctrl-C during teardown still exits 130 cleanly.
}

const code = await main();
process.exitCode = code;
