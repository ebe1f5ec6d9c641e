"""Filter stages over polars frames: task dedup, and the candidate filter that explains every drop.

Every row keeps a single `drop_reason` (null = kept) and a `drop_ref` (the survivor row or the
benchmark item it collided with). The first applicable reason wins, in funnel order:
verification -> decontamination -> quality -> near-dedup: a task-wide reason (a benchmark copy,
the answer in the prompt) before a sample's own. Dedup runs last and only among rows
still kept, so a cluster's survivor is never a row these filters dropped; the per-task cap
(`keep_per_task`, applied after them) can still drop a survivor, whose duplicates then point
at a row that is not in the SFT set either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from thinkwheel import config, records
from thinkwheel.filters import quality
from thinkwheel.filters.arithmetic import false_claims
from thinkwheel.filters.decontam import build_index, find_contamination
from thinkwheel.filters.minhash import MinHashParams, cluster_survivors, near_duplicate_pairs
from thinkwheel.filters.steps import unstated_step

NOT_VERIFIED = "not_verified"  # a verifier said passed=False
UNVERIFIABLE = "unverifiable"  # passed=None or no verdict: never counted as correct
CONTAMINATED = "contaminated"  # task prompt overlaps a benchmark item; drop_ref = "bench:idx"
NEAR_DUPLICATE = "near_duplicate"  # drop_ref = id of the surviving row
DROP_REASONS: tuple[str, ...] = (
    NOT_VERIFIED,
    UNVERIFIABLE,
    *quality.QUALITY_REASONS,
    CONTAMINATED,
    NEAR_DUPLICATE,
)
FUNNEL_STAGES = ("generated", "verified", "decontaminated", "quality", "deduped", "kept")
_STAGE_OF = {NOT_VERIFIED: "verified", UNVERIFIABLE: "verified", CONTAMINATED: "decontaminated"}
_STAGE_OF |= dict.fromkeys(quality.QUALITY_REASONS, "quality")
_STAGE_OF[NEAR_DUPLICATE] = "deduped"


def minhash_params(cfg: config.DedupConfig) -> MinHashParams:
    return MinHashParams(
        num_perm=cfg.num_perm,
        ngram=cfg.ngram,
        kind=cfg.shingle,
        mask_numbers=cfg.mask_numbers,
        mask_names=cfg.mask_names,
    )


def _with_drop_columns(df: pl.DataFrame) -> pl.DataFrame:
    for col in ("drop_reason", "drop_ref"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.Utf8).alias(col))
    return df


def _set_drops(
    df: pl.DataFrame, mask: np.ndarray, reason: str, refs: Sequence[str | None]
) -> pl.DataFrame:
    """Set drop_reason/drop_ref where `mask` and the row is not already dropped."""
    free = df["drop_reason"].is_null().to_numpy() & np.asarray(mask, dtype=bool)
    new_reason = np.where(free, reason, np.array(df["drop_reason"].to_list(), dtype=object))
    new_ref = np.where(
        free, np.array(list(refs), dtype=object), np.array(df["drop_ref"].to_list(), dtype=object)
    )
    return df.with_columns(
        pl.Series("drop_reason", new_reason.tolist(), dtype=pl.Utf8),
        pl.Series("drop_ref", new_ref.tolist(), dtype=pl.Utf8),
    )


def _near_dups(
    df: pl.DataFrame,
    texts: pl.Series,
    ids: pl.Series,
    cfg: config.DedupConfig,
    groups: pl.Series | None = None,
    rank: np.ndarray | None = None,
    exact: np.ndarray | None = None,
) -> pl.DataFrame:
    """`exact` marks rows whose identity is exact already: two of them are never a pair, and
    one is never dropped (it can still be the survivor another row is dropped for)."""
    live = np.flatnonzero(df["drop_reason"].is_null().to_numpy())
    if live.size < 2:
        return df
    pairs = near_duplicate_pairs(
        texts.gather(live),
        threshold=cfg.threshold,
        params=minhash_params(cfg),
        groups=None if groups is None else groups.gather(live).to_numpy(),
        bands=cfg.bands,
        confirm=cfg.confirm,
    )
    order = np.zeros(live.size) if rank is None else np.asarray(rank, dtype=np.float64)[live]
    if exact is not None:
        ex = np.asarray(exact, dtype=bool)[live]
        pairs = pairs.filter(~pl.Series(ex[pairs["i"].to_numpy()] & ex[pairs["j"].to_numpy()]))
        order = np.where(ex, order.min(initial=0) - 1, order)  # an exact row survives its cluster
    survivor = cluster_survivors(live.size, pairs, order)
    if exact is not None:
        survivor[ex] = np.flatnonzero(ex)
    mask = np.zeros(df.height, dtype=bool)
    refs = np.full(df.height, None, dtype=object)
    dup = survivor != np.arange(live.size)
    mask[live[dup]] = True
    refs[live[dup]] = np.array(ids.to_list(), dtype=object)[live[survivor[dup]]]
    return _set_drops(df, mask, NEAR_DUPLICATE, refs.tolist())


def dedup_tasks(tasks: pl.DataFrame, cfg: config.DedupConfig) -> pl.DataFrame:
    """Near-duplicate tasks get drop_reason "near_duplicate" (drop_ref = surviving task_id).

    Runs on the prompt (prompt + reference when cfg.field == "both"); the earliest row of a
    cluster survives. Clusters are transitive (A~B and B~C put C with A), so a grown table can
    drop a task kept before when a new row links it to an earlier one (A and C at Jaccard
    0.6 both stay until a B close to each arrives).
    Procedural tasks are never near-duplicates of each other: their prompts share a template,
    so `Solve for x: -2x - 15 = -3` read as a copy of `... = -11` (the bench recipe lost 356 of
    1,920 equations and 25 of 45 list_filter_sum tasks that way), while their ids already tell
    distinct tasks apart exactly. The same holds for the tasks you bring (source "seed"): your
    set is yours to curate. A generated task that near-copies either is still dropped.
    """
    out = _with_drop_columns(tasks)
    if not cfg.enabled or out.height < 2:
        return out
    text = out["prompt"].cast(pl.Utf8).fill_null("")
    if cfg.field == "both" and "reference" in out.columns:
        text = text + "\n" + out["reference"].cast(pl.Utf8).fill_null("")
    exact = None
    if "source" in out.columns:
        source = out["source"].cast(pl.Utf8)
        exact = (source.str.starts_with("procedural:") | (source == "seed")).fill_null(False).to_numpy()
    return _near_dups(out, text, out["task_id"], cfg, exact=exact)


def decontaminate_tasks(
    tasks: pl.DataFrame, benchmarks: Mapping[str, Sequence[str]] | None, cfg: config.DecontamConfig
) -> pl.DataFrame:
    """Tasks whose prompt overlaps a benchmark item get "contaminated", drop_ref "bench:idx"."""
    out = _with_drop_columns(tasks)
    if not cfg.enabled or not benchmarks or out.height == 0:
        return out
    index = build_index(
        benchmarks,
        ngram=cfg.ngram,
        min_overlap=cfg.min_overlap,
        min_item_words=cfg.min_item_words,
        fuzzy_threshold=cfg.fuzzy_threshold,
        fuzzy_params=MinHashParams(num_perm=64, ngram=cfg.fuzzy_ngram),
    )
    hits = find_contamination(out["prompt"], index)
    mask = np.zeros(out.height, dtype=bool)
    refs = np.full(out.height, None, dtype=object)
    docs = hits["doc"].to_numpy()
    mask[docs] = True
    refs[docs] = np.array(hits["ref"].to_list(), dtype=object)
    return _set_drops(out, mask, CONTAMINATED, refs.tolist())


def verdict_status(verdicts: pl.DataFrame) -> pl.DataFrame:
    """(candidate_id, passed) with all verdicts of a candidate combined: any False -> False,
    else any None -> None, else True."""
    return verdicts.group_by("candidate_id").agg(
        pl.when(pl.col("passed").not_().any())
        .then(False)
        .when(pl.col("passed").is_null().any())
        .then(None)
        .otherwise(True)
        .alias("passed")
    )


def _prepare(candidates: pl.DataFrame) -> pl.DataFrame:
    c = candidates
    if "reasoning" not in c.columns or "answer" not in c.columns:
        split = [records.split_think(t or "") for t in c["completion"].to_list()]
        c = c.with_columns(
            pl.Series("reasoning", [s[0] for s in split], dtype=pl.Utf8),
            pl.Series("answer", [s[1] for s in split], dtype=pl.Utf8),
        )
    if "sample_idx" not in c.columns:
        c = c.with_row_index("sample_idx")
    return c


def leaked_tasks(tasks: pl.DataFrame, q: config.QualityConfig) -> list[str]:
    """The tasks whose prompt gives their answer away (`quality.answer_leaks`)."""
    return [
        row["task_id"]
        for row in tasks.select("task_id", "prompt", "reference").iter_rows(named=True)
        if quality.answer_leaks(row["prompt"], row["reference"], q.answer_leak_min_chars)
    ]


def _quality_drops(c: pl.DataFrame, tasks: pl.DataFrame, q: config.QualityConfig) -> pl.DataFrame:
    none = [None] * c.height
    # first: a task-wide reason must mark each passing sample, or one dropped for a sample's own
    # reason (a false step) left the task looking clean to the GRPO export
    c = _set_drops(c, c["task_id"].is_in(leaked_tasks(tasks, q)).to_numpy(), quality.ANSWER_LEAK, none)
    reasons = quality.quality_reasons(
        c,
        require_think=q.require_think,
        min_answer_chars=q.min_answer_chars,
        max_completion_chars=q.max_completion_chars,
        min_reasoning_chars=q.min_reasoning_chars,
        max_repeat_ngram_ratio=q.max_repeat_ngram_ratio,
        repeat_ngram=q.repeat_ngram,
        max_garbage_ratio=q.max_garbage_ratio,
    )
    for name in quality.QUALITY_REASONS:
        c = _set_drops(c, (reasons == name).fill_null(False).to_numpy(), name, none)
    if q.check_arithmetic:  # only rows still kept: most candidates are already dropped
        kept = c["drop_reason"].is_null().to_numpy()
        claims = [
            (false_claims(r) or [None])[0] if keep else None
            for r, keep in zip(c["completion"].to_list(), kept, strict=True)  # answer too
        ]
        c = _set_drops(c, np.array([x is not None for x in claims]), quality.FALSE_ARITHMETIC, claims)
    if q.check_steps:
        missing = _missing_steps(c, tasks)
        c = _set_drops(c, np.array([x is not None for x in missing]), quality.MISSING_STEP, missing)
    return c


def _missing_steps(c: pl.DataFrame, tasks: pl.DataFrame) -> list[str | None]:
    """Per row still kept, the first worked step of its procedural task its completion does not
    state (the whole completion, as the false-arithmetic check reads it)."""
    info = c.select("task_id").join(
        records.conform(tasks, records.TASKS).select("task_id", "family", "source", "prompt")
        .unique("task_id", keep="first"),
        on="task_id", how="left", maintain_order="left",
    )
    return [
        unstated_step(row["source"], row["family"], row["prompt"], text) if kept else None
        for row, text, kept in zip(info.iter_rows(named=True), c["completion"].to_list(),
                                   c["drop_reason"].is_null().to_list(), strict=True)
    ]


def _decontam_drops(
    c: pl.DataFrame,
    tasks: pl.DataFrame,
    benchmarks: Mapping[str, Sequence[str]],
    cfg: config.DecontamConfig,
) -> pl.DataFrame:
    # one row per task: a task listed twice (tasks of two calls concatenated) would otherwise
    # be flagged twice and the left join would repeat its candidates
    tasks = tasks.select("task_id", "prompt").unique("task_id", keep="first")
    flagged = decontaminate_tasks(tasks, benchmarks, cfg)
    flagged = flagged.filter(pl.col("drop_reason") == CONTAMINATED).select("task_id", "drop_ref")
    refs = c.select("task_id").join(flagged, on="task_id", how="left", maintain_order="left")
    hit = refs["drop_ref"].is_not_null().to_numpy()
    return _set_drops(c, hit, CONTAMINATED, refs["drop_ref"].to_list())


def _dedup_drops(c: pl.DataFrame, d: config.DedupConfig) -> pl.DataFrame:
    reasoning = c["reasoning"].cast(pl.Utf8).fill_null("")
    answer = c["answer"].cast(pl.Utf8).fill_null("")
    if d.field == "both":
        text = reasoning + "\n" + answer
    else:  # a sample that did not think is its answer: empty texts never pair, so ten copies
        # of one bare answer all survived the dedup they are the clearest case for
        text = pl.select(pl.when(reasoning.str.strip_chars() == "").then(answer)
                         .otherwise(reasoning)).to_series()
    unverified = (~c["passed"].fill_null(False)).cast(pl.Int64).to_numpy()
    lengths = text.str.len_chars().to_numpy()
    order = np.lexsort((c["sample_idx"].to_numpy(), lengths, unverified))
    rank = np.empty(c.height)
    rank[order] = np.arange(c.height)
    return _near_dups(c, text, c["candidate_id"], d, groups=c["task_id"], rank=rank)


def filter_candidates(
    tasks: pl.DataFrame,
    candidates: pl.DataFrame,
    verdicts: pl.DataFrame,
    cfg: config.FilterConfig,
    benchmarks: Mapping[str, Sequence[str]] | None = None,
) -> pl.DataFrame:
    """records.FILTERED, one row per candidate: why it was dropped (null = kept) and with what.

    Order: verification (all verdicts of a candidate must pass), decontamination of the task
    prompt, quality (the task's answer leaking into its prompt first), then per-task
    reasoning-path near-dedup among the rows still kept (RFT). The task-wide reasons come
    before any sample's own, so every passing sample of such a task carries one (the GRPO
    export leaves those tasks out). Survivor rule: verified, then
    shortest reasoning, then earliest sample_idx. `cfg.dedup.field`: "reasoning" (default)
    or "both" (reasoning + answer); "prompt" means reasoning here, as one task's candidates
    share their prompt.
    """
    c = _prepare(candidates)
    c = c.join(verdict_status(verdicts), on="candidate_id", how="left")
    c = _with_drop_columns(c.drop("drop_reason", "drop_ref", strict=False))
    none = [None] * c.height
    c = _set_drops(c, (~c["passed"]).fill_null(False).to_numpy(), NOT_VERIFIED, none)
    c = _set_drops(c, c["passed"].is_null().to_numpy(), UNVERIFIABLE, none)
    if cfg.decontam.enabled and benchmarks and c.height:
        c = _decontam_drops(c, tasks, benchmarks, cfg.decontam)
    if cfg.quality.enabled and c.height:
        c = _quality_drops(c, tasks, cfg.quality)
    if cfg.dedup.enabled and c.height > 1:
        c = _dedup_drops(c, cfg.dedup)
    return records.conform(c.select(list(records.FILTERED)), records.FILTERED)


def funnel(filtered: pl.DataFrame) -> dict:
    """Counts per funnel stage (rows still in after each stage), per drop reason, and
    contaminated rows per benchmark."""
    reasons = filtered["drop_reason"]
    counts = reasons.drop_nulls().value_counts()
    by_reason = dict(zip(counts["drop_reason"].to_list(), counts["count"].to_list(), strict=True))
    out: dict = {"generated": filtered.height}
    left = filtered.height
    for stage in FUNNEL_STAGES[1:-1]:
        left -= sum(n for r, n in by_reason.items() if _STAGE_OF.get(r) == stage)
        out[stage] = left
    out["kept"] = int(reasons.is_null().sum())
    out["drop_reasons"] = {r: by_reason[r] for r in sorted(by_reason)}
    bench = filtered.filter(pl.col("drop_reason") == CONTAMINATED)["drop_ref"]
    names = bench.drop_nulls().str.replace(r":[^:]*$", "").value_counts()
    out["contaminated_by"] = (
        dict(zip(names[names.columns[0]].to_list(), names["count"].to_list(), strict=True))
        if len(names)
        else {}
    )
    return out
