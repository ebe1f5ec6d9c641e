"""How many kept addition traces follow the column algorithm, the model's own against repaired?

    python -P bench/repair_traces.py [--run runs/bench-repair/verified]

A repaired trace (`sampling.repair`) states no false step and reaches the verified answer, but
the checker may have supplied its summary (`0+0=0, 0+6=6. So 40 + 60 = 100.`): true steps that
do not add up to the answer. For every round of a `bench/flywheel.py` run, this prints the kept
addition traces and the share whose steps are the column algorithm in the bundled model's
format: one `x+y=s` per column, units first, the task's digits, `+1` exactly where the column
before reached 10.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import polars as pl  # noqa: E402

from thinkwheel.store import RunStore  # noqa: E402

_STEP = re.compile(r"(\d+)\+(\d+)(\+1)?=(\d+)")


def column_steps(prompt: str, completion: str) -> bool:
    a, b = (int(x) for x in re.findall(r"\d+", prompt)[:2])
    steps = _STEP.findall(completion.split("So")[0].replace(" ", ""))
    if len(steps) != max(len(str(a)), len(str(b))):
        return False
    carry = False
    for i, (x, y, plus_one, s) in enumerate(steps):
        if {int(x), int(y)} != {a // 10**i % 10, b // 10**i % 10} or bool(plus_one) != carry:
            return False
        carry = int(s) >= 10
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/bench-repair/verified")
    args = ap.parse_args()
    store = RunStore(args.run)
    for k in store.rounds():
        kept = store.read_table(k, "filtered").filter(pl.col("drop_reason").is_null())
        rows = (store.read_table(k, "candidates")
                .join(kept.select("candidate_id"), on="candidate_id")
                .join(store.read_table(k, "tasks").select("task_id", "family", "prompt"), on="task_id")
                .filter(pl.col("family") == "addition"))
        for repaired in (False, True):
            part = rows.filter(pl.col("gen_params").str.contains('"repairs"', literal=True) == repaired)
            if part.height:
                ok = sum(column_steps(r["prompt"], r["completion"]) for r in part.iter_rows(named=True))
                print(f"round {k}: {'repaired' if repaired else 'own'} addition traces kept: "
                      f"{part.height}, column algorithm: {ok} ({ok / part.height:.0%})")


if __name__ == "__main__":
    main()
