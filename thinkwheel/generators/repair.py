"""Step repair: a task whose every sample states false arithmetic gets one more candidate, its
first repairable sample continued by the same model from its first false step, corrected.

Why: what a model learns from its own verified samples is biased towards what it already
solves. The bundled model's traces under-cover exactly the steps it gets wrong (carries,
borrows; `bench/trace_coverage.py`), and no amount of resampling finds them: a task it fails
twice it nearly always fails again, and re-sampling from the step before the error repeats the
error (`bench/step_resample.py`). Corrected at that step (as a calculator fills in GSM8K's
annotated steps, Cobbe et al. 2021), the model writes on through it, and a repaired trace that
states no false step and reaches the verified answer is the data the flywheel was missing.
The model still writes every step; the checker only supplies the value of a step it stated
wrongly, at most `max_repairs` times per trace. The candidate goes through the verify stage
and the filters like any other and is marked in its `gen_params` (`"repairs": k`).

A procedural task of the column families or linear_equation knows its worked steps
(`sampling.repair_steps`): there a step that is true but off the algorithm is wrong too, and
the checker writes the worked step in its place. A model that never borrows writes `11-2=9,
8-0=8` for 81 - 2, nothing false in it, so the value alone only corrected the conclusion, a
leap the step check drops. A column task's conclusion is put right there too: with every step
right, the bundled model can still restate the task wrongly (`So 177 * 6 = 1062` for 17 * 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import polars as pl

from thinkwheel.engines.base import Completion, Engine, Request, SamplingParams, as_messages
from thinkwheel.filters.arithmetic import false_claims, repair_head
from thinkwheel.filters.steps import conclusion_cut, missing_step, worked_step_cut

Steps = Sequence[str] | None  # a task's worked steps (filters.steps.task_steps), if it has them
Conclusion = str | None  # and its worked conclusion (filters.steps.task_conclusion)


def _wrong(text: str, steps: Steps, conclusion: Conclusion = None) -> bool:
    """The trace states a false step, leaves out one of the task's worked steps, or concludes
    other than the worked conclusion."""
    return (bool(false_claims(text)) or bool(steps and missing_step(text, steps))
            or bool(conclusion and conclusion_cut(text, conclusion, steps or ())))


def _head(text: str, steps: Steps, conclusion: Conclusion = None) -> str | None:
    """Where to continue from: the first step that is not the worked one, put right (when the
    task has worked steps to compare with), or with them all stated a conclusion that is not
    the worked one; else the first false step, corrected. A false claim before that step is
    corrected first, or, when it cannot be, the trace is left: a head that keeps it could
    never come out clean."""
    cut = worked_step_cut(text, steps) if steps else None
    if cut is None and steps and conclusion and not missing_step(text, steps):
        cut = conclusion_cut(text, conclusion, steps)
    if cut is None or false_claims(text[: cut[0]]):
        return repair_head(text)
    return text[: cut[0]] + cut[1]


def repaired(
    engine: Engine,
    requests: Sequence[Request],
    outs: Sequence[Sequence[Completion]],
    params: SamplingParams,
    max_repairs: int,
    steps: Sequence[Steps] | None = None,
    conclusions: Sequence[Conclusion] | None = None,
) -> dict[int, tuple[Completion, int]]:
    """Request index -> (repaired completion, repairs made), for the requests whose samples are
    all wrong and whose repaired trace is not. Wrong is a false step, or, with `steps` (each
    request's worked steps, `sampling.repair_steps`), a worked step left out, or with
    `conclusions` too (each request's worked conclusion), another conclusion. Each pass
    continues every open trace in one engine call, so the cost is at most `max_repairs` calls
    of one sample each. Each continuation has the whole `max_tokens` budget; `n_tokens` counts
    what they wrote."""
    one = replace(params, n=1)
    worked = list(steps) if steps is not None else [None] * len(outs)
    ends = list(conclusions) if conclusions is not None else [None] * len(outs)
    open_: dict[int, tuple[str, int, int]] = {}  # index -> (head, repairs made, tokens written)
    for i, completions in enumerate(outs):
        if max_repairs < 1 or not completions:
            continue
        if not all(c.text and _wrong(c.text, worked[i], ends[i]) for c in completions):
            continue  # a sample is clean (or empty): nothing to repair
        for c in completions:
            if head := _head(c.text, worked[i], ends[i]):
                open_[i] = (head, 0, 0)
                break
    done: dict[int, tuple[Completion, int]] = {}
    for _ in range(max_repairs):
        if not open_:
            break
        order = sorted(open_)
        calls = [[*as_messages(requests[i]), {"role": "assistant", "content": open_[i][0]}]
                 for i in order]
        for i, (c,) in zip(order, engine.generate(calls, one), strict=True):
            head, repairs, tokens = open_[i]
            if not c.text or c.finish_reason == "context_length":  # no continuation came back
                del open_[i]
                continue
            text = head + c.text
            repairs, tokens = repairs + 1, tokens + c.n_tokens
            if not _wrong(text, worked[i], ends[i]):
                done[i] = (Completion(text=text, finish_reason=c.finish_reason, n_tokens=tokens),
                           repairs)
                del open_[i]
            elif (nxt := _head(text, worked[i], ends[i])) is None or len(nxt) <= len(head):
                del open_[i]  # nothing more this can correct
            else:
                open_[i] = (nxt, repairs, tokens)
    return done


def repaired_ids(cands: pl.DataFrame) -> pl.Series:
    """The ids of the repaired candidates (`"repairs"` in their gen_params)."""
    if "gen_params" not in cands.columns:
        return pl.Series("candidate_id", [], dtype=pl.Utf8)
    return cands.filter(repairs_made().gt(0))["candidate_id"]


def repairs_made() -> pl.Expr:
    """A candidate's repairs from its gen_params (0 for the model's own sample): the one place
    the mark is read."""
    return pl.col("gen_params").str.json_path_match("$.repairs").cast(pl.Int32).fill_null(0)


def own_verdicts(cands: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """The verdicts of the model's own samples: a repaired trace is not one the model wrote
    alone, so a task's pass rate (the GRPO band, the report's histogram) leaves it out."""
    return verdicts.filter(~pl.col("candidate_id").is_in(repaired_ids(cands).implode()))


def dpo_candidates(cands: pl.DataFrame, kept_ids: list[str]) -> pl.DataFrame:
    """The candidates DPO pairs are drawn from: a repaired trace that was not kept is no
    rejected answer, since its wrong part may be the step the checker corrected."""
    fixed = repaired_ids(cands)
    dropped = fixed.filter(~fixed.is_in(kept_ids))
    return cands.filter(~pl.col("candidate_id").is_in(dropped.implode()))
