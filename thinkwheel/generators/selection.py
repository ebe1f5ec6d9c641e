"""Rejection-sampling policy: which verified candidates become SFT data, which tasks feed GRPO.

ReST-EM keeps at most K correct samples per problem so easy tasks cannot swamp the SFT set;
open-r1 keeps GRPO prompts whose pass rate lies in a band because all-pass and all-fail
groups give GRPO zero advantage. All functions here are pure over polars frames.

A candidate with several verdicts (e.g. `math` and `think_format`) counts as passed only
when every verdict passed; any `False` makes it failed; otherwise any null makes it
unverified. Unverified is never counted as correct, but it stays in the denominator.
"""

from __future__ import annotations

import polars as pl

from thinkwheel import records

PASS_RATES: dict[str, pl.DataType] = {
    "task_id": pl.Utf8,
    "n": pl.Int64,  # candidates with at least one verdict
    "n_passed": pl.Int64,
    "n_failed": pl.Int64,
    "n_unverified": pl.Int64,
    "pass_rate": pl.Float64,  # n_passed / n
}

# drop_reason vocabulary of `sft_decisions`
FAILED = "failed_verification"
UNVERIFIED = "unverified"
NO_VERDICT = "no_verdict"
OVER_K = "over_keep_per_task"


def candidate_outcomes(verdicts: pl.DataFrame) -> pl.DataFrame:
    """One row per candidate: candidate_id, task_id, passed (True | False | null), reason,
    verifiers. `reason` is the first reason of a verdict that did not pass, else the first."""
    v = records.conform(verdicts, records.VERDICTS)
    not_pass_reason = pl.col("reason").filter(pl.col("passed").not_().fill_null(True)).first()
    return v.group_by("candidate_id", maintain_order=True).agg(
        pl.col("task_id").first(),
        pl.when((pl.col("passed") == False).any())  # noqa: E712 - polars expression
        .then(pl.lit(False))
        .when(pl.col("passed").is_null().any())
        .then(pl.lit(None, dtype=pl.Boolean))
        .otherwise(pl.lit(True))
        .alias("passed"),
        pl.coalesce(not_pass_reason, pl.col("reason").first()).alias("reason"),
        pl.col("verifier").unique(maintain_order=True).str.join(",").alias("verifiers"),
    )


def pass_rates(verdicts: pl.DataFrame) -> pl.DataFrame:
    """Per-task pass rate from verdicts (columns of `PASS_RATES`), sorted by task_id."""
    out = candidate_outcomes(verdicts)
    agg = out.group_by("task_id").agg(
        pl.len().cast(pl.Int64).alias("n"),
        (pl.col("passed") == True).sum().cast(pl.Int64).alias("n_passed"),  # noqa: E712
        (pl.col("passed") == False).sum().cast(pl.Int64).alias("n_failed"),  # noqa: E712
        pl.col("passed").is_null().sum().cast(pl.Int64).alias("n_unverified"),
    )
    # an unverified sample counts as not passed; a task none of whose samples could be judged
    # has no pass rate (0.0 read as "never solved" in the report, and such tasks in a band)
    agg = agg.with_columns(
        pl.when(pl.col("n_passed") + pl.col("n_failed") > 0)
        .then(pl.col("n_passed") / pl.col("n")).alias("pass_rate"))
    return records.conform(agg, PASS_RATES).sort("task_id")


def sft_decisions(
    candidates: pl.DataFrame,
    verdicts: pl.DataFrame,
    filtered: pl.DataFrame | None,
    keep_per_task: int,
) -> pl.DataFrame:
    """Every candidate with a `drop_reason` (null = selected for SFT), for the funnel.

    Reasons: `failed_verification`, `unverified`, `no_verdict`, the filter's own reason
    (a candidate absent from `filtered` was not flagged by any filter), then
    `over_keep_per_task` for verified survivors beyond the first K of their task in
    `sample_idx` order (samples are i.i.d., so the order is an unbiased and stable pick).
    """
    if keep_per_task < 1:
        raise ValueError(f"keep_per_task must be >= 1, got {keep_per_task}")
    cands = records.conform(candidates, records.CANDIDATES)
    outcomes = candidate_outcomes(verdicts).select("candidate_id", "passed", has_verdict=True)
    df = cands.join(outcomes, on="candidate_id", how="left")
    if filtered is not None and filtered.height:
        f = records.conform(filtered, records.FILTERED).select(
            "candidate_id", pl.col("drop_reason").alias("_filter_reason")
        )
        df = df.join(f.unique("candidate_id", keep="first"), on="candidate_id", how="left")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias("_filter_reason"))
    df = df.with_columns(
        pl.when(pl.col("has_verdict").is_null())
        .then(pl.lit(NO_VERDICT))
        .when(pl.col("passed") == False)  # noqa: E712
        .then(pl.lit(FAILED))
        .when(pl.col("passed").is_null())
        .then(pl.lit(UNVERIFIED))
        .otherwise(pl.col("_filter_reason"))
        .alias("drop_reason")
    )
    rank = (
        pl.when(pl.col("drop_reason").is_null())
        .then(pl.col("sample_idx").rank("ordinal").over("task_id", "drop_reason"))
        .otherwise(None)
    )
    df = df.with_columns(
        pl.when(pl.col("drop_reason").is_null() & (rank > keep_per_task))
        .then(pl.lit(OVER_K))
        .otherwise(pl.col("drop_reason"))
        .alias("drop_reason")
    )
    return df.drop("passed", "has_verdict", "_filter_reason")


def select_sft(
    candidates: pl.DataFrame,
    verdicts: pl.DataFrame,
    filtered: pl.DataFrame | None,
    keep_per_task: int,
) -> pl.DataFrame:
    """Verified, unfiltered candidates, at most `keep_per_task` per task (CANDIDATES schema)."""
    d = sft_decisions(candidates, verdicts, filtered, keep_per_task)
    kept = d.filter(pl.col("drop_reason").is_null()).drop("drop_reason")
    return records.conform(kept, records.CANDIDATES)


def select_grpo(
    tasks: pl.DataFrame,
    pass_rates: pl.DataFrame,
    band: tuple[float, float] = (0.2, 0.8),
) -> pl.DataFrame:
    """Tasks whose pass rate lies in `band` (inclusive), with `pass_rate` and `n` appended.

    Tasks never sampled (no pass rate) are left out: their difficulty is unknown.
    """
    lo, hi = band
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"pass-rate band must satisfy 0 <= lo <= hi <= 1, got {band}")
    t = records.conform(tasks, records.TASKS)
    pr = records.conform(pass_rates, PASS_RATES).select("task_id", "pass_rate", "n")
    t = t.drop([c for c in ("pass_rate", "n") if c in t.columns])
    out = t.join(pr, on="task_id", how="inner", maintain_order="left")
    return out.filter(pl.col("pass_rate").is_between(lo, hi, closed="both"))
