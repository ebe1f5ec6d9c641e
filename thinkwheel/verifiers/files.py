"""`thinkwheel verify`: verify a JSONL/parquet file of (completion, reference[, tests]) rows.

This is the I/O edge around `verify_frame`: it reads the file, builds task and candidate
frames, writes the verdicts (parquet or JSONL, by `out`'s suffix) and a summary JSON next
to them, and returns the summary.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel import records
from thinkwheel.store import read_jsonl
from thinkwheel.verifiers.batch import verifier_errors, verify_frame
from thinkwheel.verifiers.code_tests import parse_tests
from thinkwheel.verifiers.registry import load_plugins, resolve


def _read(path: Path) -> pl.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        try:
            return pl.read_parquet(path)
        except (pl.exceptions.PolarsError, OSError) as err:
            raise ValueError(f"{path}: not a parquet file ({err})") from None
    if path.suffix in (".jsonl", ".ndjson", ".json"):
        if path.suffix == ".json" and path.read_text(errors="replace").lstrip().startswith("["):
            try:  # a JSON array of rows
                return pl.DataFrame(json.loads(path.read_text()), infer_schema_length=None)
            except ValueError as err:
                raise ValueError(f"{path}: not a JSON array of rows ({err})") from None
        try:
            return read_jsonl(path, infer_schema_length=None)
        except (pl.exceptions.PolarsError, UnicodeDecodeError) as err:  # name the line
            raise ValueError(_bad_line(path) or f"{path}: not JSON lines ({err})") from None
    raise ValueError(f"{path}: expected .jsonl or .parquet")


def _bad_line(path: Path) -> str | None:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                if line.strip():
                    json.loads(line)
            except ValueError as err:  # UnicodeDecodeError is one
                return f"{path}:{n}: not JSON ({err})"
    return None


def _meta(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {"meta": value}
    return dict(value) if isinstance(value, dict) else {}


def _write_atomic(df: pl.DataFrame, out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix in (".parquet", ".pq"):
        df.write_parquet(tmp)
    else:
        df.write_ndjson(tmp)
    os.replace(tmp, out)


def verify_file(path: str | Path, verifier: str, out: str | Path, *, workers: int = 2,
                math_timeout_s: float = 5.0, code_timeout_s: float = 10.0,
                percent_policy: str = "fraction", plugins: list[str] | None = None,
                format_weight: float = 0.0) -> dict[str, Any]:
    """Verify every row of `path` with `verifier` (a row's own `verifier` column wins); the
    keywords are a run's `verify` settings (`thinkwheel verify --config`)."""
    path, out = Path(path), Path(out)
    df = _read(path)
    if "completion" not in df.columns:
        raise ValueError(f"{path}: needs a 'completion' column (has {df.columns})")
    n = df.height
    ids = [str(i) for i in range(n)]
    cols = df.to_dict(as_series=False)
    names = {v or verifier for v in cols.get("verifier", [None] * n)}
    load_plugins(plugins or [])
    for name in sorted(names):
        resolve(name)  # an unknown name fails here, not as n unverified rows
    if "math" in names and "reference" not in df.columns:
        raise ValueError(f"{path}: the math verifier needs a 'reference' column (has {df.columns})")
    if "code" in names and "tests" not in df.columns:
        raise ValueError(f"{path}: the code verifier needs a 'tests' column (has {df.columns})")
    tests = [parse_tests(t, f"{path}: row {i + 1}") for i, t in enumerate(cols.get("tests", [None] * n))]
    # a plugin sees the row's meta and its other columns, as it does in a run
    extra = [c for c in df.columns if c not in records.TASKS and c not in ("completion", "candidate_id")]
    tasks = records.frame(
        [{"task_id": ids[i], "domain": (cols.get("domain") or [None] * n)[i],
          "prompt": (cols.get("prompt") or [""] * n)[i],
          "reference": None if (cols.get("reference") or [None] * n)[i] is None
          else str(cols["reference"][i]),
          "tests": tests[i], "verifier": (cols.get("verifier") or [None] * n)[i] or verifier,
          "meta": records.dumps({**_meta(cols.get("meta", [None] * n)[i]),
                                 **{c: cols[c][i] for c in extra if cols[c][i] is not None}})}
         for i in range(n)], records.TASKS)
    cands = records.frame(
        [{"candidate_id": (cols.get("candidate_id") or ids)[i], "task_id": ids[i],
          "completion": cols["completion"][i]} for i in range(n)], records.CANDIDATES)
    verdicts = verify_frame(tasks, cands, workers=workers, math_timeout_s=math_timeout_s,
                            code_timeout_s=code_timeout_s, percent_policy=percent_policy,
                            plugins=plugins or [], format_weight=format_weight)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(verdicts.drop("task_id").with_columns(pl.Series("row", range(n))), out)
    passed = verdicts["passed"].to_list()
    summary = {
        # the verifiers the rows were judged by: a row's own `verifier` overrides --verifier
        "file": str(path), "out": str(out), "verifier": ", ".join(sorted(names)), "rows": n,
        "passed": sum(p is True for p in passed), "failed": sum(p is False for p in passed),
        "unverified": sum(p is None for p in passed),
        "pass_rate": (sum(p is True for p in passed) / n) if n else 0.0,
        "mean_score": float(verdicts["score"].mean() or 0.0) if n else 0.0,
        "reasons": dict(Counter(verdicts["reason"].to_list())),
        "seconds": float(verdicts["seconds"].sum()) if n else 0.0,
        # which verifier raised and its first error, not only a count of verifier_error
        **({"errors": note} if (note := verifier_errors(verdicts)) else {}),
    }
    summary_path = out.with_name(out.stem + ".summary.json")
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    os.replace(tmp, summary_path)
    return summary
