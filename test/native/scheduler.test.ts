// The C++ schedulers against every sched.* golden (PNDM, DDIM, DPM-Solver++ 2M), through the addon, and
// their "trailing" timestep spacing for every step count against the reference formula.
import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, expect, it } from "vitest";
import type { NativeSchedulerKind } from "../../src/bindings/types.js";
import { fixtureNames, repoRoot } from "../helpers/fixtures.js";
import { addon, compare, fixture, nt } from "./addon.js";

/** numpy's np.round: halves go to the even neighbour. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The reference's trailing spacing, np.round(np.arange(total, 0, -total / n)) - 1, first n values: numpy's
 * arange computes start + i * delta with delta = (start - step) - start (its second value minus its first).
 */
function trailing(total: number, n: number): number[] {
  const ratio = total / n;
  const delta = total - ratio - total;
  return Array.from({ length: n }, (_, i) => roundHalfEven(total + i * delta) - 1);
}

/** The same values computed by numpy itself (test/reference/trailing_timesteps.py, the venv's Python). */
function numpyTrailing(total: number, maxSteps: number): Record<string, number[]> {
  const python = process.env.BLIPDIFF_PYTHON ?? path.join(repoRoot, ".venv", "bin", "python");
  const script = path.join(repoRoot, "test", "reference", "trailing_timesteps.py");
  const r = spawnSync(python, [script, "--total", String(total), "--max-steps", String(maxSteps)], { encoding: "utf8", maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${script} failed (${r.status ?? r.signal}): ${r.error?.message ?? r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, number[]>;
}

for (const name of fixtureNames()) {
  describe(`schedulers (${name})`, () => {
    const f = fixture(name);
    const sched = f.json.cases.scheduler;
    const others = f.json.cases.scheduler_others;

    it("PNDM timesteps match exactly (n5, n25, n50, steps_offset 0)", () => {
      const { Scheduler } = addon();
      const pndm = new Scheduler("pndm", sched.config);
      for (const n of [5, 25, 50]) {
        const golden = Array.from(f.tensor(`sched.timesteps.n${n}`).data as BigInt64Array, Number);
        expect(pndm.setTimesteps(n)).toEqual(golden);
        expect(golden).toEqual(sched.timesteps[`n${n}`]);
      }
      const offset0 = new Scheduler("pndm", { ...sched.config, steps_offset: 0 });
      const golden0 = Array.from(f.tensor("sched.timesteps.n5_offset0").data as BigInt64Array, Number);
      expect(offset0.setTimesteps(5)).toEqual(golden0);
      expect(pndm.initNoiseSigma).toBe(1);
    });

    it("PNDM reproduces the six step() calls, history included", () => {
      const pndm = new (addon().Scheduler)("pndm", sched.config);
      pndm.setTimesteps(sched.step_sequence.num_inference_steps);
      let max = 0;
      for (const s of sched.step_sequence.steps) {
        const out = pndm.step(nt(f, s.model_output), s.timestep, nt(f, s.sample));
        const r = compare(out.data, f.f32(s.prev_sample));
        max = Math.max(max, r.max);
        expect(out.shape).toEqual(f.tensor(s.prev_sample).shape);
        expect(r.ok, `step ${s.index}: max diff ${r.max}`).toBe(true);
      }
      console.error(`[${name}] pndm: max |diff| ${max.toExponential(2)}`);
    });

    const cases: Array<[string, NativeSchedulerKind, string]> = [
      ["ddim", "ddim", "sched.ddim"],
      ["dpmpp2m", "dpmpp-2m", "sched.dpmpp2m"],
    ];
    for (const [key, kind, prefix] of cases) {
      it(`${key} reproduces its timesteps and step sequence`, () => {
        const c = others[key];
        const s = new (addon().Scheduler)(kind, c.config);
        expect(s.setTimesteps(c.steps.length)).toEqual(c.timesteps);
        expect(s.initNoiseSigma).toBe(c.init_noise_sigma);
        let max = 0;
        for (const step of c.steps) {
          const out = s.step(nt(f, `${prefix}.step${step.index}.model_output`), step.timestep, nt(f, `${prefix}.step${step.index}.sample`));
          const r = compare(out.data, f.f32(`${prefix}.step${step.index}.prev_sample`));
          max = Math.max(max, r.max);
          expect(r.ok, `${key} step ${step.index}: max diff ${r.max}`).toBe(true);
        }
        console.error(`[${name}] ${key}: max |diff| ${max.toExponential(2)}`);
      });
    }

    it("DPM-Solver++ built from the pipeline's PNDM config uses its own linspace spacing", () => {
      const s = new (addon().Scheduler)("dpmpp-2m", sched.config);
      expect(s.setTimesteps(5)).toEqual(others.dpmpp2m.timesteps);
    });

    it("DDIM built from the pipeline's PNDM config (no clip_sample) does not clamp x0: it reproduces sched.ddim.*", () => {
      // The golden DDIM ran with clip_sample false; the PNDM config does not name clip_sample at all.
      expect(sched.config.clip_sample).toBeUndefined();
      const c = others.ddim;
      const fromPndm = new (addon().Scheduler)("ddim", sched.config);
      const clipping = new (addon().Scheduler)("ddim", { ...sched.config, clip_sample: true });
      expect(fromPndm.setTimesteps(c.steps.length)).toEqual(c.timesteps);
      clipping.setTimesteps(c.steps.length);
      let clippedDiffers = false;
      for (const step of c.steps) {
        const args = [nt(f, `sched.ddim.step${step.index}.model_output`), step.timestep, nt(f, `sched.ddim.step${step.index}.sample`)] as const;
        const golden = f.f32(`sched.ddim.step${step.index}.prev_sample`);
        const r = compare(fromPndm.step(...args).data, golden);
        expect(r.ok, `ddim step ${step.index}: max diff ${r.max}`).toBe(true);
        // An explicit clip_sample: true is still honoured (and changes these steps).
        if (!compare(clipping.step(...args).data, golden).ok) clippedDiffers = true;
      }
      expect(clippedDiffers).toBe(true);
    });

    it("trailing spacing gives exactly n timesteps, as the reference formula, for every step count 1..1000", () => {
      const total: number = sched.config.num_train_timesteps;
      const numpy = numpyTrailing(total, total);
      let longer = 0;
      for (let n = 1; n <= total; n++) {
        const expected = trailing(total, n);
        // The formula above is numpy's: its first n values are bit for bit those of np.arange.
        expect(numpy[n].slice(0, n), `numpy, n = ${n}`).toEqual(expected);
        // For some n np.arange gives one value more, -1 (a timestep that does not exist): we give n.
        if (numpy[n].length > n) {
          longer++;
          expect(numpy[n].slice(n), `numpy extra, n = ${n}`).toEqual([-1]);
        }
      }
      expect(longer).toBeGreaterThan(0); // the case that made the old accumulating loop emit -1 exists

      const { Scheduler } = addon();
      const ddim = new Scheduler("ddim", { ...others.ddim.config, timestep_spacing: "trailing" });
      const dpm = new Scheduler("dpmpp-2m", { ...others.dpmpp2m.config, timestep_spacing: "trailing" });
      const pndm = new Scheduler("pndm", { ...sched.config, timestep_spacing: "trailing" });
      for (let n = 1; n <= total; n++) {
        const expected = trailing(total, n);
        expect(ddim.setTimesteps(n), `ddim, n = ${n}`).toEqual(expected);
        expect(dpm.setTimesteps(n), `dpmpp-2m, n = ${n}`).toEqual(expected);
        // PLMS repeats the second timestep: [t0, t1, t1, t2, ...] (n + 1 UNet calls for n >= 2).
        const plms = n === 1 ? expected : [expected[0], expected[1], ...expected.slice(1)];
        expect(pndm.setTimesteps(n), `pndm, n = ${n}`).toEqual(plms);
      }
    });

    it("rejects unknown kinds and bad arguments with clear errors", () => {
      const { Scheduler } = addon();
      expect(() => new Scheduler("euler" as NativeSchedulerKind, sched.config)).toThrow(/pndm, ddim, dpm-2m|pndm, ddim, dpmpp-2m/);
      const pndm = new Scheduler("pndm", sched.config);
      expect(() => pndm.setTimesteps(0)).toThrow(/steps/);
      pndm.setTimesteps(5);
      expect(() => pndm.step({ data: new Float32Array(4), shape: [1, 4] }, 801, { data: new Float32Array(3), shape: [1, 3] })).toThrow(
        /Expected/,
      );
      expect(() => pndm.step({ data: new Float32Array(4), shape: [1, 5] }, 801, { data: new Float32Array(4), shape: [1, 4] })).toThrow(
        /Expected 5 values/,
      );
    });
  });
}
