"""verl's custom reward function: thinkwheel's verifiers score verl's rollouts.

For users who run GRPO at scale in verl on a set `thinkwheel export --format verl` wrote:

    custom_reward_function.path=$(python -c "import thinkwheel.train.verl_reward as m; print(m.__file__)")
    custom_reward_function.name=compute_score

verl loads this file by path and calls `compute_score(data_source=, solution_str=,
ground_truth=, extra_info=)` per rollout (its naive reward manager) or with the plural
keywords per batch (its batch manager). The reward is the flow's own GRPO reward
(`grpo_rewards`): the row's verifier, 0 when the reasoning states false arithmetic, plus
0.2 x the `<think>` format, at its defaults, or with a run's `train.grpo` and `verify`
settings when verl passes that run's config file:

    +custom_reward_function.reward_kwargs.config=RUN/config.yaml
 verl decodes without the prompt, so a response whose template
pre-filled `<think>` gets the tag back before the format check, as GRPO in TRL does. verl has
no "could not verify": such a rollout scores 0, and `correct` says -1 for it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from thinkwheel.chat_template import THINK_CLOSE, THINK_OPEN
from thinkwheel.train.grpo import implied_verifier

_EXTRA_COLUMNS = ("tests", "verifier", "meta", "task_id")


def compute_score(
    data_source: Any = None,
    solution_str: str | None = None,
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    *,
    data_sources: Sequence[Any] | None = None,
    solution_strs: Sequence[str] | None = None,
    ground_truths: Sequence[Any] | None = None,
    extra_infos: Sequence[dict[str, Any] | None] | None = None,
    config: str | None = None,
    **_: Any,
) -> dict[str, float] | list[dict[str, float]]:
    """{"score", "correct", "format"} for one rollout, or a list of them for a batch;
    `config` (verl's reward_kwargs) is a run's config file, whose GRPO reward this is."""
    if solution_strs is not None:
        n = len(solution_strs)
        return score_batch(list(solution_strs), list(ground_truths or [None] * n),
                           list(extra_infos if extra_infos is not None else [None] * n), config)
    return score_batch([solution_str or ""], [ground_truth], [extra_info], config)[0]


def score_batch(texts: list[str], ground_truths: list[Any], extras: list[Any],
                config: str | None = None) -> list[dict[str, float]]:
    correct_fn, format_fn, format_weight = _rewards(config)
    texts = [THINK_OPEN + t if THINK_CLOSE in t and THINK_OPEN not in t else t for t in texts]
    columns = _columns(ground_truths, extras)
    correct = correct_fn(completions=texts, **columns)
    fmt = format_fn(completions=texts, **columns)
    return [
        {"score": (c or 0.0) + format_weight * (f or 0.0),
         "correct": -1.0 if c is None else float(c), "format": float(f or 0.0)}
        for c, f in zip(correct, fmt, strict=True)
    ]


def _columns(ground_truths: list[Any], extras: list[Any]) -> dict[str, list[Any]]:
    """The task columns `as_reward` reads, from verl's ground truth and extra_info."""
    infos = [dict(x) if x is not None else {} for x in extras]
    columns: dict[str, list[Any]] = {"reference": [_plain(g) for g in ground_truths]}
    for key in _EXTRA_COLUMNS:
        columns[key] = [_plain(info.get(key)) for info in infos]
    columns["verifier"] = [v or implied_verifier(None, t)
                           for v, t in zip(columns["verifier"], columns["tests"], strict=True)]
    columns["meta"] = [m if isinstance(m, str) or m is None else json.dumps(m) for m in columns["meta"]]
    return columns


def _plain(value: Any) -> Any:
    """verl's parquet rows arrive through pandas: lists as numpy arrays, "" for no reference."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    return None if value == "" else value


@functools.cache
def _rewards(config: str | None = None) -> tuple[Any, Any, float]:
    from thinkwheel.config import GRPOTrainConfig, load_config
    from thinkwheel.train.rewards import grpo_rewards

    if config is None:
        (correct, fmt), (_, format_weight) = grpo_rewards(GRPOTrainConfig())
    else:
        cfg = load_config(config)
        (correct, fmt), (_, format_weight) = grpo_rewards(cfg.train.grpo, cfg.verify)
    return correct, fmt, format_weight
