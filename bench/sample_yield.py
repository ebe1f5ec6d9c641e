"""Where a sampling budget finds the most new solved tasks: spread thin, or resampling failures.

    python -P bench/sample_yield.py RUN_DIR [--family addition,subtraction,...]

Reads a finished run that drew several samples per task (n >= 4; e.g. `bench/flywheel.py`
with `sampling: {n: 8}`) and re-reads it as if fewer had been drawn. No model runs: every
number is counted from the run's candidates and verdicts. "Clean" is the SFT rule: verified and
no false arithmetic in the reasoning.

- Spread thin: distinct tasks with a clean sample per 3,840 samples when each task gets 1, 2,
  4 ... samples (a level-1 task has one correct trace and reasoning-path dedup keeps one, so
  this is the size of the SFT set the budget buys).
- Resample failures (DART-Math's difficulty-aware rejection sampling): of the tasks with no
  clean sample among their first 2, how many the remaining n-2 samples rescue, per 100 extra
  samples, next to the new tasks solved per 100 samples spent on fresh tasks at 2 per task.
"""

from __future__ import annotations

import argparse
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import polars as pl  # noqa: E402

from thinkwheel.filters.arithmetic import false_claims  # noqa: E402
from thinkwheel.store import RunStore  # noqa: E402

BUDGET = 3840


def clean_samples(store: RunStore, k: int) -> pl.DataFrame:
    """One row per candidate: task_id, family, sample_idx, clean."""
    tasks = store.read_table(k, "tasks").select("task_id", "family")
    return (
        store.read_table(k, "candidates")
        .join(store.read_table(k, "verdicts").select("candidate_id", "passed"), on="candidate_id")
        .join(tasks, on="task_id")
        .with_columns(
            clean=pl.col("passed").fill_null(False)
            & pl.col("reasoning").map_elements(lambda s: not false_claims(s), return_dtype=pl.Boolean)
        )
        .select("task_id", "family", "sample_idx", "clean")
    )


def spread_thin(d: pl.DataFrame, n: int) -> pl.DataFrame:
    """family -> distinct tasks solved per BUDGET samples at n samples per task."""
    solved = d.filter(pl.col("sample_idx") < n).group_by("family", "task_id").agg(pl.col("clean").any())
    return solved.group_by("family").agg(
        (pl.col("clean").mean() / n * BUDGET).round(0).cast(pl.Int64).alias(f"{n} per task")
    )


def resample_failures(d: pl.DataFrame) -> pl.DataFrame:
    """family -> fresh-task yield at 2 per task vs rescue yield of the remaining samples."""
    per_task = d.sort("sample_idx").group_by("family", "task_id").agg(
        first2=pl.col("clean").head(2).sum(),
        rest=pl.col("clean").slice(2).any(),
        extra=pl.col("clean").slice(2).len(),
    )
    failed = pl.col("first2") == 0
    return per_task.group_by("family").agg(
        tasks=pl.len(),
        failed_first_2=failed.sum(),
        rescued=(failed & pl.col("rest")).sum(),
        fresh_per_100=((pl.col("first2") > 0).sum() / (2 * pl.len()) * 100).round(1),
        rescued_per_100=((failed & pl.col("rest")).sum() / pl.col("extra").filter(failed).sum() * 100)
        .round(1),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a run directory with n >= 4 samples per task")
    ap.add_argument("--family", default="", help="comma-separated families (default: all)")
    args = ap.parse_args()
    store = RunStore(args.run)
    pl.Config.set_tbl_rows(50)
    pl.Config.set_tbl_hide_dataframe_shape(True)
    for k in store.rounds():
        d = clean_samples(store, k)
        if args.family:
            d = d.filter(pl.col("family").is_in(args.family.split(",")))
        n = int(d["sample_idx"].max()) + 1
        if n < 4:
            sys.exit(f"{args.run} round {k} has {n} samples per task; this needs at least 4")
        counts = [c for c in (1, 2, 4, 8, 16, 32) if c <= n]
        thin = spread_thin(d, counts[0])
        for c in counts[1:]:
            thin = thin.join(spread_thin(d, c), on="family")
        print(f"\nround {k}: distinct tasks solved per {BUDGET} samples")
        print(thin.sort("family"))
        print(f"round {k}: tasks with no clean sample in their first 2, resampled {n - 2} more times")
        print(resample_failures(d).sort("family"))


if __name__ == "__main__":
    main()
