"""References for generated tasks, so that only tasks we can verify reach sampling.

Math: a task without a reference gets the majority answer over N samples (self-consistency,
Wang et al. 2022), answers grouped by the math verifier's equivalence (so `1/2`, `0.5` and
`\\frac{1}{2}` vote together), kept only when the samples that verify against it hold at
least `min_agreement` of the N and no other answer has as many (`majority_answers`).

Code: tests are checked against a reference solution through the code verifier; a task whose
tests fail its own reference is dropped with the verifier's reason. A code task with tests
but no reference gets the first sampled solution that passes them; one without tests gets
tests written by the engine and chosen by dual execution agreement (`codet.py`).

`task_id` is left unchanged when the reference is filled in, so lineage (`parent_id`) built
by the generators stays valid; the meta column records `reference_source: consensus`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import polars as pl

from thinkwheel import config, records
from thinkwheel.engines.base import Engine, SamplingParams, request_for
from thinkwheel.verifiers import Candidate, Task, Verdict, Verifier, get_verifier
from thinkwheel.verifiers.batch import verifier_options
from thinkwheel.verifiers.code import extract_code
from thinkwheel.verifiers.math_extract import extract_answer

# A batch verifier: one verdict per (candidate, task) pair, dispatching on task["verifier"].
VerifyFn = Callable[[Sequence[Candidate], Sequence[Task]], Sequence[Verdict]]
DROPPED_EXTRA = {"drop_reason": pl.Utf8, "detail": pl.Utf8}


def verify_with(verifiers: Mapping[str, Verifier]) -> VerifyFn:
    """A `VerifyFn` that sends each pair to `verifiers[task["verifier"]].verify_batch`."""

    def verify(cands: Sequence[Candidate], tasks: Sequence[Task]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(cands)
        by_name: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            by_name.setdefault(str(t.get("verifier")), []).append(i)
        for name, idx in by_name.items():
            if name not in verifiers:
                for i in idx:
                    out[i] = Verdict(None, reason="unknown_verifier", detail=name)
                continue
            res = verifiers[name].verify_batch([cands[i] for i in idx], [tasks[i] for i in idx])
            for i, v in zip(idx, res, strict=True):
                out[i] = v
        return [v for v in out if v is not None]

    return verify


def registry_verify_fn(**settings: Any) -> VerifyFn:
    """A `VerifyFn` over the verifier registry (`get_verifier`): each name is built once, on
    first use, with the options the verify stage would give it from the `verify` settings
    (workers, math_timeout_s, code_timeout_s, percent_policy); an unknown name gives
    passed=None."""
    built: dict[str, Verifier | None] = {}

    def get(name: str) -> Verifier | None:
        if name not in built:
            try:
                built[name] = get_verifier(name, **verifier_options(name, **settings))
            except KeyError:
                built[name] = None
        return built[name]

    def verify(cands: Sequence[Candidate], tasks: Sequence[Task]) -> Sequence[Verdict]:
        names = {str(t.get("verifier")) for t in tasks}
        found = {n: v for n in names if (v := get(n)) is not None}
        return verify_with(found)(cands, tasks)

    return verify


def answer_key(answer: str) -> str:
    """String identity before the (costlier) verifier equivalence: case and spaces ignored."""
    return re.sub(r"\s+", "", answer).lower()


def as_candidate(code: str) -> str:
    """A reference solution phrased as a completion, as the code verifier expects one."""
    return f"<think>reference solution</think>\n```python\n{code}\n```"


def majority_answers(
    tasks: Sequence[Mapping[str, Any]],
    completions: Sequence[Sequence[str]],
    verify_fn: VerifyFn | None,
) -> list[list[tuple[str, int]]]:
    """Per task, answer groups as (representative answer, votes), most votes first.

    Answers equal after `answer_key` share a group for free. With a verifier, each group's
    completion is checked against every other group's answer (one batched call over all
    tasks). Going from the most common answer down, an answer becomes a representative unless
    it is equivalent both ways to one already chosen. A representative's votes are the samples
    whose answer verifies against it, which is the share the verify stage will pass against
    it as the reference. Votes are never summed along a chain: equivalence is not transitive
    (`1.67` matches `5/3` and `1.674`, which differ). A sample can count for two
    representatives that disagree, so they tie instead of one of them getting its votes.
    `verify_fn` None is the string-only fallback.
    """
    groups: list[list[tuple[str, str, int]]] = []  # (answer, a completion with it, votes)
    for comps in completions:
        by_key: dict[str, list[str]] = {}
        first: dict[str, str] = {}
        for c in comps:
            a = extract_answer(c)
            if a:
                by_key.setdefault(answer_key(a), []).append(a)
                first.setdefault(answer_key(a), c)
        groups.append(
            [(Counter(v).most_common(1)[0][0], first[k], len(v)) for k, v in by_key.items()]
        )
    # (task, i, j): group i's completion verifies against group j's answer; both directions
    # are checked, as a decimal reference takes finer decimals but not the other way round
    pairs = [(t, i, j) for t, g in enumerate(groups) for i in range(len(g))
             for j in range(len(g)) if i != j]
    ok: set[tuple[int, int, int]] = set()
    if verify_fn is not None and pairs:
        cands = [groups[t][i][1] for t, i, _ in pairs]
        checks = [{**tasks[t], "reference": groups[t][j][0]} for t, _, j in pairs]
        ok = {p for p, v in zip(pairs, verify_fn(cands, checks), strict=True) if v.passed is True}
    out = []
    for t, g in enumerate(groups):
        reps: list[int] = []
        for i in sorted(range(len(g)), key=lambda i: -g[i][2]):  # stable: first seen wins ties
            if not any((t, i, r) in ok and (t, r, i) in ok for r in reps):
                reps.append(i)
        ranked = [
            (g[r][0], sum(n for j, (_, _, n) in enumerate(g) if j == r or (t, j, r) in ok))
            for r in reps
        ]
        out.append(sorted(ranked, key=lambda r: -r[1]))
    return out


def chat_requests(prompts: Sequence[str], system_prompt: str | None) -> list[list[dict[str, str]]]:
    return [request_for(p, system_prompt) for p in prompts]


def _default_params(samples: int) -> SamplingParams:
    s = config.SamplingConfig()
    return SamplingParams(
        n=samples, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed
    )


def with_meta(row: Mapping[str, Any], **extra: Any) -> str:
    try:
        meta = json.loads(row.get("meta") or "{}")
    except (TypeError, ValueError):
        meta = {}
    return json.dumps({**(meta if isinstance(meta, dict) else {}), **extra}, sort_keys=True)


def consensus_references(
    engine: Engine,
    tasks: pl.DataFrame,
    cfg: config.ConsensusConfig,
    verify_fn: VerifyFn | None = None,
    *,
    params: SamplingParams | None = None,
    system_prompt: str | None = config.ExportConfig().system_prompt,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(tasks with verified references, dropped rows with drop_reason and detail).

    `verify_fn` defaults to the registry's verifiers (`registry_verify_fn()`), so math
    answers are grouped by the math verifier's equivalence and code runs in its sandbox.
    Math tasks that have a reference, and tasks of other verifiers, pass through untouched.
    """
    verify_fn = verify_fn or registry_verify_fn()
    rows = records.conform(tasks, records.TASKS).to_dicts()
    params = params or _default_params(cfg.samples)
    params = replace(params, n=cfg.samples)
    kept: dict[int, dict[str, Any]] = {}
    dropped: list[dict[str, Any]] = []

    def drop(i: int, reason: str, detail: str = "") -> None:
        dropped.append({**rows[i], "drop_reason": reason, "detail": detail})

    math_idx = [i for i, r in enumerate(rows) if r["verifier"] == "math" and not r["reference"]]
    code_idx = [i for i, r in enumerate(rows) if r["verifier"] == "code"]
    handled = set(math_idx) | set(code_idx)
    kept.update({i: r for i, r in enumerate(rows) if i not in handled})

    if math_idx:
        kept.update(_math_references(engine, rows, math_idx, params, verify_fn, system_prompt,
                                     cfg, drop))
    if code_idx:
        kept.update(
            _code_references(engine, rows, code_idx, params, verify_fn, system_prompt, cfg, drop)
        )

    out = [kept[i] for i in sorted(kept)]
    return records.frame(out, records.TASKS), records.frame(
        dropped, {**records.TASKS, **DROPPED_EXTRA}
    )


def _math_references(
    engine: Engine,
    rows: list[dict[str, Any]],
    math_idx: list[int],
    params: SamplingParams,
    verify_fn: VerifyFn,
    system_prompt: str | None,
    cfg: config.ConsensusConfig,
    drop: Callable[..., None],
) -> dict[int, dict[str, Any]]:
    """Majority answer per task, kept above the agreement threshold and without a tie."""
    kept: dict[int, dict[str, Any]] = {}
    outs = engine.generate(chat_requests([rows[i]["prompt"] for i in math_idx], system_prompt), params)
    texts = [[c.text for c in o] for o in outs]
    ranked = majority_answers([rows[i] for i in math_idx], texts, verify_fn)
    for i, groups in zip(math_idx, ranked, strict=True):
        if not groups:
            drop(i, "no_answers", f"0/{cfg.samples} samples had an answer")
            continue
        (answer, top), second = groups[0], (groups[1][1] if len(groups) > 1 else 0)
        share = top / cfg.samples
        detail = f"top={top}/{cfg.samples} groups={len(groups)}"
        if share < cfg.min_agreement or top < min(2, cfg.samples):
            drop(i, "low_agreement", detail)
        elif top == second:
            drop(i, "tied_answers", detail)
        else:
            meta = with_meta(
                rows[i],
                reference_source="consensus",
                agreement=round(share, 4),
                consensus_samples=cfg.samples,
                answer_groups=len(groups),
            )
            kept[i] = {**rows[i], "reference": answer, "meta": meta}
    return kept


def _code_references(
    engine: Engine,
    rows: list[dict[str, Any]],
    idx: list[int],
    params: SamplingParams,
    verify_fn: VerifyFn,
    system_prompt: str | None,
    cfg: config.ConsensusConfig,
    drop: Callable[..., None],
) -> dict[int, dict[str, Any]]:
    """Validate tests against the reference; sample one where it is missing. Tasks without
    tests get generated ones (`codet`), or are dropped when `test_samples` is 0."""
    from thinkwheel.generators.codet import generated_tests

    kept: dict[int, dict[str, Any]] = {}
    todo = [i for i in idx if rows[i]["tests"]]
    no_tests = [i for i in idx if not rows[i]["tests"]]
    if no_tests and cfg.test_samples:
        kept.update(
            generated_tests(engine, rows, no_tests, params, verify_fn, system_prompt, cfg, drop)
        )
    else:
        for i in no_tests:
            drop(i, "no_tests", "a code task needs tests to be verifiable (test_samples: 0)")
    with_ref = [i for i in todo if rows[i]["reference"]]
    without = [i for i in todo if not rows[i]["reference"]]
    verdicts = (
        verify_fn([as_candidate(rows[i]["reference"]) for i in with_ref], [rows[i] for i in with_ref])
        if with_ref
        else []
    )
    for i, v in zip(with_ref, verdicts, strict=True):
        if v.passed is True:
            kept[i] = rows[i]
        elif v.passed is False:
            drop(i, "reference_fails_tests", f"{v.reason}: {v.detail}"[:300])
        else:
            drop(i, "tests_unverifiable", f"{v.reason}: {v.detail}"[:300])
    if without:
        outs = engine.generate(chat_requests([rows[i]["prompt"] for i in without], system_prompt), params)
        cand_codes = [[extract_code(c.text) for c in o] for o in outs]
        flat = [(k, c.strip("\n").rstrip()) for k, codes in enumerate(cand_codes) for c in codes if c]
        verdicts = verify_fn([as_candidate(c) for _, c in flat], [rows[without[k]] for k, _ in flat])
        passing: dict[int, tuple[str, int]] = {}
        for (k, code), v in zip(flat, verdicts, strict=True):
            if v.passed is True:
                ref, n = passing.get(k, (code, 0))
                passing[k] = (ref, n + 1)
        for k, i in enumerate(without):
            if k not in passing:
                drop(i, "no_passing_solution", f"0/{params.n} sampled solutions pass the tests")
                continue
            ref, n = passing[k]
            meta = with_meta(rows[i], reference_source="sampled", passing_samples=n)
            kept[i] = {**rows[i], "reference": ref, "meta": meta}
    return kept
