"""Reference for "trailing" timestep spacing: the reference schedulers' formula, run with numpy.

For each step count n in 1..N it prints `np.round(np.arange(total, 0, -total / n)) - 1` (what the
reference's DDIM, DPM-Solver and PNDM schedulers compute for timestep_spacing "trailing", before PNDM's
reordering), as one JSON object {"<n>": [timesteps, descending]} on stdout. For some n, float error
gives np.arange one value more (the last one, -1); the runtime gives exactly n timesteps, so the tests
compare with the first n values and check that any extra one is that -1.

    python test/reference/trailing_timesteps.py [--total 1000] [--max-steps 1000]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--total", type=int, default=1000, help="num_train_timesteps")
    ap.add_argument("--max-steps", type=int, default=1000)
    args = ap.parse_args()
    out = {}
    for n in range(1, args.max_steps + 1):
        ts = np.round(np.arange(args.total, 0, -args.total / n)).astype(np.int64) - 1
        out[str(n)] = [int(t) for t in ts]
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
