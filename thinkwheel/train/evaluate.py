"""Held-out evaluation: greedy pass@1, pass@k and maj@k, per family and per domain.

The held-out split is procedural tasks drawn with `EvalConfig.seed`, a seed no training round
uses; training-side generation must also get its prompts as `exclude_prompts`, since small
families can draw the same prompt under two seeds. Metrics:

- accuracy: greedy (temperature 0) pass@1. `passed=None` (could not verify) counts as wrong.
- clean_accuracy: greedy passes whose reasoning states no false arithmetic (the SFT filter's
  rule, `filters.arithmetic`): an answer check alone also counts lucky guesses reached through
  wrong steps (`7+6=15, ... = 43`), which a small model makes on exactly the tasks it is
  learning.
- pass@k: the unbiased estimator of Chen et al. (2021) from n >= k samples per task,
  1 - C(n-c, k) / C(n, k), with c the verified-correct samples.
- maj@k: majority vote over the first k samples. Votes are grouped by verifier equivalence:
  every verified-correct sample equals the reference, so they form one group; wrong samples
  are grouped by their extracted answer text and, for math, merged when the math verifier
  finds two of them equal (answer A checked against answer B as the reference). For code,
  wrong programs are grouped by their AST (formatting and comments don't split a vote);
  passing programs agree on every test, so they count as one answer. Samples with no answer
  abstain. The largest group wins; a tie goes to the group whose first sample came first.
  The task counts as solved when the winning group is the correct one.

With k == 1 no sampling happens and pass@k == maj@k == accuracy (greedy).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from thinkwheel import records
from thinkwheel.config import EvalConfig
from thinkwheel.engines.base import Completion, Engine, SamplingParams, request_for
from thinkwheel.filters.arithmetic import false_claims

VerifyFn = Callable[[pl.DataFrame, pl.DataFrame], pl.DataFrame]
Progress = Callable[[int], None]  # samples just finished
FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.DOTALL)
METRICS = ("accuracy", "clean_accuracy", "pass_at_k", "maj_at_k")


def heldout_tasks(cfg: EvalConfig) -> pl.DataFrame:
    """The fixed held-out split: procedural tasks from the eval seed (same seed, same tasks)."""
    from thinkwheel.generators.procedural import generate_tasks

    return generate_tasks(
        families=cfg.families,
        per_family=cfg.per_family,
        difficulty=cfg.difficulty,
        seed=cfg.seed,
        round=0,
    )


def evaluate(
    engine: Engine,
    tasks: pl.DataFrame,
    verify_fn: VerifyFn,
    *,
    k: int,
    max_tokens: int,
    seed: int,
    temperature: float = 0.8,
    n: int | None = None,
    system_prompt: str | None = None,
    stop: Sequence[str] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate on `tasks`, verify with `verify_fn(tasks, candidates)`, return the eval.json dict.

    `n` samples per task (default k, at least k) feed pass@k; use the system prompt the SFT set
    was exported with, so the model sees the same context it was trained on.
    """
    per_task = score_tasks(
        engine,
        tasks,
        verify_fn,
        k=k,
        max_tokens=max_tokens,
        seed=seed,
        temperature=temperature,
        n=n,
        system_prompt=system_prompt,
        stop=stop,
        progress=progress,
    )
    return summarize(per_task, k)


def samples_per_task(k: int, n: int | None = None) -> int:
    """Samples drawn per task besides the greedy answer: none unless pass@k is asked for."""
    return max(k, n or k) if k > 1 else 0


def score_tasks(
    engine: Engine,
    tasks: pl.DataFrame,
    verify_fn: VerifyFn,
    *,
    k: int,
    max_tokens: int,
    seed: int,
    temperature: float = 0.8,
    n: int | None = None,
    system_prompt: str | None = None,
    stop: Sequence[str] = (),
    progress: Progress | None = None,
) -> pl.DataFrame:
    """One row per task: greedy verdict, samples drawn, samples correct, pass@k, maj@k."""
    tasks = records.conform(tasks, records.TASKS)
    if tasks.height == 0:  # nothing to ask or judge; `summarize` turns this into its n = 0 block
        return pl.DataFrame(schema=ANSWER_SCHEMA)
    task_rows = tasks.to_dicts()
    cands = eval_candidates(
        engine,
        tasks,
        n=samples_per_task(k, n),
        max_tokens=max_tokens,
        seed=seed,
        temperature=temperature,
        system_prompt=system_prompt,
        stop=stop,
        progress=progress,
    )
    verdicts = verify_fn(tasks, cands.drop("eval_kind"))
    verdict = verdict_by_candidate(verdicts, tasks, cands)
    why = verdict_reasons(verdicts, tasks, cands.filter(pl.col("eval_kind") == "greedy"))
    by_task: dict[str, dict[str, list[dict]]] = {
        t["task_id"]: {"greedy": [], "sample": []} for t in task_rows
    }
    for c in cands.to_dicts():
        passed = verdict.get(c["candidate_id"])
        by_task[c["task_id"]][c["eval_kind"]].append({**c, "ok": passed is True, "passed": passed})

    votes = vote_groups(task_rows, by_task, k, verify_fn)
    rows = []
    for t in task_rows:
        greedy = by_task[t["task_id"]]["greedy"]
        samples = by_task[t["task_id"]]["sample"]
        g_ok = bool(greedy and greedy[0]["ok"])
        g_clean = g_ok and not false_claims(greedy[0]["completion"])
        c = sum(s["ok"] for s in samples)
        g = greedy[0] if greedy else {}
        rows.append(
            {
                "task_id": t["task_id"],
                "domain": t["domain"],
                "family": t["family"],
                "source": t["source"],
                "difficulty": t["difficulty"],
                "prompt": t["prompt"],
                "reference": t["reference"],
                "greedy_passed": g_ok,
                "greedy_clean": g_clean,
                "greedy_verified": bool(greedy) and greedy[0]["passed"] is not None,
                "greedy_truncated": bool(greedy) and greedy[0]["finish_reason"] == "length",
                "greedy_over_context": bool(greedy)
                and greedy[0]["finish_reason"] == "context_length",
                "n_samples": len(samples),
                "n_correct": c,
                "pass_at_k": pass_at_k(len(samples), c, k) if samples else float(g_ok),
                "maj_at_k": votes.get(t["task_id"], g_ok) if samples else g_ok,
                "greedy_completion": g.get("completion"),
                "candidate_id": g.get("candidate_id"),
                "reasoning": g.get("reasoning"),
                "answer": g.get("answer"),
                "passed": g.get("passed"),
                **why.get(g.get("candidate_id"), dict.fromkeys(_WHY)),
            }
        )
    return pl.DataFrame(rows, schema_overrides=ANSWER_SCHEMA, infer_schema_length=None)


# what a greedy answer's verdict says beside pass/fail (the own verifier's row when it answered)
_WHY = ("verifiers", "score", "verdict_reason", "verdict_detail")
# every answers column, in `score_tasks`' order: an empty task set still writes a table that
# reads back like any other (its columns typed, not an empty frame with none)
ANSWER_SCHEMA = {
    "task_id": pl.Utf8, "domain": pl.Utf8, "family": pl.Utf8, "source": pl.Utf8,
    "difficulty": pl.Int32, "prompt": pl.Utf8, "reference": pl.Utf8,
    "greedy_passed": pl.Boolean, "greedy_clean": pl.Boolean, "greedy_verified": pl.Boolean,
    "greedy_truncated": pl.Boolean, "greedy_over_context": pl.Boolean,
    "n_samples": pl.Int64, "n_correct": pl.Int64, "pass_at_k": pl.Float64, "maj_at_k": pl.Boolean,
    "greedy_completion": pl.Utf8, "candidate_id": pl.Utf8, "reasoning": pl.Utf8,
    "answer": pl.Utf8, "passed": pl.Boolean, "verifiers": pl.Utf8, "score": pl.Float64,
    "verdict_reason": pl.Utf8, "verdict_detail": pl.Utf8,
}


def verdict_reasons(
    verdicts: pl.DataFrame, tasks: pl.DataFrame, cands: pl.DataFrame
) -> dict[str, dict[str, Any]]:
    """candidate_id -> the verdict's verifier names, score, reason and detail, so a stored
    held-out answer says why it failed (`wrong_answer`, with what the verifier read), not
    only that: from the first failing row of those that judge it (`judging_rows`)."""
    rows = judging_rows(verdicts, tasks, cands)
    if rows.height == 0:
        return {}
    names = (
        records.conform(verdicts, records.VERDICTS)
        .group_by("candidate_id")
        .agg(pl.col("verifier").drop_nulls().unique(maintain_order=True).str.join(",")
             .alias("verifiers"))
    )
    why = (
        rows.with_row_index("_at")
        .sort((pl.col("passed") == True).fill_null(False), "_at")  # noqa: E712  failing first
        .group_by("candidate_id", maintain_order=True)
        .first()
        .join(names, on="candidate_id", how="left")
    )
    return {
        r["candidate_id"]: {"verifiers": r["verifiers"] or None, "score": r["score"],
                            "verdict_reason": r["reason"], "verdict_detail": r["detail"]}
        for r in why.iter_rows(named=True)
    }


def eval_candidates(
    engine: Engine,
    tasks: pl.DataFrame,
    *,
    n: int,
    max_tokens: int,
    seed: int,
    temperature: float,
    system_prompt: str | None,
    stop: Sequence[str] = (),
    progress: Progress | None = None,
) -> pl.DataFrame:
    """CANDIDATES rows: one greedy completion per task, plus `n` samples when n > 0.

    The extra column `eval_kind` ("greedy" | "sample") tells the two apart.
    """
    task_rows = tasks.to_dicts()
    requests = [request_for(t["prompt"], system_prompt) for t in task_rows]
    kw = {"progress": progress} if progress is not None else {}
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, stop=tuple(stop), seed=seed)
    runs = [("greedy", greedy, engine.generate(requests, greedy, **kw))]
    if n:
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens,
                                stop=tuple(stop), seed=seed)
        runs.append(("sample", params, engine.generate(requests, params, **kw)))
    model = getattr(engine, "model_name", "model")
    rows = [
        candidate_row(task, i, model, params, comp, kind)
        for kind, params, outs in runs
        for task, comps in zip(task_rows, outs, strict=True)
        for i, comp in enumerate(comps)
    ]
    # eval_kind in the schema: with no rows, `records.frame` keeps only the schema's columns
    return records.frame(rows, {**records.CANDIDATES, "eval_kind": pl.Utf8})


def summarize(per_task: pl.DataFrame, k: int) -> dict[str, Any]:
    """The eval.json dict: overall metrics plus the same metrics per family and per domain."""

    def block(df: pl.DataFrame) -> dict[str, Any]:
        return {
            "n": df.height,
            "accuracy": float(df["greedy_passed"].mean() or 0.0),
            "clean_accuracy": float(df["greedy_clean"].mean() or 0.0),
            "pass_at_k": float(df["pass_at_k"].mean() or 0.0),
            "maj_at_k": float(df["maj_at_k"].cast(pl.Float64).mean() or 0.0),
        }

    if per_task.height == 0:
        empty = {"n": 0, **dict.fromkeys(METRICS, 0.0)}
        return {**empty, "k": k, "per_family": {}, "per_domain": {}, "unverified": 0,
                "truncated": 0, "over_context": 0}
    overall = block(per_task)
    return {
        **overall,
        "k": k,
        "per_family": {
            str(key[0]): block(g) for key, g in sorted(per_task.group_by(["family"]), key=_key)
        },
        "per_domain": {
            str(key[0]): block(g) for key, g in sorted(per_task.group_by(["domain"]), key=_key)
        },
        "unverified": int((~per_task["greedy_verified"]).sum()),
        # greedy answers cut off at eval.max_tokens: most hold no final answer, so a high share
        # means the budget, not the model, set the score
        "truncated": int(per_task["greedy_truncated"].sum()),
        # prompts longer than the model's context: no answer, so wrong
        "over_context": int(per_task["greedy_over_context"].sum()),
    }


def _key(item: tuple[tuple[Any, ...], pl.DataFrame]) -> str:
    return str(item[0][0])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): chance that k of the n samples include a correct one."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def candidate_row(
    task: dict[str, Any],
    idx: int,
    model: str,
    params: SamplingParams,
    comp: Completion,
    kind: str,
) -> dict[str, Any]:
    gen = params.as_dict()
    reasoning, answer = records.split_think(comp.text)
    return {
        "candidate_id": records.candidate_id(task["task_id"], model, idx, gen),
        "task_id": task["task_id"],
        "round": task.get("round"),
        "sample_idx": idx,
        "model": model,
        "completion": comp.text,
        "reasoning": reasoning,
        "answer": answer,
        "finish_reason": comp.finish_reason,
        "n_tokens": comp.n_tokens,
        "gen_params": records.dumps(gen),
        "eval_kind": kind,
    }


def judging_rows(verdicts: pl.DataFrame, tasks: pl.DataFrame, cands: pl.DataFrame) -> pl.DataFrame:
    """The verdict rows that decide each of `cands`: its task's own verifier's when it answered,
    else all of them (extra rows such as `think_format` then count too)."""
    v = records.conform(verdicts, records.VERDICTS).drop("task_id")
    want = cands.select("candidate_id", "task_id").join(
        tasks.select("task_id", pl.col("verifier").alias("task_verifier")), on="task_id", how="left"
    )
    v = v.join(want, on="candidate_id", how="inner")
    own = v.filter(pl.col("verifier") == pl.col("task_verifier"))
    return pl.concat([own, v.join(own.select("candidate_id"), on="candidate_id", how="anti")])


def verdict_by_candidate(
    verdicts: pl.DataFrame, tasks: pl.DataFrame, cands: pl.DataFrame
) -> dict[str, bool | None]:
    """candidate_id -> passed (True/False/None) from the rows that judge it (`judging_rows`):
    all of them must pass. Callers count only `True` as correct."""
    if verdicts.height == 0:
        return {}
    agg = judging_rows(verdicts, tasks, cands).group_by("candidate_id").agg(
        pl.when(pl.col("passed").is_null().any())
        .then(pl.lit(None, dtype=pl.Boolean))
        .otherwise(pl.col("passed").all())
        .alias("passed")
    )
    return dict(agg.iter_rows())


def vote_groups(
    task_rows: Sequence[dict[str, Any]],
    by_task: dict[str, dict[str, list[dict]]],
    k: int,
    verify_fn: VerifyFn,
) -> dict[str, bool]:
    """maj@k verdict per task (see the module docstring for how votes are grouped)."""
    keys: dict[str, list[str | None]] = {}
    for t in task_rows:
        samples = by_task[t["task_id"]]["sample"][:k]
        keys[t["task_id"]] = [vote_key(t["domain"], s) for s in samples]
    merges = math_merges(task_rows, by_task, keys, k, verify_fn)
    result = {}
    for t in task_rows:
        samples = by_task[t["task_id"]]["sample"][:k]
        if not samples:
            continue
        parent = list(range(len(samples)))

        def find(i: int, parent: list[int] = parent) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def union(i: int, j: int, parent: list[int] = parent) -> None:
            a, b = sorted((find(i), find(j)))
            parent[b] = a

        tkeys = keys[t["task_id"]]
        first_ok = next((i for i, s in enumerate(samples) if s["ok"]), None)
        seen: dict[str, int] = {}
        for i, s in enumerate(samples):
            if s["ok"]:
                union(i, first_ok)
            elif tkeys[i] is not None:
                if tkeys[i] in seen:
                    union(i, seen[tkeys[i]])
                else:
                    seen[tkeys[i]] = i
        for i, j in merges.get(t["task_id"], []):
            union(i, j)
        sizes: dict[int, list[int]] = {}
        for i, s in enumerate(samples):
            if s["ok"] or tkeys[i] is not None:  # no answer: abstain
                sizes.setdefault(find(i), []).append(i)
        if not sizes:
            result[t["task_id"]] = False
            continue
        winner = min(sizes.values(), key=lambda g: (-len(g), min(g)))
        result[t["task_id"]] = bool(samples[winner[0]]["ok"])
    return result


def vote_key(domain: str, sample: dict[str, Any]) -> str | None:
    """What a wrong sample votes for: its normalised answer, or None when it gave none."""
    answer = (sample.get("answer") or "").strip()
    if not answer:
        return None
    if domain == "code":
        return code_key(answer)
    if domain == "math":
        extracted = extract_math_answer(sample.get("completion") or answer)
        return None if extracted is None else re.sub(r"\s+", "", extracted)
    return re.sub(r"\s+", " ", answer)


def code_key(answer: str) -> str:
    blocks = FENCE.findall(answer)
    code = (blocks[-1] if blocks else answer).strip()
    try:
        return ast.dump(ast.parse(code))
    except (SyntaxError, ValueError):
        return re.sub(r"\s+", " ", code)


def extract_math_answer(completion: str) -> str | None:
    """The math verifier's own answer extraction when present, else the text after </think>."""
    try:
        from thinkwheel.verifiers.math_extract import extract_answer
    except Exception:  # the verifiers are optional for evaluation of other domains
        return records.split_think(completion)[1] or None
    return extract_answer(completion)


def math_merges(
    task_rows: Sequence[dict[str, Any]],
    by_task: dict[str, dict[str, list[dict]]],
    keys: dict[str, list[str | None]],
    k: int,
    verify_fn: VerifyFn,
) -> dict[str, list[tuple[int, int]]]:
    """Pairs of wrong math samples the verifier calls equal (one batched verify call)."""
    pseudo_tasks, pseudo_cands, pairs = [], [], {}
    for t in task_rows:
        if t["domain"] != "math":
            continue
        samples = by_task[t["task_id"]]["sample"][:k]
        reps: dict[str, int] = {}
        for i, s in enumerate(samples):
            key = keys[t["task_id"]][i]
            if not s["ok"] and key is not None and key not in reps:
                reps[key] = i
        idx = list(reps.values())
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                ptid = records.content_id("eq-task", t["task_id"], i)
                pcid = records.content_id("eq-cand", t["task_id"], i, j)
                pseudo_tasks.append({**t, "task_id": ptid, "reference": keys[t["task_id"]][i]})
                pseudo_cands.append({**samples[j], "task_id": ptid, "candidate_id": pcid})
                pairs[pcid] = (t["task_id"], i, j)
    if not pairs:
        return {}
    ptasks = records.frame(pseudo_tasks, records.TASKS).unique("task_id", keep="first")
    pcands = records.frame(pseudo_cands, records.CANDIDATES).select(list(records.CANDIDATES))
    verdict = verdict_by_candidate(verify_fn(ptasks, pcands), ptasks, pcands)
    out: dict[str, list[tuple[int, int]]] = {}
    for pcid, (tid, i, j) in pairs.items():
        if verdict.get(pcid) is True:
            out.setdefault(tid, []).append((i, j))
    return out
