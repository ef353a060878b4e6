// Builds the native addon (native/ -> native/build/Release/blipdiff.node) with cmake-js against the
// venv's torch (or BLIPDIFF_LIBTORCH). Extra arguments go to cmake-js (e.g. --CDBLIPDIFF_BUILD_TOOLS=ON).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fail, log, root, torchCmakePrefix } from "./lib.mjs";

function have(cmd, args = ["--version"]) {
  const r = spawnSync(cmd, args, { stdio: "ignore" });
  return !r.error && r.status === 0;
}

const cmakeJs = path.join(root, "node_modules", "cmake-js", "bin", "cmake-js");
if (!existsSync(cmakeJs)) fail("node_modules/cmake-js is missing: run `npm install` first.");
if (!have("cmake")) {
  fail("cmake was not found on PATH. Install CMake >= 3.18 (e.g. `apt-get install cmake`, `brew install cmake` or `pip install cmake`).");
}
const cxx = process.env.CXX || "c++";
if (!have(cxx) && !have("g++") && !have("clang++")) {
  fail("no C++ compiler was found (tried $CXX, c++, g++, clang++). Install one with C++20 support (e.g. `apt-get install g++`, Xcode command line tools).");
}

const prefix = torchCmakePrefix();
const jobs = process.env.BLIPDIFF_JOBS ?? "2";
const args = [
  cmakeJs,
  "build",
  "--directory", path.join(root, "native"),
  "--out", path.join(root, "native", "build"),
  "--config", "Release",
  "--parallel", jobs,
  `--CDCMAKE_PREFIX_PATH=${prefix}`,
  "--CDCMAKE_BUILD_TYPE=Release",
  ...process.argv.slice(2),
];
log(`building the native addon against ${prefix} (-j${jobs})`);
const r = spawnSync(process.execPath, args, { stdio: "inherit", cwd: root });
if (r.error) fail(`could not run cmake-js: ${r.error.message}`);
if (r.status !== 0) fail(`the native build failed (cmake-js exited with ${r.status ?? r.signal}); see the compiler output above.`);
const out = path.join(root, "native", "build", "Release", "blipdiff.node");
if (!existsSync(out)) fail(`the build finished but ${path.relative(root, out)} is missing.`);
log(`built ${path.relative(root, out)}`);
