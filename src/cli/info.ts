// blipdiff info: the addon build (torch, CUDA, devices) and, with --model, the manifest summary.
import { Command } from "commander";
import { addonPath, loadAddon } from "../bindings/index.js";
import { readManifest, summarizeManifest } from "../pipeline/manifest.js";
import { ENV_HELP } from "./shared.js";

export function infoCommand(): Command {
  return new Command("info")
    .description("show the native addon build and, with --model, a model folder's manifest")
    .option("--model <dir>", "exported model folder to summarize")
    .option("--json", "print one JSON document")
    .addHelpText("after", ENV_HELP)
    .action((f: { model?: string; json?: boolean }) => {
      const addon = loadAddon();
      const build = { addon: addonPath(), ...addon.buildInfo() };
      const model = f.model ? summarizeManifest(readManifest(f.model)) : undefined;
      if (f.json) {
        process.stdout.write(`${JSON.stringify({ build, ...(model ? { model } : {}) }, null, 2)}\n`);
        return;
      }
      const lines = [
        `addon:      ${build.addon}`,
        `torch:      ${build.torchVersion}`,
        `cuda:       ${build.cudaCompiled ? (build.cudaAvailable ? `available, ${build.cudaDeviceCount} device(s)` : "compiled, no device") : "not compiled (CPU build)"}`,
        `devices:    ${build.devices.join(", ")}`,
        `threads:    ${build.numThreads}`,
      ];
      if (model) {
        lines.push("", `model:      ${String(model.folder)}`);
        for (const [k, v] of Object.entries(model)) if (k !== "folder") lines.push(`  ${k}: ${typeof v === "object" ? JSON.stringify(v) : String(v)}`);
      }
      process.stdout.write(`${lines.join("\n")}\n`);
    });
}
