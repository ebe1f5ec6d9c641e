"""How many kept column-arithmetic traces follow the algorithm, the model's own against repaired?

    python -P bench/repair_traces.py [--run runs/bench-repair/verified]

A repaired trace (`sampling.repair`) states no false step and reaches the verified answer, but
its steps need not lead there: if the checker supplied the conclusion (`10-3=7, 5-0=5. So 90 - 3
= 87.`) the steps are true and the answer is not theirs. For every round of a `bench/flywheel.py`
run, this prints the kept addition, subtraction and multiplication traces, the model's own and
the repaired ones, and the share whose steps are exactly the column algorithm in the
generator's format (`procedural.column_steps`: the task's digits, units first, each carry or
borrow where it falls). A run made before a multiplication's carry had a step of its own
(filters.steps.STEPS_VERSION 3) shows its multiplication traces at 0%: they fuse it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import polars as pl  # noqa: E402

from thinkwheel.generators.procedural import column_steps  # noqa: E402
from thinkwheel.generators.repair import repairs_made  # noqa: E402
from thinkwheel.store import RunStore  # noqa: E402

FAMILIES = ("addition", "subtraction", "multiplication")


def follows_algorithm(family: str, prompt: str, reasoning: str) -> bool:
    """The reasoning's steps, before its `So ...` conclusion, are the column algorithm's."""
    a, b = (int(x) for x in re.findall(r"\d+", prompt)[-2:])
    steps = column_steps(family, a, b)
    body = reasoning.rsplit(". So", 1)[0]
    return steps is not None and re.sub(r"\s+", "", body) == re.sub(r"\s+", "", steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench-repair/verified")
    args = ap.parse_args()
    store = RunStore(args.run)
    print("| round | family | own kept | own, column algorithm | repaired kept | repaired, column algorithm |")
    print("|---|---|---|---|---|---|")
    for k in store.rounds():
        kept = store.read_table(k, "filtered").filter(pl.col("drop_reason").is_null())
        rows = (store.read_table(k, "candidates")
                .join(kept.select("candidate_id"), on="candidate_id")
                .join(store.read_table(k, "tasks").select("task_id", "family", "prompt"), on="task_id")
                .filter(pl.col("family").is_in(FAMILIES))
                .with_columns(repaired=repairs_made().gt(0)))
        for family in FAMILIES:
            cells = []
            for repaired in (False, True):
                part = rows.filter((pl.col("family") == family) & (pl.col("repaired") == repaired))
                ok = sum(follows_algorithm(family, r["prompt"], r["reasoning"] or "")
                         for r in part.iter_rows(named=True))
                cells += [str(part.height), f"{ok / part.height:.0%}" if part.height else "-"]
            print(f"| {k} | {family} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
