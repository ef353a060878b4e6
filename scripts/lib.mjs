// Helpers shared by the setup, build and test scripts. Progress goes to stderr.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export function log(msg) {
  process.stderr.write(`[blipdiff] ${msg}\n`);
}

export function fail(msg) {
  process.stderr.write(`[blipdiff] error: ${msg}\n`);
  process.exit(1);
}

export function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: "inherit", ...opts });
  if (r.error) fail(`could not run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`'${[cmd, ...args].join(" ")}' exited with ${r.status ?? r.signal}`);
  return r;
}

export function venvPython(dir = root) {
  return process.platform === "win32"
    ? path.join(dir, ".venv", "Scripts", "python.exe")
    : path.join(dir, ".venv", "bin", "python");
}

/** The torch CMake prefix: BLIPDIFF_LIBTORCH (a libtorch folder) or the venv's torch. */
export function torchCmakePrefix() {
  const env = process.env.BLIPDIFF_LIBTORCH;
  if (env) {
    const p = path.resolve(env);
    const cfg = path.join(p, "share", "cmake", "Torch");
    if (!existsSync(cfg)) fail(`BLIPDIFF_LIBTORCH=${env} has no share/cmake/Torch; point it at an unpacked libtorch folder.`);
    return path.join(p, "share", "cmake");
  }
  const py = venvPython();
  if (!existsSync(py)) fail("no .venv yet: run `npm run setup` (or set BLIPDIFF_LIBTORCH to a libtorch folder).");
  const r = spawnSync(py, ["-c", "import torch.utils; print(torch.utils.cmake_prefix_path)"], { encoding: "utf8" });
  if (r.status !== 0) fail(`the venv has no working torch (${(r.stderr || "").trim().split("\n").pop()}); run \`npm run setup\`.`);
  return r.stdout.trim();
}

/**
 * Decides which package index pip uses, honouring PIP_INDEX_URL/PIP_EXTRA_INDEX_URL/PIP_FIND_LINKS and
 * pip's config files. When no index-url is configured but local (file://) extra indexes are, the first
 * one becomes the index so pip does not spend minutes retrying an unreachable PyPI.
 */
export function pipIndexArgs(py) {
  if (process.env.PIP_INDEX_URL || process.env.PIP_NO_INDEX) {
    return { args: [], urls: (process.env.PIP_INDEX_URL || "").split(/\s+/).filter(Boolean), describe: `PIP_INDEX_URL=${process.env.PIP_INDEX_URL ?? "(none)"}` };
  }
  const r = spawnSync(py, ["-m", "pip", "config", "list"], { encoding: "utf8" });
  const conf = {};
  for (const line of (r.stdout || "").split("\n")) {
    const m = line.match(/^[\w:.-]*?\.?([\w-]+)='(.*)'$/);
    if (m) conf[m[1]] = conf[m[1]] ? `${conf[m[1]]} ${m[2]}` : m[2];
  }
  if (conf["index-url"]) return { args: [], urls: conf["index-url"].split(/\s+/), describe: `index ${conf["index-url"]}` };
  const extras = (process.env.PIP_EXTRA_INDEX_URL || conf["extra-index-url"] || "").split(/\s+/).filter(Boolean);
  const local = extras.filter((u) => u.startsWith("file:"));
  if (local.length > 0) {
    const usable = local.filter((u) => existsSync(fileURLToPath(u)) && readdirSync(fileURLToPath(u)).length > 0);
    if (usable.length > 0) {
      const [first, ...rest] = usable;
      return {
        args: ["--index-url", first, ...rest.flatMap((u) => ["--extra-index-url", u])],
        urls: usable,
        describe: `local index ${first}${rest.length ? ` (+${rest.length} more)` : ""}`,
      };
    }
  }
  return { args: [], urls: ["https://pypi.org/simple"], describe: "PyPI" };
}

/** Fails fast, with the fix, when no configured package index can be reached. */
export function checkIndexReachable(index) {
  if (index.urls.length === 0) return;
  for (const url of index.urls) {
    if (url.startsWith("file:")) {
      if (existsSync(fileURLToPath(url))) return;
      continue;
    }
    const probe = spawnSync(process.execPath, ["-e", `
      const c = new AbortController(); setTimeout(() => c.abort(), 10000);
      fetch(${JSON.stringify(url.replace(/\/?$/, "/"))} + "pip/", { method: "HEAD", signal: c.signal })
        .then((r) => process.exit(r.status < 500 ? 0 : 1), () => process.exit(1));`], { stdio: "ignore" });
    if (probe.status === 0) return;
  }
  fail(`no Python package index is reachable (tried ${index.urls.join(", ")}). ` +
    "Set PIP_INDEX_URL to a reachable index or mirror (or PIP_FIND_LINKS to a folder of wheels), then run `npm run setup` again.");
}

// ------------------------------------------------------------------------------------------ benchmarks

const gnuTime = /GNU/.test(spawnSync("/usr/bin/time", ["--version"], { encoding: "utf8" }).stderr ?? "") ? "/usr/bin/time" : null;

/**
 * Runs one benchmark child and resolves { json, wallS, peakRssMb, error }. Its stderr is passed through
 * (progress); its stdout must end with a JSON document (one line, or blipdiff's pretty-printed --json). Peak RSS
 * from GNU time -v where available (a temporary file in `tmpDir`), else VmHWM sampled from /proc every 100 ms.
 * `error` is null, "killed (out of memory?)", "exit N: <last stderr line>" or "no JSON on stdout".
 */
export function measureChild(cmd, args, { env = process.env, tmpDir = root } = {}) {
  const timeFile = path.join(tmpDir, `.time-${process.pid}`);
  const argv = gnuTime ? [gnuTime, "-v", "-o", timeFile, cmd, ...args] : [cmd, ...args];
  return new Promise((resolve) => {
    const start = performance.now();
    const child = spawn(argv[0], argv.slice(1), { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderrTail = "";
    let polledKb = 0;
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => {
      process.stderr.write(d); // progress stays visible; the last line names a failure
      stderrTail = (stderrTail + d).slice(-2000);
    });
    const poll = gnuTime ? null : setInterval(() => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"));
        if (m) polledKb = Math.max(polledKb, Number(m[1]));
      } catch {
        // exited between two samples
      }
    }, 100);
    child.on("close", (code, signal) => {
      const wallS = (performance.now() - start) / 1000;
      if (poll) clearInterval(poll);
      let peakKb = polledKb;
      if (gnuTime && existsSync(timeFile)) {
        const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(readFileSync(timeFile, "utf8"));
        peakKb = m ? Number(m[1]) : 0;
        rmSync(timeFile, { force: true });
      }
      let json = null;
      try {
        json = code === 0 ? JSON.parse(stdout.trim().startsWith("{\n") ? stdout : stdout.trim().split("\n").pop()) : null;
      } catch {
        // reported below
      }
      const reason = stderrTail.trim().split("\n").pop()?.replace(/^\[blipdiff\] error: /, "").slice(0, 160) ?? "";
      const error = signal === "SIGKILL" || code === 137 ? "killed (out of memory?)"
        : code !== 0 ? `exit ${code ?? signal}${reason ? `: ${reason}` : ""}` : json ? null : "no JSON on stdout";
      resolve({ json, wallS, peakRssMb: peakKb / 1024, error });
    });
  });
}
