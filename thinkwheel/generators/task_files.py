"""Tasks you bring: the files `generate.tasks` and `eval.tasks` name, read into TASKS rows.

Every check runs when the files are read, before any sampling: a row the flow could not verify,
or a verifier name that resolves to nothing, would otherwise surface a round later as candidates
that all came back unverified.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel import records
from thinkwheel.config import TaskFilesConfig
from thinkwheel.generators.seeds import seed_pool
from thinkwheel.verifiers.registry import UnknownVerifierError, resolve

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a .jsonl / .json (a list of objects) / .parquet file or a `datasets` folder."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(f"{path}: no such file or folder")
    if p.is_dir():
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(p))
        except FileNotFoundError as err:
            raise ValueError(f"{path}: not a `datasets` save_to_disk folder ({err})") from None
        if isinstance(ds, DatasetDict):
            raise ValueError(f"{path} holds splits {', '.join(ds)}: give {path}/<split>")
        return ds.to_list()
    if p.suffix == ".parquet":
        return pl.read_parquet(p).to_dicts()
    if p.suffix == ".json":
        rows = json.loads(p.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{path}: a .json task file holds a list of objects")
        return rows
    if p.suffix in (".jsonl", ".ndjson"):
        out = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError as err:
                    raise ValueError(f"{path}:{n}: not JSON ({err})") from None
        return out
    raise ValueError(f"{path}: expected one of {', '.join(SUFFIXES)} or a `datasets` folder")


_MISSING = object()


def _field(row: dict[str, Any], path: str) -> Any:
    """`row[path]`, or for a dotted path a field inside nested objects (verl-style RL sets keep
    the answer in `reward_model.ground_truth`); `_MISSING` when absent."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _renamed(rows: list[dict[str, Any]], columns: dict[str, str]) -> list[dict[str, Any]]:
    """Your column names -> ours. A row may lack a value (sparse JSONL); a mapped column that
    no row has is a typo."""
    for ours, yours in columns.items():
        if all(_field(r, yours) is _MISSING for r in rows):
            seen = sorted({c for r in rows[:100] for c in r})
            raise ValueError(f"no column {yours!r} (mapped to {ours!r}); it has {seen}")
    renamed = []
    for r in rows:
        out = {k: v for k, v in r.items() if k not in columns.values()}
        for ours, yours in columns.items():
            value = _field(r, yours)
            out[ours] = None if value is _MISSING else value
        renamed.append(out)
    return renamed


def unverifiable() -> pl.Expr:
    """Rows a built-in verifier cannot check as given: math without a reference, code without
    tests. In training they get one by consensus; in an eval set they are an error."""
    return ((pl.col("verifier") == "math") & pl.col("reference").is_null()) | (
        (pl.col("verifier") == "code") & pl.col("tests").list.len().fill_null(0).eq(0)
    )


def load_task_files(
    cfg: TaskFilesConfig, *, round: int | None = 0, held_out: bool = False,
    notes: list[str] | None = None,
) -> pl.DataFrame:
    """TASKS rows from every file in `cfg.paths` (source "seed"; family defaults to the file's
    name). `held_out` rows must be verifiable as given. Duplicate tasks keep their first row.
    A row's own `round` is kept; the others get `round` (None leaves them null). What a user
    would not see otherwise (rows merged as duplicates, one prompt with two references) goes
    into `notes`."""
    frames = []
    for path in cfg.paths:
        try:
            rows = read_rows(path)
            if not rows:
                raise ValueError("no rows")
            if bad := next((i for i, r in enumerate(rows, start=1) if not isinstance(r, dict)), None):
                raise ValueError(f"row {bad} is a {type(rows[bad - 1]).__name__}; a task is an "
                                 "object with a prompt")
            rows = _renamed(rows, cfg.columns)
            defaults = {"domain": cfg.domain, "verifier": cfg.verifier}
            rows = [{**r, **{k: v for k, v in defaults.items() if v and not r.get(k)}} for r in rows]
            tasks = seed_pool(rows, round=round, family=Path(path).stem)
            for name in tasks["verifier"].unique().sort():
                resolve(name)
        except (ValueError, UnknownVerifierError) as err:
            text = str(err)  # the reader's own messages name the file already
            raise ValueError(text if text.startswith(str(path)) else f"{path}: {text}") from None
        if held_out and (bad := tasks.with_row_index("row", offset=1).filter(unverifiable())).height:
            raise ValueError(
                f"{path}: {bad.height} held-out row(s) cannot be verified as given (math needs a "
                f"reference, code needs tests), e.g. row {bad['row'][0]}: {bad['prompt'][0][:60]!r}"
            )
        frames.append(tasks)
    if not frames:
        return pl.DataFrame(schema=records.TASKS)
    rows = pl.concat(frames)
    # a prompt the files also give labelled: the unlabelled copy would be labelled again by the
    # model's vote, and trained on beside the file's own answer
    labelled = rows.filter(~unverifiable()).select("domain", "prompt").unique()
    bare = rows.filter(unverifiable()).join(labelled, on=["domain", "prompt"], how="semi")
    rows = rows.join(bare.select("task_id"), on="task_id", how="anti") if bare.height else rows
    # one code prompt given twice with different tests is one task (its id is the prompt's):
    # it keeps every row's tests, not the first row's alone
    pooled = (rows.filter(pl.col("tests").is_not_null()).group_by("task_id", maintain_order=True)
              .agg(pl.col("tests").explode().unique(maintain_order=True).alias("_tests")))
    tasks = rows.unique("task_id", keep="first", maintain_order=True)
    if pooled.height:
        tasks = (tasks.join(pooled, on="task_id", how="left", maintain_order="left")
                 .with_columns(pl.coalesce("_tests", "tests").alias("tests")).drop("_tests"))
    if notes is not None:
        notes += duplicate_notes(rows, tasks)
        if bare.height:
            notes.append(f"{bare.height} row(s) without a reference or tests repeat a prompt "
                         "another row gives with one, and are that task (not labelled by vote)")
    return tasks


def duplicate_notes(rows: pl.DataFrame, tasks: pl.DataFrame) -> list[str]:
    """Rows a task file held twice are one task, and one prompt with two references is two:
    both used to happen without a word."""
    out = []
    if merged := rows.height - tasks.height:
        out.append(f"{merged} row(s) repeat an earlier row's prompt and reference and are one "
                   "task each (a code prompt's tests pooled)")
    split = tasks.group_by("domain", "prompt").agg(pl.col("reference").n_unique().alias("n"))
    if (clash := split.filter(pl.col("n") > 1)).height:
        out.append(f"{clash.height} prompt(s) come with different references and are separate "
                   f"tasks, each a right answer to the other's: e.g. {clash['prompt'][0][:60]!r}")
    return out


def draw(tasks: pl.DataFrame, per_round: int | None, seed: int, k: int) -> pl.DataFrame:
    """Round k's share: every row, or a fresh seeded draw of `per_round` (in file order)."""
    if per_round is None or per_round >= tasks.height:
        return tasks
    picked = tasks.with_row_index("_i").sample(per_round, seed=seed + 7919 * k, shuffle=False)
    return picked.sort("_i").drop("_i")
