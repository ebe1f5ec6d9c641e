"""Self-Instruct (Wang et al. 2022): the model writes new tasks from in-context examples.

Each prompt shows `seed_in_context` seed tasks plus `generated_in_context` tasks generated
earlier in the run; the completion's text after `</think>` is the new task. A new task is
kept only when it passes, in order: not truncated, non-empty, 3-150 words, no banned
content, starts like a sentence, no leaked template text, and novelty (ROUGE-L below the
threshold against every task in the pool, the pool growing as tasks are kept;
`thinkwheel.filters.novelty`). Every
rejected completion is returned with its `drop_reason`, never dropped silently.

The text helpers here (parsing, length, start, domain labels) are shared with Evol-Instruct.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel import config, records
from thinkwheel.engines.base import Engine, SamplingParams
from thinkwheel.filters import shingles
from thinkwheel.filters.novelty import novel_mask

DROPPED_EXTRA = {"drop_reason": pl.Utf8, "completion": pl.Utf8}
VERIFIER_OF_DOMAIN = {"math": "math", "code": "code"}

# a model's label on its task: `Task 3:`, `New task:`, `Task:` (Evol's template's), `New Task 7:`,
# `**Task 2.**`, `Task 4 - `; not the word opening a task ("Task-based scheduling: ...")
_LABEL = r"(?:\*\*)?\s*(?:new\s+)?task\s*\d*\s*(?:[:.)]|-(?=\s))\s*(?:\*\*)?"
_TASK_LABEL = re.compile(r"^\s*" + _LABEL + r"\s*", re.I)
_NEXT_TASK = re.compile(r"\n\s*" + _LABEL, re.I)
_SELF_INSTRUCT_MARKERS = ("write a new task like these", "new task:", "{examples}")
_CODE_CUE = re.compile(
    r"\bpython\b|\bdef\s+\w+\(|`\w+\(|\bimplement\b"
    r"|\b(?:write|create|define)\s+(?:a|an)\s+(?:\w+\s+)?(?:function|program|script)\b",
    re.I,
)
_MATH_WORD = re.compile(
    r"\bwhat is\b|\bsolve\b|\bcompute\b|\bcalculate\b|\bevaluate\b|\bsimplify\b|\bfind\b|"
    r"\bhow (?:many|much|long|far|old)\b|\bsum\b|\bproduct\b|\bdifference\b|\bquotient\b",
    re.I,
)
_MATH_SYMBOL = re.compile(r"\d\s*[-+*/^=×÷]\s*[\d(a-z]|[a-z]\s*=\s*\d|\d+/\d+", re.I)


# ---------------------------------------------------------------- templates
def load_template(name: str, override: str | Path | None = None) -> str:
    """A prompt template: the user's file when `override` is set, else the bundled one.

    `override` may be a file, or a directory holding `<name>.txt` (Evol-Instruct's
    `template_dir`). The bundled files are what the bundled model was pre-trained on.
    """
    if override is not None:
        p = Path(override)
        p = p / f"{name}.txt" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"prompt template not found: {p}")
        return p.read_text()
    return resources.files("thinkwheel.generators").joinpath(f"templates/{name}.txt").read_text()


def render(template: str, **fields: str) -> str:
    """Fill `{name}` slots by plain replacement, so braces in task text or template are safe."""
    for k, v in fields.items():
        template = template.replace("{" + k + "}", v)
    return template


# ---------------------------------------------------------------- text checks
def parse_new_task(completion: str) -> str:
    """The new task in a completion: the text after `</think>`, minus a `Task N:` label,
    cut where the model starts listing another task."""
    _, answer = records.split_think(completion)
    answer = _TASK_LABEL.sub("", answer, count=1)
    nxt = _NEXT_TASK.search(answer)
    if nxt:
        answer = answer[: nxt.start()]
    return answer.strip()


def word_count(text: str) -> int:
    return len(text.split())


def length_reason(text: str, min_words: int, max_words: int) -> str | None:
    n = word_count(text)
    if n == 0:
        return "empty"
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    return None


def banned_reason(text: str, banned: Sequence[str]) -> str | None:
    low = text.lower()
    for w in banned:
        if re.search(r"\b" + re.escape(w.lower()) + r"\b", low):
            return "banned_content"
    return None


def start_reason(text: str) -> str | None:
    """Self-Instruct drops tasks that start with punctuation: a code fence, a quote, a list
    mark are answers or fragments, not task statements."""
    return None if text[:1].isalnum() else "bad_start"


def label_domain(text: str, fallback: str | None = None) -> str | None:
    """`code` if it asks for a program, `math` if it reads like a math question, else fallback."""
    if _CODE_CUE.search(text):
        return "code"
    if _MATH_SYMBOL.search(text) or (_MATH_WORD.search(text) and re.search(r"\d", text)):
        return "math"
    return fallback


def normalise(text: str) -> str:
    """The dedup normaliser on one text, so "3 + 4" and "3 - 4" stay two tasks here too."""
    return shingles.normalise([text])[0]


def normalised_set(texts: Sequence[str]) -> set[str]:
    """`normalise` over a whole pool in one vectorised pass."""
    return set(shingles.normalise(texts).to_list())


# ---------------------------------------------------------------- stage
def _majority(values: Sequence[Any]) -> Any:
    vals = [v for v in values if v is not None]
    return Counter(vals).most_common(1)[0][0] if vals else None


def _examples(prompts: Sequence[str]) -> str:
    return "\n".join(f"Task {i + 1}: {p}" for i, p in enumerate(prompts))


def default_params(seed: int, g: config.GenerateConfig | None = None) -> SamplingParams:
    """Task-writing settings: `generate.temperature` and `generate.max_tokens` (tasks are short)."""
    g = g or config.GenerateConfig()
    return SamplingParams(n=1, temperature=g.temperature, max_tokens=g.max_tokens, seed=seed)


def batch_seed(params: SamplingParams, batch: int) -> int | None:
    """A fresh seed per generation batch, so retries do not repeat the same samples."""
    return None if params.seed is None else params.seed + batch


def first_completion(outs: Sequence[Sequence[Any]], i: int) -> Any:
    return outs[i][0] if i < len(outs) and outs[i] else None


def self_instruct(
    engine: Engine,
    seed_tasks: pl.DataFrame,
    cfg: config.SelfInstructConfig,
    *,
    round: int,
    seed: int,
    template: str | None = None,
    params: SamplingParams | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Generate up to `cfg.num_tasks` new tasks: (kept TASKS rows, dropped rows + drop_reason).

    `template` is the prompt text (None: `cfg.template`'s file, else the bundled one);
    `params` defaults to `GenerateConfig`'s temperature and max_tokens. Kept tasks have
    source `self_instruct`, reference None (consensus fills it) and, in meta, the ids of
    the in-context tasks and the model's note.
    """
    seeds = records.conform(seed_tasks, records.TASKS).filter(
        pl.col("prompt").is_not_null() & (pl.col("prompt").str.strip_chars() != "")
    )
    if seeds.height == 0:
        raise ValueError("self_instruct needs at least one seed task with a prompt")
    tmpl = template if template is not None else load_template("self_instruct", cfg.template)
    params = params or default_params(seed)
    rng = random.Random(f"self_instruct:{round}:{seed}")
    seed_rows = seeds.to_dicts()
    pool = [r["prompt"] for r in seed_rows]
    pool_norm = normalised_set(pool)
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    budget = cfg.num_tasks * cfg.attempts_per_task
    attempts = batch = 0
    while len(kept) < cfg.num_tasks and attempts < budget:
        size = min(cfg.num_tasks - len(kept), budget - attempts)
        contexts = []
        for _ in range(size):
            gen = rng.sample(kept, min(cfg.generated_in_context, len(kept)))
            n_seed = min(cfg.seed_in_context + cfg.generated_in_context - len(gen), len(seed_rows))
            contexts.append(rng.sample(seed_rows, n_seed) + gen)
        prompts = [render(tmpl, examples=_examples([r["prompt"] for r in c])) for c in contexts]
        outs = engine.generate(prompts, replace(params, n=1, seed=batch_seed(params, batch)))
        attempts += size
        batch += 1
        rows, texts, reasons = [], [], []
        for i, ctx in enumerate(contexts):
            comp = first_completion(outs, i)
            texts.append(comp.text if comp is not None else "")
            rows.append(_task_row(parse_new_task(texts[-1]), texts[-1], ctx, round))
            reasons.append(
                "no_completion" if comp is None else _reject_reason(rows[-1], comp, cfg, pool_norm)
            )
        # one batched call: novel against the pool and against this batch's earlier
        # survivors (the pool grows as tasks are kept, as in the paper)
        live = [i for i, r in enumerate(reasons) if r is None]
        mask = novel_mask([rows[i]["prompt"] for i in live], pool, cfg.rouge_threshold)
        for i, novel in zip(live, mask, strict=True):
            if not novel:
                reasons[i] = "not_novel"
        for row, text, reason in zip(rows, texts, reasons, strict=True):
            if reason is not None:
                dropped.append({**row, "drop_reason": reason, "completion": text})
                continue
            kept.append(row)
            pool.append(row["prompt"])
            pool_norm.add(normalise(row["prompt"]))
    drop_schema = {**records.TASKS, **DROPPED_EXTRA}
    return records.frame(kept, records.TASKS), records.frame(dropped, drop_schema)


def _reject_reason(
    row: Mapping[str, Any], comp: Any, cfg: config.SelfInstructConfig, pool_norm: set[str]
) -> str | None:
    text = row["prompt"]
    if comp.finish_reason == "length":
        return "truncated"
    reason = length_reason(text, cfg.min_words, cfg.max_words)
    reason = reason or banned_reason(text, cfg.banned_words)
    if reason:
        return reason
    reason = start_reason(text)
    if reason:
        return reason
    if any(m in text.lower() for m in _SELF_INSTRUCT_MARKERS):
        return "leaked_template"
    if row["domain"] is None:
        return "unknown_domain"
    if row["verifier"] is None:
        return "no_verifier"
    if normalise(text) in pool_norm:
        return "duplicate"
    return None


def _task_row(prompt: str, completion: str, ctx: Sequence[Mapping[str, Any]], round: int) -> dict:
    domain = label_domain(prompt, fallback=_majority([r["domain"] for r in ctx]))
    same = [r for r in ctx if r["domain"] == domain]
    verifier = _majority([r["verifier"] for r in same]) or VERIFIER_OF_DOMAIN.get(domain or "")
    note, _ = records.split_think(completion)
    return {
        "task_id": records.task_id(domain or "", prompt, None),
        "round": round,
        "domain": domain,
        "family": "self_instruct",
        "difficulty": _majority([r["difficulty"] for r in same]),
        "source": "self_instruct",
        "parent_id": None,
        "prompt": prompt,
        "reference": None,
        "tests": None,
        "verifier": verifier,
        "meta": json.dumps(
            {"in_context": [r["task_id"] for r in ctx], "note": note}, sort_keys=True
        ),
    }
