// The CLI entry: builds the commander program, maps errors to exit codes (0 ok, 1 error, 2 usage,
// 130 aborted) and turns SIGINT into an abort of the running generation.
import chalk from "chalk";
import { Command, CommanderError } from "commander";
import { readFileSync } from "node:fs";
import path from "node:path";
import { packageRoot } from "../bindings/index.js";
import { messageOf } from "../errors.js";
import { removePartialFiles } from "../image/encode.js";
import { ChildExit, convertCommand } from "./convert.js";
import { encodeCommand } from "./encode.js";
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
  program.addCommand(encodeCommand());
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

export async function main(argv: string[] = process.argv): Promise<number> {
  const controller = new AbortController();
  let interrupted = false;
  const onSigint = (): void => {
    removePartialFiles();
    if (interrupted) process.exit(EXIT.aborted);
    interrupted = true;
    process.stderr.write("\ninterrupted: stopping...\n");
    controller.abort();
    // Phases that cannot be cancelled (model loading) must not keep the user waiting.
    setTimeout(() => {
      removePartialFiles();
      process.exit(EXIT.aborted);
    }, 10_000).unref();
  };
  process.on("SIGINT", onSigint);
  try {
    await buildProgram(controller.signal).parseAsync(argv);
    return interrupted ? EXIT.aborted : EXIT.ok;
  } catch (err) {
    removePartialFiles();
    if (err instanceof ChildExit) return err.code;
    if (interrupted) return EXIT.aborted;
    if (err instanceof CommanderError) return exitCodeFor(err); // commander already printed it
    const code = exitCodeFor(err);
    if (code !== EXIT.aborted) {
      const text = messageOf(err).split("\n")[0];
      process.stderr.write(`${process.stderr.isTTY && !process.env.CI ? chalk.red("error:") : "error:"} ${text}\n`);
      if (process.env.BLIPDIFF_DEBUG && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    } else process.stderr.write("aborted\n");
    return code;
  } finally {
    process.off("SIGINT", onSigint);
  }
}

const code = await main();
process.exitCode = code;
