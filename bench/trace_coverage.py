"""What a model's own verified traces cover, against the tasks it was asked: addition carries,
subtraction borrows and negative results.

    python -P bench/trace_coverage.py RUN_DIR [--round K]

Reads a finished run (no model runs). The traces are the SFT set that trained round K's model
(with `strategy: from_base`, every round's curated set up to K); the tasks are the kept tasks
of the same rounds. A units carry is `a % 10 + b % 10 >= 10`; a borrow is `a % 10 < b % 10`
with `a >= b`. If the traces cover these cases far less often than the tasks do, the model is
learning mostly what it already solves.
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

_OPS = re.compile(r"(-?\d+) [+-] (-?\d+)")


def operands(prompt: str) -> tuple[int, int]:
    m = _OPS.search(prompt)
    if m is None:
        raise ValueError(f"no `a + b` / `a - b` in {prompt!r}")
    return int(m[1]), int(m[2])


def coverage(store: RunStore, k: int) -> list[str]:
    rounds = range(k + 1)
    tasks = pl.concat([store.read_table(r, "tasks") for r in rounds], how="diagonal_relaxed")
    # a task drawn again in a later round has the same content-hash id: count it once
    tasks = (
        tasks.filter(pl.col("drop_reason").is_null())
        .select("task_id", "family", "prompt")
        .unique("task_id", keep="first", maintain_order=True)
    )
    sft = pl.concat(
        [pl.read_parquet(store.round_dir(r) / "curated" / "sft.parquet").select("task_id") for r in rounds]
    ).join(tasks, on="task_id")
    lines = []
    add_t = [operands(p) for p in tasks.filter(pl.col("family") == "addition")["prompt"]]
    add_s = [operands(p) for p in sft.filter(pl.col("family") == "addition")["prompt"]]
    if add_t and add_s:
        carry = [(a, b) for a, b in add_s if a % 10 + b % 10 >= 10]
        lines.append(
            f"addition: {len(add_s)} traces, {len(carry) / len(add_s):.0%} with a units carry "
            f"(tasks: {sum(a % 10 + b % 10 >= 10 for a, b in add_t) / len(add_t):.0%}); of the "
            f"carrying traces {sum(b < 10 for _, b in carry)} add a one-digit number, "
            f"{sum(a >= 10 and b >= 10 for a, b in carry)} add two two-digit numbers"
        )
    sub_t = [operands(p) for p in tasks.filter(pl.col("family") == "subtraction")["prompt"]]
    sub_s = [operands(p) for p in sft.filter(pl.col("family") == "subtraction")["prompt"]]
    if sub_t and sub_s:

        def shares(pairs: list[tuple[int, int]]) -> str:
            borrow = sum(a >= b and a % 10 < b % 10 for a, b in pairs) / len(pairs)
            return f"{borrow:.0%} borrow, {sum(a < b for a, b in pairs) / len(pairs):.0%} negative"

        lines.append(f"subtraction: {len(sub_s)} traces, {shares(sub_s)} (tasks: {shares(sub_t)})")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a finished run directory")
    ap.add_argument("--round", type=int, default=None, help="default: the last trained round")
    args = ap.parse_args()
    store = RunStore(args.run)
    k = max(store.rounds()) if args.round is None else args.round
    print(f"the SFT set that trained round {k}'s model:")
    for line in coverage(store, k):
        print("  " + line)


if __name__ == "__main__":
    main()
