"""What repair by value and repair to the worked steps each make of the same samples.

    python -P bench/repair_steps.py [--run runs/bench-repair/verified] [--round 1] [--per-family 128]

Takes the first `--per-family` tasks of each family with worked steps from round R's tasks of a
`bench/flywheel.py` run, samples them with the model that round sampled with (the base model for
round 0, else round R-1's), as the run's sampling settings say, and repairs the same samples twice
(`sampling.repair` as configured, at least 1): by value only, and to the worked steps
(`sampling.repair_steps`; a column task's to its worked conclusion too). Per family it prints
the tasks repaired and the repaired traces that would be kept: the answer verifies, no step is
false, every worked step is stated.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import polars as pl  # noqa: E402

from thinkwheel.config import load_config  # noqa: E402
from thinkwheel.store import RunStore  # noqa: E402

FAMILIES = ("addition", "subtraction", "multiplication", "linear_equation")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench-repair/verified")
    ap.add_argument("--round", type=int, default=1)
    ap.add_argument("--per-family", type=int, default=128)
    args = ap.parse_args()

    from thinkwheel.engines.base import request_for
    from thinkwheel.engines.factory import resolve_model
    from thinkwheel.engines.hf import HFEngine
    from thinkwheel.filters.arithmetic import false_claims
    from thinkwheel.filters.steps import missing_step, task_conclusion, task_steps
    from thinkwheel.flows.steps import sampling_params, verifier_settings
    from thinkwheel.generators.repair import repaired
    from thinkwheel.verifiers import verify_frame

    store, cfg = RunStore(args.run), load_config(os.path.join(args.run, "config.yaml"))
    k = args.round
    model = resolve_model(cfg.engine, store.round_dir(k - 1) / "model" if k else None)
    if not os.path.exists(os.path.join(model, "config.json")):
        sys.exit(f"no model at {model}: round {k - 1} trained nothing")
    tasks = store.read_table(k, "tasks")
    if tasks is None:
        sys.exit(f"round {k} of {args.run} has no tasks table")
    tasks = tasks.filter(pl.col("drop_reason").is_null())
    tasks = pl.concat([tasks.filter(pl.col("family") == f).head(args.per_family) for f in FAMILIES])
    engine, params = HFEngine(model), sampling_params(cfg, k)
    reqs = [request_for(p, cfg.export.system_prompt) for p in tasks["prompt"]]
    t0 = time.time()
    outs = engine.generate(reqs, params)
    print(f"round {k}: {tasks.height} tasks x {params.n} samples with {model} in {time.time() - t0:.0f} s")
    keys = tasks.select("source", "family", "prompt").rows()
    steps, ends = [task_steps(*r) for r in keys], [task_conclusion(*r) for r in keys]
    budget = max(1, cfg.sampling.repair)
    print("| repair | family | tasks | repaired | kept (verified, no false step, steps stated) |")
    print("|---|---|---|---|---|")
    for label, worked, concl in (("by value", None, None), ("to the worked steps", steps, ends)):
        t0 = time.time()
        got = repaired(engine, reqs, outs, params, budget, worked, concl)
        seconds = time.time() - t0
        idx = sorted(got)
        cands = pl.DataFrame({
            "candidate_id": [str(i) for i in idx], "task_id": [tasks["task_id"][i] for i in idx],
            "completion": [got[i][0].text for i in idx]}, schema={
            "candidate_id": pl.Utf8, "task_id": pl.Utf8, "completion": pl.Utf8})
        verdicts = verify_frame(tasks, cands, **verifier_settings(cfg)) if idx else None
        passed = set(verdicts.filter(pl.col("passed"))["candidate_id"]) if idx else set()
        for family in FAMILIES:
            mine = [i for i in idx if tasks["family"][i] == family]
            kept = [i for i in mine if str(i) in passed and not false_claims(got[i][0].text)
                    and missing_step(got[i][0].text, steps[i]) is None]
            n = int((tasks["family"] == family).sum())
            print(f"| {label} | {family} | {n} | {len(mine)} | {len(kept)} |")
        print(f"repair {label}: {seconds:.0f} s for the {tasks.height} tasks")


if __name__ == "__main__":
    main()
