"""What survived a round, what was dropped and why, and whether the model got better.

Pure functions over a round's frames (`{"tasks", "candidates", "verdicts", "filtered"}`) or
over all rounds (`{round: frames}`), plus rich renderables for the CLI and a JSON form.
The funnel is computed from `verdicts.passed` and `filtered.drop_reason` only, so it can
never disagree with the data on disk.

Drop reasons are grouped into funnel stages by prefix (`DROP_STAGES`): e.g. `dedup:minhash`
is a dedup drop, `decontam:humaneval` a decontamination drop. Unknown prefixes count as
"other"; they still show up, ranked, in the drop-reason table.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from typing import Any

import polars as pl
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from thinkwheel.curated.export import candidate_outcomes
from thinkwheel.filters.quality import QUALITY_REASONS
from thinkwheel.filters.stage import CONTAMINATED, NEAR_DUPLICATE, NOT_VERIFIED, UNVERIFIABLE
from thinkwheel.generators.repair import repairs_made
from thinkwheel.generators.selection import FAILED, NO_VERDICT, OVER_K, UNVERIFIED
from thinkwheel.records import SCHEMAS, conform

Frames = Mapping[str, pl.DataFrame]
Rounds = Mapping[int, Frames]

# The filters' and the selection's own vocabulary first (exact names), then prefixes for
# reasons written by plugins or older runs.
DROP_STAGES: dict[str, tuple[str, ...]] = {
    "verify": (NOT_VERIFIED, UNVERIFIABLE, FAILED, UNVERIFIED, NO_VERDICT, "not_passed", "wrong"),
    "dedup": (NEAR_DUPLICATE, "dedup", "duplicate", "minhash"),
    "decontam": (CONTAMINATED, "decontam"),
    "quality": (*QUALITY_REASONS, "quality"),
    "cap": (OVER_K, "cap", "keep_per_task", "max_per_task"),
}
# the filters' order (decontamination, quality, dedup, then the per-task cap), as the
# manifest's funnel has it: a drop is counted at the first filter that drops it
FUNNEL = ["tasks", "candidates", "verified", "decontaminated", "quality", "deduped", "kept"]
SLICES = {
    "domain": "domain",
    "family": "family",
    "source": "source_kind",
    "difficulty": "difficulty",
}


def drop_stage(col: str = "drop_reason") -> pl.Expr:
    """Funnel stage of a drop reason: kept, verify, dedup, decontam, quality, cap or other."""
    reason = pl.col(col).str.to_lowercase()
    expr = pl.when(pl.col(col).is_null()).then(pl.lit("kept"))
    for stage, prefixes in DROP_STAGES.items():
        hit = pl.any_horizontal([reason.str.starts_with(p) for p in prefixes])
        expr = expr.when(hit).then(pl.lit(stage))
    return expr.otherwise(pl.lit("other"))


def _get(frames: Frames, name: str) -> pl.DataFrame:
    df = frames.get(name)
    return conform(df if df is not None else pl.DataFrame(), SCHEMAS[name])


def record_table(frames: Frames) -> pl.DataFrame:
    """One row per candidate with its task, verdict outcome and filter decision."""
    tasks = _get(frames, "tasks").select(
        "task_id", "domain", "family", "source", "difficulty", "prompt", "reference",
        pl.col("round").alias("task_round"),
    ).unique("task_id", keep="first")  # fmt: skip
    cands = _get(frames, "candidates")
    verdicts = conform(_get(frames, "verdicts"), SCHEMAS["verdicts"])
    outcomes = candidate_outcomes(verdicts).select(
        "candidate_id", "passed", pl.col("reason").alias("verdict_reason"), "verifiers",
        pl.lit(True).alias("has_verdict"),
    ).join(  # a plugin's partial credit and its words (an exception's text) are the verdict too
        verdicts.group_by("candidate_id").agg(
            pl.col("score").min().alias("score"),
            pl.col("detail").filter(pl.col("passed").not_().fill_null(True)).first()
            .alias("verdict_detail"),
        ), on="candidate_id", how="left",
    )  # fmt: skip
    filt = _get(frames, "filtered").select(
        "candidate_id", "drop_reason", "drop_ref", pl.lit(True).alias("has_filter")
    )
    df = (
        cands.join(tasks, on="task_id", how="left")
        .join(outcomes, on="candidate_id", how="left")
        .join(filt.unique("candidate_id", keep="first"), on="candidate_id", how="left")
    )
    status = (
        pl.when(pl.col("has_filter").is_null())
        .then(pl.lit("pending"))
        .when(pl.col("drop_reason").is_null())
        .then(pl.lit("kept"))
        .otherwise(pl.lit("dropped"))
    )
    source_kind = (
        pl.when(pl.col("source").str.starts_with("procedural"))
        .then(pl.lit("procedural"))
        .otherwise(pl.col("source"))
    )
    return df.with_columns(
        pl.coalesce("round", "task_round").alias("round"),
        source_kind.alias("source_kind"),
        pl.when(pl.col("has_filter")).then(drop_stage()).alias("drop_stage"),
        status.alias("status"),
        pl.col("has_verdict").fill_null(False),
        pl.col("has_filter").fill_null(False),
    ).drop("task_round")


def funnel(frames: Frames, table: pl.DataFrame | None = None) -> pl.DataFrame:
    """tasks → candidates → verified → decontaminated → quality → deduped → kept, with
    percentages.

    Percentages are of candidates (and of the previous stage). Stages not run yet are null.
    "tasks" are the ones sampled: tasks dropped before sampling (task dedup, decontamination)
    are not, so the count matches the per-family tables and `thinkwheel run`'s summary.
    "verified" counts candidates whose verdict passed, or once the filters ran, the ones they
    did not drop at verification (all of them with `export.verified_only: false`, which the
    funnel then read as "verified 4, kept 16"); each filter's drops are counted among those,
    in the order the filters run, so the gap deduped → kept is the per-task cap.
    """
    t = table if table is not None else record_table(frames)
    tasks = frames.get("tasks")
    if tasks is not None and "drop_reason" in tasks.columns:
        tasks = tasks.filter(pl.col("drop_reason").is_null())
    n_tasks = 0 if tasks is None else tasks.height
    has_v = bool(t["has_verdict"].any()) if t.height else _get(frames, "verdicts").height > 0
    has_f = bool(t["has_filter"].any()) if t.height else _get(frames, "filtered").height > 0
    passed = t.filter(pl.col("passed") == True)  # noqa: E712
    if has_f:  # what the filters counted as verified
        ok = t.filter(pl.col("has_filter") & (pl.col("drop_stage") != "verify"))
    else:
        ok = passed
    verified = ok.height if has_v else None
    # `export.verified_only: false` lets failed answers into the filters: the row counts what
    # entered them, and says so (it read "verified" beside the candidates' own count)
    unchecked = has_f and has_v and ok.height > passed.height
    filters: list[int | None] = [None, None, None]
    kept = None
    if has_f:
        kept = t.filter(pl.col("status") == "kept").height
        if verified is not None:
            left = verified
            for i, stage in enumerate(("decontam", "quality", "dedup")):
                left -= ok.filter(pl.col("drop_stage") == stage).height
                filters[i] = left
    counts = [n_tasks, t.height, verified, *filters, kept]
    rows, prev = [], None
    stages = [*FUNNEL]
    if unchecked:
        stages[2] = f"verified: off ({passed.height:,} passed)"
    for i, (stage, c) in enumerate(zip(stages, counts, strict=True)):
        pct = None if i == 0 or c is None or not t.height else round(100 * c / t.height, 1)
        step = None if i < 2 or c is None or not prev else round(100 * c / prev, 1)
        rows.append({"stage": stage, "count": c, "pct": pct, "pct_of_previous": step})
        prev = c if i >= 1 else None
    schema = {"stage": pl.Utf8, "count": pl.Int64, "pct": pl.Float64, "pct_of_previous": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def drop_reasons(table: pl.DataFrame) -> pl.DataFrame:
    """Drop reasons ranked by count, with their funnel stage and share of all candidates."""
    n = max(table.height, 1)
    return (
        table.filter(pl.col("status") == "dropped")
        .group_by("drop_reason", "drop_stage")
        .agg(pl.len().alias("count"))
        .with_columns((100 * pl.col("count") / n).round(1).alias("pct"))
        .sort(["count", "drop_reason"], descending=[True, False])
        .rename({"drop_reason": "reason", "drop_stage": "stage"})
    )


def task_drops(tasks: pl.DataFrame | None) -> pl.DataFrame:
    """Tasks dropped before sampling (task dedup, decontamination, no consensus reference),
    by reason and source: they have no candidates, so the funnel starts after them, and
    your own task file's rows vanished from every view but tasks.parquet."""
    schema = {"reason": pl.Utf8, "source": pl.Utf8, "tasks": pl.UInt32}
    if tasks is None or "drop_reason" not in tasks.columns:
        return pl.DataFrame(schema=schema)
    return (
        tasks.filter(pl.col("drop_reason").is_not_null())
        .group_by(pl.col("drop_reason").alias("reason"), "source")
        .agg(pl.len().alias("tasks"))
        .sort(["tasks", "reason", "source"], descending=[True, False, False])
        .cast(schema)
    )


def pass_rates(table: pl.DataFrame, by: str) -> pl.DataFrame:
    """Pass rate (passed / candidates; unverified counts as not passed) per slice value, over
    the model's own samples: a step-repaired candidate is no sample the model wrote alone (the
    GRPO band leaves it out too), so it is counted in `repaired`, present when there are any.
    `kept` counts every kept row, repaired ones too: what went into the data."""
    col = SLICES.get(by, by)
    own = pl.col("_own")
    rates = (
        table.with_columns(
            (repairs_made().eq(0) if "gen_params" in table.columns else pl.lit(True)).alias("_own"))
        .group_by(col)
        .agg(
            pl.col("task_id").n_unique().alias("tasks"),
            own.sum().alias("candidates"),
            ((pl.col("passed") == True) & own).sum().alias("passed"),  # noqa: E712
            (pl.col("has_verdict") & pl.col("passed").is_null() & own).sum().alias("unverified"),
            (pl.col("status") == "kept").sum().alias("kept"),
            own.not_().sum().alias("repaired"),
        )
        .with_columns((pl.col("passed") / pl.col("candidates")).round(4).alias("pass_rate"))
        .rename({col: by})
        .sort(by, nulls_last=True)
    )
    return rates if rates["repaired"].sum() else rates.drop("repaired")


def length_stats(table: pl.DataFrame) -> pl.DataFrame:
    """Characters of reasoning and answer (and tokens), for all candidates and the kept ones."""
    measures = {
        "reasoning_chars": pl.col("reasoning").str.len_chars(),
        "answer_chars": pl.col("answer").str.len_chars(),
        "tokens": pl.col("n_tokens"),
    }
    rows = []
    for subset, df in (("all", table), ("kept", table.filter(pl.col("status") == "kept"))):
        for name, expr in measures.items():
            s = df.select(expr.alias("x"))["x"]
            rows.append(
                {
                    "field": name, "subset": subset, "n": s.len() - s.null_count(),
                    "mean": s.mean(), "p50": s.median(), "p90": s.quantile(0.9),
                    "max": s.max(), "empty": int((s.fill_null(0) == 0).sum()),
                }
            )  # fmt: skip
    schema = {"field": pl.Utf8, "subset": pl.Utf8, "n": pl.Int64, "mean": pl.Float64,
              "p50": pl.Float64, "p90": pl.Float64, "max": pl.Float64, "empty": pl.Int64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema).with_columns(pl.col("mean").round(1))


BASE_ROUND = -1  # the key of the base model's eval among the rounds' (eval-base.json)


def eval_table(evals: Mapping[int, Mapping[str, Any]]) -> pl.DataFrame:
    """Accuracy per round (plus no-false-step accuracy, pass@k, maj@k when present); the base
    model's, under BASE_ROUND, comes first as "base"."""
    rows = []
    for k in sorted(evals):
        e = evals[k] or {}
        rows.append(
            {"model": "base" if k == BASE_ROUND else f"round {k}",
             "round": None if k == BASE_ROUND else int(k), "accuracy": e.get("accuracy"),
             "clean_accuracy": e.get("clean_accuracy"), "n": e.get("n"),
             "pass_at_k": _scalar(e.get("pass_at_k")), "maj_at_k": _scalar(e.get("maj_at_k"))}
        )  # fmt: skip
    schema = {"model": pl.Utf8, "round": pl.Int64, "accuracy": pl.Float64, "clean_accuracy": pl.Float64,
              "n": pl.Int64, "pass_at_k": pl.Float64, "maj_at_k": pl.Float64}  # fmt: skip
    return pl.DataFrame(rows, schema=schema)


def _scalar(v: Any) -> float | None:
    # pass_at_k may be a number or {"k": .., "value": ..}; keep the number.
    if isinstance(v, Mapping):
        v = v.get("value", next((x for x in v.values() if isinstance(x, (int, float))), None))
    return float(v) if isinstance(v, (int, float)) else None


def round_summary(frames: Frames, stages: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything `thinkwheel inspect` shows for one round, as JSON-ready lists of rows."""
    t = record_table(frames)
    out = {
        "funnel": funnel(frames, t).to_dicts(),
        "task_drops": task_drops(frames.get("tasks")).to_dicts(),
        "drop_reasons": drop_reasons(t).to_dicts(),
        "pass_rate": {by: pass_rates(t, by).to_dicts() for by in SLICES},
        "lengths": length_stats(t).to_dicts(),
    }
    if stages:
        out["stages"] = {
            name: {k: s.get(k) for k in ("status", "count", "seconds")}
            for name, s in stages.items()
        }
        # families that had fewer distinct tasks than asked (`generate_tasks` notes)
        out["task_shortfall"] = list((stages.get("tasks") or {}).get("short") or [])
    return out


def summarize(
    rounds: Rounds,
    manifest: Mapping[str, Any] | None = None,
    evals: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole run: {"rounds": {"0": round_summary, ...}, "eval": [...]} (JSON-ready)."""
    stages = (manifest or {}).get("rounds", {})
    return {
        "rounds": {
            str(k): round_summary(rounds[k], stages.get(str(k), {}).get("stages"))
            for k in sorted(rounds)
        },
        "eval": eval_table(evals or {}).to_dicts(),
        "eval_detail": {str(k): dict(v) for k, v in sorted((evals or {}).items())},
    }


# ---- samples -------------------------------------------------------------------------

_PL_NAMES = {
    "col", "lit", "when", "len", "coalesce", "concat_str", "all_horizontal", "any_horizontal",
    "max_horizontal", "min_horizontal", "Utf8", "String", "Int32", "Int64", "Float64", "Boolean",
}  # fmt: skip
_DENY = re.compile(r"^_|^(map|pipe|write|sink|read|scan|to_|from_|register|apply)")
_NODES = (
    ast.Expression, ast.Call, ast.Attribute, ast.Name, ast.Constant, ast.Compare, ast.BoolOp,
    ast.BinOp, ast.UnaryOp, ast.List, ast.Tuple, ast.keyword, ast.Load, ast.operator,
    ast.boolop, ast.cmpop, ast.unaryop,
)  # fmt: skip


def where_expr(text: str) -> pl.Expr:
    """Parse a filter: a polars expression (`pl.col("family") == "addition"`) or SQL.

    Polars syntax is checked against a small whitelist of AST nodes and names (only `pl`,
    no dunders, no map/pipe/write/read methods) before eval without builtins, so a typo'd
    or hostile `--where` cannot run arbitrary code. Anything without `pl.` goes to
    `pl.sql_expr` (e.g. `family = 'addition' AND passed`).
    """
    if not re.search(r"\bpl\s*\.", text):
        try:
            return pl.sql_expr(text)
        except Exception as err:  # polars raises several types for bad SQL
            raise ValueError(f"bad --where SQL expression {text!r}: {err}") from None
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"bad --where expression {text!r}: {err.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise ValueError(f"--where may not use {type(node).__name__} syntax")
        if isinstance(node, ast.Name) and node.id != "pl":
            raise ValueError(f"--where may only use the name `pl`, not {node.id!r}")
        if isinstance(node, ast.Attribute):
            on_pl = isinstance(node.value, ast.Name) and node.value.id == "pl"
            if (on_pl and node.attr not in _PL_NAMES) or _DENY.search(node.attr):
                raise ValueError(f"--where may not use .{node.attr}")
    try:
        expr = eval(compile(tree, "<where>", "eval"), {"__builtins__": {}}, {"pl": pl})  # noqa: S307
    except Exception as err:
        raise ValueError(f"bad --where expression {text!r}: {err}") from None
    if not isinstance(expr, pl.Expr):
        raise ValueError(f"--where must be a polars expression, got {type(expr).__name__}")
    return expr


SAMPLE_COLUMNS = [
    "round", "task_id", "candidate_id", "domain", "family", "source", "difficulty", "prompt",
    "reference", "reasoning", "answer", "passed", "verifiers", "score", "verdict_reason",
    "verdict_detail", "status", "drop_reason", "drop_ref", "drop_stage", "model", "sample_idx",
]  # fmt: skip


def all_records(rounds: Rounds) -> pl.DataFrame:
    """record_table of every round, stacked."""
    tables = [record_table(rounds[k]) for k in sorted(rounds)]
    return pl.concat(tables, how="diagonal_relaxed") if tables else record_table({})


def sample_records(
    rounds: Rounds,
    n: int = 5,
    where: str | None = None,
    reason: str | None = None,
    round: int | None = None,  # noqa: A002 (the CLI flag is --round)
    seed: int = 0,
) -> pl.DataFrame:
    """Up to n records (task, reasoning, answer, verdict, drop) matching the filters.

    `reason` matches a drop reason exactly or by prefix (`dedup` matches `dedup:minhash`) or
    stage; "kept" and "dropped" select by status. Sampling is seeded, then ordered by id.
    """
    pick = {k: v for k, v in rounds.items() if round is None or int(k) == int(round)}
    df = all_records(pick)
    if reason in ("kept", "dropped", "pending"):
        df = df.filter(pl.col("status") == reason)
    elif reason:
        r, every = pl.col("drop_reason"), df
        df = df.filter(
            (r == reason) | r.str.starts_with(reason + ":") | (pl.col("drop_stage") == reason)
        )
        if df.height == 0:  # a typo must not read as "nothing was dropped for that"
            known = sorted(every["drop_reason"].drop_nulls().unique().to_list())
            drops = [task_drops(f.get("tasks")) for f in pick.values()]
            tasks = sum(d.filter(pl.col("reason") == reason)["tasks"].sum() for d in drops)
            before = (f"; {tasks} task(s) were dropped for it before sampling (tasks.parquet)"
                      if tasks else "")
            raise ValueError(
                f"no record was dropped for {reason!r}; drop reasons here: "
                f"{', '.join(known) or 'none'} (or a stage, kept, dropped){before}"
            )
    if where:
        try:
            df = df.filter(where_expr(where))
        except pl.exceptions.PolarsError as err:
            raise ValueError(f"--where failed on the records: {err}") from None
    if df.height > n:
        df = df.sample(n, seed=seed)
    return df.sort("round", "task_id", "sample_idx").select(SAMPLE_COLUMNS)


# ---- held-out answers ------------------------------------------------------------------

# what `--eval --reason` selects among a model's held-out answers; "fixed" and "broken" compare
# each task with the model before (the base model for round 0)
EVAL_REASONS = ("passed", "failed", "lucky", "truncated", "unverified", "fixed", "broken")
EVAL_COLUMNS = [
    "model", "round", "task_id", "family", "domain", "prompt", "reference", "reasoning", "answer",
    "passed", "clean", "verifiers", "score", "verdict_reason", "verdict_detail", "truncated",
    "was_passed", "n_samples", "n_correct",
]  # fmt: skip


def _model_name(k: int, names: Mapping[int, str] | None = None) -> str:
    return (names or {}).get(k) or ("base" if k == BASE_ROUND else f"round {k}")


def eval_answers(answers: Mapping[int, pl.DataFrame],
                 names: Mapping[int, str] | None = None) -> pl.DataFrame:
    """Every stored held-out answer (`eval-answers.parquet`), stacked, keyed by round
    (BASE_ROUND for the base model; `names` labels them otherwise), with `was_passed`: the
    same task's verdict for the model evaluated before it (null for the first)."""
    frames, before = [], None
    for k in sorted(answers):
        a = answers[k].select(
            pl.lit(_model_name(k, names)).alias("model"),
            pl.lit(None if k == BASE_ROUND else k, dtype=pl.Int64).alias("round"),
            *(c for c in ("task_id", "family", "domain", "prompt", "reference", "reasoning",
                          "answer", "verifiers", "score", "verdict_reason", "verdict_detail")),
            pl.col("greedy_passed").alias("passed"), pl.col("greedy_clean").alias("clean"),
            pl.col("greedy_truncated").alias("truncated"), "n_samples", "n_correct",
            pl.col("passed").is_null().alias("unverified"),
        )  # fmt: skip
        prev = (before.select("task_id", pl.col("passed").alias("was_passed"))
                if before is not None else pl.DataFrame(schema={"task_id": pl.Utf8,
                                                                "was_passed": pl.Boolean}))
        frames.append(a.join(prev, on="task_id", how="left"))
        before = a
    if not frames:
        return pl.DataFrame(schema=dict.fromkeys(EVAL_COLUMNS, pl.Utf8))
    return pl.concat(frames, how="diagonal_relaxed")


def eval_changes(answers: Mapping[int, pl.DataFrame]) -> pl.DataFrame:
    """Per model and family: held-out tasks passed, and how many the model fixed and broke
    against the model evaluated before it: what a round's data taught, and what it cost."""
    df = eval_answers(answers)
    if df.height == 0:
        return pl.DataFrame(schema={"model": pl.Utf8, "family": pl.Utf8, "n": pl.UInt32,
                                    "passed": pl.Int64, "fixed": pl.Int64, "broken": pl.Int64})
    order = {_model_name(k): i for i, k in enumerate(sorted(answers))}
    return (
        df.group_by("model", "family")
        .agg(
            pl.len().alias("n"),
            pl.col("passed").sum().alias("passed"),
            *(pl.when(pl.col("was_passed").is_not_null().any())  # the first model: no "before"
              .then(e.sum()).otherwise(None).alias(name)
              for name, e in (("fixed", pl.col("passed") & (pl.col("was_passed") == False)),  # noqa: E712
                              ("broken", ~pl.col("passed") & pl.col("was_passed")))),
        )
        .with_columns(pl.col("model").replace_strict(order, return_dtype=pl.Int64).alias("_o"))
        .sort("_o", "family")
        .drop("_o")
    )


def eval_samples(
    answers: Mapping[int, pl.DataFrame],
    n: int = 5,
    where: str | None = None,
    reason: str | None = None,
    round: int | None = None,  # noqa: A002 (the CLI flag is --round)
    seed: int = 0,
    names: Mapping[int, str] | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Up to n held-out answers of one model (`round`, BASE_ROUND for the base model, default
    the last evaluated), and how many of its answers (those `where` keeps) each
    `EVAL_REASONS` selects."""
    if not answers:
        raise ValueError("no held-out answers are stored in this run (runs before they were "
                         "kept have only eval.json: re-run it to score again)")
    key = max(answers) if round is None else round
    if key not in answers:
        have = ", ".join(_model_name(k, names).removeprefix("round ") for k in sorted(answers))
        who = "the base model" if key == BASE_ROUND else _model_name(key, names)
        raise ValueError(f"no held-out answers for {who}; stored: {have}")
    df = eval_answers(answers, names)
    df = df.filter(pl.col("model") == _model_name(key, names))
    if where:
        try:
            df = df.filter(where_expr(where))
        except pl.exceptions.PolarsError as err:
            raise ValueError(f"--where failed on the held-out answers: {err}") from None
    select = {
        "passed": pl.col("passed"),
        "failed": ~pl.col("passed"),
        "lucky": pl.col("passed") & ~pl.col("clean"),  # passed through a false step
        "truncated": pl.col("truncated"),
        "unverified": pl.col("unverified"),
        "fixed": pl.col("passed") & (pl.col("was_passed") == False),  # noqa: E712
        "broken": ~pl.col("passed") & pl.col("was_passed"),
    }
    counts = {r: int(df.filter(e).height) for r, e in select.items()}
    if reason is not None:
        if reason not in select:
            raise ValueError(f"--reason with --eval is one of {', '.join(EVAL_REASONS)}")
        if reason in ("fixed", "broken") and key == min(answers):
            raise ValueError(f"--reason {reason} compares with the model evaluated before, and "
                             f"{_model_name(key, names)} is the first")
        df = df.filter(select[reason])
    if df.height > n:
        df = df.sample(n, seed=seed)
    return df.sort("task_id").select(EVAL_COLUMNS), counts


# ---- rendering ----------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v == 0 or abs(v) >= 1:
            return f"{v:,.1f}"
        short = f"{v:.3g}"  # a rate just under 1 (0.9996) must not read "1", as a perfect one
        return short if abs(float(short)) < 1 else f"{math.copysign(math.floor(abs(v) * 1e4) / 1e4, v):.4f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    columns = columns or (list(rows[0]) if rows else [])
    tab = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for c in columns:
        tab.add_column(c, justify="left" if c == columns[0] or c == "stage" else "right")
    for r in rows:
        tab.add_row(*[Text(_fmt(r.get(c))) for c in columns])
    return tab


def render_summary(summary: Mapping[str, Any]) -> RenderableType:
    """rich renderable of `summarize(...)`: per round funnel, drops, slices, lengths; evals."""
    parts: list[RenderableType] = []
    for k, r in summary["rounds"].items():
        funnel_tab = Table(title="funnel", title_justify="left", show_edge=False)
        for c in ("stage", "count", "pct", "of prev", ""):
            funnel_tab.add_column(c, justify="left" if c in ("stage", "") else "right")
        for row in r["funnel"]:
            bar = "█" * round((row["pct"] or 0) / 5) if row["stage"] != "tasks" else ""
            pct = None if row["pct"] is None else f"{row['pct']:.1f}%"
            prev = None if row["pct_of_previous"] is None else f"{row['pct_of_previous']:.1f}%"
            funnel_tab.add_row(row["stage"], _fmt(row["count"]), _fmt(pct), _fmt(prev), bar)
        body: list[RenderableType] = [funnel_tab]
        if r.get("task_shortfall"):
            body.append(Text("fewer tasks than asked: " + "; ".join(r["task_shortfall"]),
                             style="dim"))
        if r.get("task_drops"):
            body.append(_table("tasks dropped before sampling", r["task_drops"]))
        if r["drop_reasons"]:
            body.append(_table("drop reasons", r["drop_reasons"]))
        for by, rows in r["pass_rate"].items():
            body.append(_table(f"pass rate by {by}", rows))
        body.append(_table("lengths", r["lengths"]))
        parts.append(Panel(Group(*body), title=f"round {k}", title_align="left"))
    if summary.get("eval"):
        parts.append(_table("eval accuracy per round", summary["eval"]))
    return Group(*parts)


def render_samples(samples: pl.DataFrame, width: int = 2000) -> RenderableType:
    """One panel per record: the task, the <think> reasoning, the answer, verdict and drop."""
    panels = []
    for r in samples.iter_rows(named=True):
        verdict = {True: "[green]passed[/]", False: "[red]failed[/]"}.get(
            r["passed"], "[yellow]unverified[/]"
        )
        score = "" if r["score"] is None else f", score {r['score']:.2f}"
        status = {"kept": "[green]kept[/]", "pending": "[yellow]not filtered yet[/]"}.get(
            r["status"], f"[red]dropped: {escape(str(r['drop_reason']))}[/]"
        )
        body = Group(
            Text("task", style="bold"), Text(r["prompt"] or "")[:width],
            Text("<think>", style="bold dim"), Text(r["reasoning"] or "")[:width],
            Text("answer", style="bold"), Text(r["answer"] or "")[:width],
            Text.from_markup(f"{verdict} by {escape(r['verifiers'] or '–')} "
                             f"({escape(r['verdict_reason'] or '–')}{score}) · {status}"),
            *([Text(r["verdict_detail"][:width], style="dim")] if r["verdict_detail"] else []),
        )  # fmt: skip
        title = f"round {r['round']} · {r['family']} · {r['source']} · {r['candidate_id']}"
        panels.append(Panel(body, title=Text(title), title_align="left"))
    return Group(*panels) if panels else Text("no records match")


def render_eval_answers(df: pl.DataFrame, counts: Mapping[str, int],
                        width: int = 2000) -> RenderableType:
    """One panel per held-out answer: the task, its reference, the reasoning and answer, the
    verdict and why; above them, how the model's answers split."""
    head = Text(" · ".join(f"{r} {counts[r]}" for r in EVAL_REASONS if r in counts), style="bold")
    panels = []
    for r in df.iter_rows(named=True):
        verdict = {True: "[green]passed[/]", False: "[red]failed[/]"}.get(
            r["passed"], "[yellow]unverified[/]")
        notes = [escape(r["verdict_reason"] or "–")]
        if r["passed"] and not r["clean"]:
            notes.append("a false step on the way")
        if r["truncated"]:
            notes.append("cut off at eval.max_tokens")
        if r["was_passed"] is not None and r["was_passed"] != r["passed"]:
            notes.append("fixed since the model before" if r["passed"] else
                         "the model before passed it")
        body = Group(
            Text("task", style="bold"), Text(r["prompt"] or "")[:width],
            Text("reference", style="bold"), Text(r["reference"] or "–")[:width],
            Text("<think>", style="bold dim"), Text(r["reasoning"] or "")[:width],
            Text("answer", style="bold"), Text(r["answer"] or "")[:width],
            Text.from_markup(f"{verdict} by {escape(r['verifiers'] or '–')} ({'; '.join(notes)})"),
            *([Text(f"detail: {r['verdict_detail']}"[:width], style="dim")]
              if r["verdict_detail"] else []),
        )  # fmt: skip
        title = f"{r['model']} · held-out · {r['family']} · {r['task_id']}"
        panels.append(Panel(body, title=Text(title), title_align="left"))
    return Group(head, *(panels or [Text("no held-out answers match")]))


def dataset_summary(frames: Mapping[str, pl.DataFrame]) -> dict[str, Any]:
    """Summary of an exported dataset: rows, columns, counts per slice, turn lengths."""
    out: dict[str, Any] = {}
    for name, df in frames.items():
        info: dict[str, Any] = {"rows": df.height, "columns": df.columns}
        for col in ("round", "domain", "family", "source", "verifier", "model"):
            if col in df.columns:
                vc = df.group_by(col).len().sort(["len", col], descending=[True, False])
                info[f"by_{col}"] = {str(a): b for a, b in vc.iter_rows()}
        if "messages" in df.columns and df.height:
            last = df.select(pl.col("messages").list.last().struct.field("content").alias("c"))
            s = last["c"].str.len_chars()
            info["assistant_chars"] = {"mean": s.mean(), "p50": s.median(), "max": s.max()}
            c = last["c"]  # exactly one of each tag: a nested or stray one is not the format
            info["think_format_ok"] = int((
                c.str.contains(r"^<think>[\s\S]*</think>\n")
                & (c.str.count_matches("<think>", literal=True) == 1)
                & (c.str.count_matches("</think>", literal=True) == 1)
            ).sum())
        if "pass_rate" in df.columns and df.height:
            s = df["pass_rate"]
            info["pass_rate"] = {"mean": s.mean(), "min": s.min(), "max": s.max(),
                                 "missing": s.null_count()}  # fmt: skip
        out[name] = info
    return out


def render_dataset_summary(summary: Mapping[str, Any]) -> RenderableType:
    parts: list[RenderableType] = []
    for name, info in summary.items():
        rows = [{"field": k, "value": v if not isinstance(v, list) else ", ".join(v)}
                for k, v in info.items()]  # fmt: skip
        parts.append(_table(name, rows, ["field", "value"]))
    return Group(*parts)


__all__ = [
    "all_records", "dataset_summary",
    "drop_reasons", "drop_stage", "eval_table", "funnel", "length_stats", "pass_rates",
    "record_table", "render_dataset_summary", "render_samples", "render_summary",
    "round_summary", "sample_records", "summarize", "where_expr",
]  # fmt: skip
