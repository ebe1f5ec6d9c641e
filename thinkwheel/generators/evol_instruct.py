"""Evol-Instruct (WizardLM, Xu et al. 2023): evolve tasks into harder or different ones.

In-depth operators rewrite a task to be harder; `breadth` writes a new task in the same
domain. Children join the pool and can evolve again up to `max_depth`, so one call runs
WizardLM's iterative evolution. The paper's four elimination rules, adapted to a setting
without a judge LLM:

1. no information gain: the child uses no token (word, number, operator symbol) that its
   parent lacks, which includes a verbatim copy or a reordering;
2. a short "sorry": an apology or refusal under 80 words;
3. only punctuation and stop words;
4. leaked template markers ("Harder task:", "#Rewritten Prompt#", "given prompt", ...).

Lineage: `parent_id`, source `evol:<op>`, meta `depth`, `operator`, `root_id`.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import polars as pl

from thinkwheel import config, records
from thinkwheel.engines.base import Engine, SamplingParams
from thinkwheel.generators.self_instruct import (
    DROPPED_EXTRA,
    VERIFIER_OF_DOMAIN,
    batch_seed,
    default_params,
    first_completion,
    label_domain,
    length_reason,
    load_template,
    normalise,
    normalised_set,
    parse_new_task,
    render,
    start_reason,
)

IN_DEPTH = ("add_constraints", "deepen", "concretize", "increase_reasoning", "complicate_input")
IN_BREADTH = "breadth"
OPERATORS = (*IN_DEPTH, IN_BREADTH)
SORRY_MAX_WORDS = 80  # WizardLM: "contains 'sorry' and is relatively short (< 80 words)"

_SORRY = re.compile(
    r"\bsorry\b|\bapologi[sz]e|\bi can(?:no|')t\b|\bi am unable\b|\bi'm unable\b|\bas an ai\b",
    re.I,
)
_LEAK = re.compile(
    r"harder task\s*:|new task\s*:|^\s*task\s*\d*\s*:|#\s*(?:rewritten|given|created)\s+prompt\s*#"
    r"|\b(?:rewritten|given|created) prompt\b|rewrite this task|write a different task"
    r"|\{(?:task|operator)\}",
    re.I | re.M,
)
_TOKEN = re.compile(r"\w+|[^\w\s]")
STOPWORDS = frozenset(
    """a an the and or but if then else of to in on at by for with from as is are was were be
    been being this that these those it its it's i you he she we they me him her us them my
    your our their what which who whom whose when where why how all any both each few more
    most other some such no nor not only own same so than too very can will just do does did
    doing have has had having should would could here there about above below again further
    once up down out off over under into through during before after between ok okay yes
    please""".split()
)


def templates_for(cfg: config.EvolInstructConfig) -> dict[str, str]:
    """The in-depth and in-breadth prompt templates (user's `template_dir` or bundled)."""
    return {
        "in_depth": load_template("evol_in_depth", cfg.template_dir),
        "in_breadth": load_template("evol_in_breadth", cfg.template_dir),
    }


def evol_prompt(templates: Mapping[str, str], task: str, operator: str) -> str:
    if operator == IN_BREADTH:
        return render(templates["in_breadth"], task=task)
    return render(templates["in_depth"], task=task, operator=operator)


def elimination_reason(child: str, parent: str) -> str | None:
    """Which of the four WizardLM elimination rules the evolved task breaks, if any."""
    words = child.split()
    if _SORRY.search(child) and len(words) < SORRY_MAX_WORDS:
        return "sorry"
    tokens = [t.lower() for t in _TOKEN.findall(child)]
    if all(t in STOPWORDS or not t.isalnum() for t in tokens):
        return "only_stopwords"
    if _LEAK.search(child):
        return "leaked_template"
    parent_tokens = {t.lower() for t in _TOKEN.findall(parent)}
    if set(tokens) <= parent_tokens:  # also catches a verbatim copy
        return "no_information_gain"
    return None


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        m = json.loads(row.get("meta") or "{}")
    except (TypeError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def _depth(row: Mapping[str, Any]) -> int:
    return int(_meta(row).get("depth", 0) or 0)


def evol_instruct(
    engine: Engine,
    parents: pl.DataFrame,
    cfg: config.EvolInstructConfig,
    *,
    round: int,
    seed: int,
    templates: Mapping[str, str] | None = None,
    params: SamplingParams | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Evolve up to `cfg.num_tasks` tasks: (kept TASKS rows, dropped rows + drop_reason).

    `templates` maps `in_depth`/`in_breadth` to prompt text (None: `templates_for(cfg)`);
    `params` defaults to `GenerateConfig`'s temperature and max_tokens.
    """
    unknown = [op for op in cfg.operators if op not in OPERATORS]
    if unknown or not cfg.operators:
        raise ValueError(f"unknown evol operators {unknown}; known: {', '.join(OPERATORS)}")
    tmpls = dict(templates) if templates is not None else templates_for(cfg)
    params = params or default_params(seed)
    rng = random.Random(f"evol_instruct:{round}:{seed}")
    pool = records.conform(parents, records.TASKS).filter(pl.col("prompt").is_not_null())
    pool_rows = pool.to_dicts()
    seen = normalised_set(pool["prompt"].to_list())
    kept: list[dict[str, Any]] = []
    dropped: list[dict[str, Any]] = []
    budget = cfg.num_tasks * cfg.attempts_per_task
    attempts = batch = 0
    while len(kept) < cfg.num_tasks and attempts < budget:
        frontier = [r for r in pool_rows + kept if _depth(r) < cfg.max_depth]
        if not frontier:
            break
        # Without replacement, like one WizardLM epoch over the pool: a small pool grows
        # level by level instead of one parent being rewritten many times in one batch.
        size = min(cfg.num_tasks - len(kept), budget - attempts, len(frontier))
        picks = rng.sample(frontier, size)
        ops = [rng.choice(cfg.operators) for _ in picks]
        prompts = [evol_prompt(tmpls, p["prompt"], op) for p, op in zip(picks, ops, strict=True)]
        outs = engine.generate(prompts, replace(params, n=1, seed=batch_seed(params, batch)))
        attempts += size
        batch += 1
        for i, (parent, op) in enumerate(zip(picks, ops, strict=True)):
            comp = first_completion(outs, i)
            text = comp.text if comp is not None else ""
            row = _child_row(text, parent, op, round)
            reason = _reject_reason(row, comp, parent, cfg, seen)
            if reason is not None:
                dropped.append({**row, "drop_reason": reason, "completion": text})
                continue
            kept.append(row)
            seen.add(normalise(row["prompt"]))
    drop_schema = {**records.TASKS, **DROPPED_EXTRA}
    return records.frame(kept, records.TASKS), records.frame(dropped, drop_schema)


def _reject_reason(
    row: Mapping[str, Any],
    comp: Any,
    parent: Mapping[str, Any],
    cfg: config.EvolInstructConfig,
    seen: set[str],
) -> str | None:
    if comp is None:
        return "no_completion"
    if comp.finish_reason == "length":
        return "truncated"
    text = row["prompt"]
    reason = length_reason(text, cfg.min_words, cfg.max_words) or start_reason(text)
    reason = reason or elimination_reason(text, parent["prompt"])
    if reason:
        return reason
    if normalise(text) in seen:
        return "duplicate"
    return None


def _child_row(completion: str, parent: Mapping[str, Any], op: str, round: int) -> dict:
    note, _ = records.split_think(completion)
    text = parse_new_task(completion)  # without the `Task:` label the template shows it
    domain = label_domain(text, fallback=parent["domain"]) if text else parent["domain"]
    verifier = parent["verifier"] if domain == parent["domain"] else VERIFIER_OF_DOMAIN.get(domain)
    difficulty = parent["difficulty"]
    if difficulty is not None and op != IN_BREADTH:
        difficulty += 1
    pmeta = _meta(parent)
    meta = {
        "depth": _depth(parent) + 1,
        "operator": op,
        "root_id": pmeta.get("root_id") or parent["task_id"],
        "parent_family": parent["family"],
        "note": note,
    }
    return {
        "task_id": records.task_id(domain or "", text, None),
        "round": round,
        "domain": domain,
        "family": "evol_instruct",
        "difficulty": difficulty,
        "source": f"evol:{op}",
        "parent_id": parent["task_id"],
        "prompt": text,
        "reference": None,
        "tests": None,
        "verifier": verifier,
        "meta": json.dumps(meta, sort_keys=True),
    }


def lineage(tasks: pl.DataFrame) -> pl.DataFrame:
    """task_id, parent_id, operator and depth of evolved tasks, for reports and inspection."""
    t = records.conform(tasks, records.TASKS).filter(pl.col("source").str.starts_with("evol:"))
    return t.select(
        "task_id",
        "parent_id",
        pl.col("source").str.strip_prefix("evol:").alias("operator"),
        pl.col("meta").str.json_path_match("$.depth").cast(pl.Int32).alias("depth"),
    )
