// The C++ schedulers against every sched.* golden (PNDM, DDIM, DPM-Solver++ 2M), through the addon.
import { describe, expect, it } from "vitest";
import type { NativeSchedulerKind } from "../../src/bindings/types.js";
import { fixtureNames } from "../helpers/fixtures.js";
import { addon, compare, fixture, nt } from "./addon.js";

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
