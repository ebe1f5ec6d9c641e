"""Record schemas shared by every stage, and the content-hash ids that make stages idempotent.

Tables are polars DataFrames. Free-form fields (`meta`, `gen_params`, `detail`) are JSON
strings so schemas stay flat and parquet round-trips stay exact.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring_ascii
from typing import Any

import polars as pl

TASKS: dict[str, pl.DataType] = {
    "task_id": pl.Utf8,
    "round": pl.Int32,
    "domain": pl.Utf8,  # math | code | ...
    "family": pl.Utf8,  # e.g. addition, linear_equation, reverse_string, self_instruct
    "difficulty": pl.Int32,
    "source": pl.Utf8,  # seed | self_instruct | evol:<op> | procedural:<family>
    "parent_id": pl.Utf8,
    "prompt": pl.Utf8,
    "reference": pl.Utf8,  # gold answer (math) or reference solution (code)
    "tests": pl.List(pl.Utf8),  # code: one test per item (assert code, or JSON {"stdin","stdout"})
    "verifier": pl.Utf8,  # registered verifier name
    "meta": pl.Utf8,  # JSON
}

CANDIDATES: dict[str, pl.DataType] = {
    "candidate_id": pl.Utf8,
    "task_id": pl.Utf8,
    "round": pl.Int32,
    "sample_idx": pl.Int32,
    "model": pl.Utf8,
    "completion": pl.Utf8,  # raw text as generated
    "reasoning": pl.Utf8,  # inside <think>...</think>
    "answer": pl.Utf8,  # after </think>
    "finish_reason": pl.Utf8,  # stop | length | what a server said (content_filter, abort)
    "n_tokens": pl.Int32,
    "gen_params": pl.Utf8,  # JSON
}

VERDICTS: dict[str, pl.DataType] = {
    "candidate_id": pl.Utf8,
    "task_id": pl.Utf8,
    "verifier": pl.Utf8,
    "passed": pl.Boolean,  # null = could not verify; never counted as correct
    "score": pl.Float64,
    "reason": pl.Utf8,
    "detail": pl.Utf8,
    "seconds": pl.Float64,
}

# One row per candidate after filtering; `drop_reason` null means kept.
FILTERED: dict[str, pl.DataType] = {
    "candidate_id": pl.Utf8,
    "task_id": pl.Utf8,
    "drop_reason": pl.Utf8,
    "drop_ref": pl.Utf8,  # id of the row / benchmark item it collided with
}

SCHEMAS = {"tasks": TASKS, "candidates": CANDIDATES, "verdicts": VERDICTS, "filtered": FILTERED}


def content_id(*parts: Any, length: int = 16) -> str:
    """Stable id from content: the same inputs give the same id in every process and run."""
    h = hashlib.sha256()
    for p in parts:
        h.update(_json(p).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:length]


def _json(value: Any) -> str:
    """`json.dumps(value, sort_keys=True, default=str)`, without building an encoder for the
    text and None parts that every task id hashes (a third of reading a large task file)."""
    if type(value) is str:
        return encode_basestring_ascii(value)
    if value is None:
        return "null"
    return json.dumps(value, sort_keys=True, default=str)


def task_id(domain: str, prompt: str, reference: str | None) -> str:
    return content_id("task", domain, prompt, reference)


def candidate_id(task_id_: str, model: str, sample_idx: int, gen_params: Mapping[str, Any]) -> str:
    return content_id("cand", task_id_, model, sample_idx, dict(gen_params))


def frame(rows: Iterable[Mapping[str, Any]], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Build a DataFrame with exactly `schema`'s columns (missing ones null, extras kept)."""
    rows = list(rows)
    df = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    return conform(df, schema)


def conform(df: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Cast to `schema`, add missing columns as nulls; schema columns first, extras after."""
    cols = []
    for name, dtype in schema.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    extras = [c for c in df.columns if c not in schema]
    if df.width == 0:
        return pl.DataFrame(schema=dict(schema))
    return df.select(cols + extras)


def split_think(completion: str) -> tuple[str | None, str]:
    """Split a completion into (reasoning, answer).

    Tolerates a missing opening `<think>` (templates often pre-fill it). Returns reasoning
    None when there is no `</think>`: then the whole text is the answer.
    """
    close = completion.rfind("</think>")
    if close == -1:
        return None, completion.strip()
    head, answer = completion[:close], completion[close + len("</think>") :]
    open_ = head.find("<think>")
    reasoning = head[open_ + len("<think>") :] if open_ != -1 else head
    return reasoning.strip(), answer.strip()


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)

