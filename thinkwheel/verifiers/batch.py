"""The verify stage: one verdict per candidate, using each task's `verifier` column."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import polars as pl

from thinkwheel import records
from thinkwheel.verifiers.base import Verdict, error_verdict
from thinkwheel.verifiers.registry import get_verifier, load_plugins

_DEFAULT_BY_DOMAIN = {"math": "math", "code": "code"}


def verifier_options(name: str, workers: int = 2, math_timeout_s: float = 5.0,
                     code_timeout_s: float = 10.0, percent_policy: str = "fraction",
                     plugins: Sequence[str] = ()) -> dict[str, Any]:
    """Options for `get_verifier(name, ...)` from the run's `verify` settings (`plugins` are
    loaded by get_verifier, not passed to the factory)."""
    if name == "math":
        return {"workers": workers, "timeout_s": math_timeout_s, "percent_policy": percent_policy}
    if name == "code":
        return {"workers": workers, "timeout_s": code_timeout_s}
    return {"workers": workers, "percent_policy": percent_policy, "plugins": tuple(plugins)}


def verify_frame(
    tasks: pl.DataFrame,
    candidates: pl.DataFrame,
    *,
    workers: int = 2,
    math_timeout_s: float = 5.0,
    code_timeout_s: float = 10.0,
    percent_policy: str = "fraction",
    plugins: Sequence[str] = (),
    format_weight: float = 0.0,
) -> pl.DataFrame:
    """records.VERDICTS rows, one per candidate (in candidate order).

    Candidates are grouped by their task's verifier and each group is checked in one batch
    call (the math pool and the code sandboxes run `workers` checks at a time). A task
    without a verifier falls back to its domain's; a missing task or unknown verifier gives
    passed=None rather than an exception. With `format_weight` > 0 a candidate passes only in
    the `<think>` format as well (`think_format`, tolerant of a pre-filled tag), and its score
    is (1 - w) * the verifier's + w * the format's.
    """
    load_plugins(list(plugins))
    task_cols = [c for c in ("task_id", "domain", "prompt", "reference", "tests", "verifier", "meta")
                 if c in tasks.columns]
    task_rows = {r["task_id"]: r for r in tasks.select(task_cols).to_dicts()}
    cand_rows = candidates.to_dicts()
    verdicts: list[Verdict | None] = [None] * len(cand_rows)
    names: list[str] = [""] * len(cand_rows)
    groups: dict[str, list[int]] = {}
    for i, cand in enumerate(cand_rows):
        task = task_rows.get(cand.get("task_id"))
        if task is None:
            verdicts[i] = Verdict(None, 0.0, "bad_reference", "task not found")
            continue
        name = task.get("verifier") or _DEFAULT_BY_DOMAIN.get(task.get("domain") or "", "")
        names[i] = name
        groups.setdefault(name, []).append(i)
    for name, idxs in groups.items():
        start = time.perf_counter()
        try:
            verifier = get_verifier(name, **verifier_options(name, workers, math_timeout_s,
                                                     code_timeout_s, percent_policy))
            out = verifier.verify_batch([cand_rows[i] for i in idxs],
                                        [task_rows[cand_rows[i]["task_id"]] for i in idxs])
        except Exception as err:  # unknown verifier, broken plugin: never crash the stage
            out = [error_verdict(err, time.perf_counter() - start)] * len(idxs)
        for i, v in zip(idxs, out, strict=True):
            verdicts[i] = v
    if format_weight > 0:
        verdicts = _with_format(verdicts, cand_rows, format_weight)
    rows = [
        {"candidate_id": c.get("candidate_id"), "task_id": c.get("task_id"), "verifier": n,
         "passed": v.passed, "score": float(v.score), "reason": v.reason, "detail": v.detail,
         "seconds": float(v.seconds)}
        for c, n, v in zip(cand_rows, names, verdicts, strict=True)
        if v is not None
    ]
    return records.frame(rows, records.VERDICTS)


def _with_format(verdicts: list[Verdict | None], cands: list[dict[str, Any]],
                 weight: float) -> list[Verdict | None]:
    """Each verdict, failed when its completion is not in the `<think>` format."""
    from thinkwheel.verifiers.think_format import check_format

    out: list[Verdict | None] = []
    for v, cand in zip(verdicts, cands, strict=True):
        if v is None:
            out.append(v)
            continue
        ok, why = check_format(str(cand.get("completion") or ""))
        score = (1 - weight) * v.score + weight * float(ok)
        if v.passed and not ok:
            v = replace(v, passed=False, reason="bad_format", detail=why)
        out.append(replace(v, score=score))
    return out


def verifier_errors(verdicts: pl.DataFrame) -> str | None:
    """A verifier that raised (or returned None) gives a None verdict, which never counts as passed: a broken
    plugin read as "passed 0" with its error only in verdicts.parquet. Say which and why."""
    bad = verdicts.filter(pl.col("reason") == "verifier_error")
    if bad.height == 0:
        return None
    by = bad.group_by("verifier").agg(pl.len(), pl.col("detail").first())
    parts = [f"{name} failed on {n} (first: {detail})"
             for name, n, detail in by.sort("len", descending=True).iter_rows()]
    return (f"{bad.height} of {verdicts.height} candidates could not be verified, counted as "
            f"not passed: " + "; ".join(parts))
