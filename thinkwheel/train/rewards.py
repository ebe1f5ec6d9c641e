"""Turn any verifier into a TRL GRPO reward function.

TRL calls `reward(prompts=, completions=, completion_ids=, **columns)` where the dataset's
other columns (`reference`, `tests`, `verifier`, ...) arrive as lists, one item per
completion. A verdict with `passed=None` (could not verify) becomes a None reward, which
TRL skips for that sample instead of counting it as 0 or 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from thinkwheel.config import GRPOTrainConfig, VerifyConfig
from thinkwheel.filters.arithmetic import false_claims
from thinkwheel.verifiers.base import Verdict, Verifier
from thinkwheel.verifiers.batch import verifier_options
from thinkwheel.verifiers.registry import get_verifier

_TASK_COLUMNS = ("reference", "tests", "verifier", "domain", "meta", "task_id", "prompt")


def completion_as_text(completion: Any) -> str:
    """A string completion as is; a conversational one as its last assistant message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"]
        picked = assistant or msgs
        return str(picked[-1].get("content") or "") if picked else ""
    return str(completion)


def _tasks(n: int, prompts: Sequence[Any] | None, columns: dict[str, Any]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = [{} for _ in range(n)]
    for key in _TASK_COLUMNS:
        values = columns.get(key)
        if values is None and key == "prompt":
            values = prompts
        if values is None or isinstance(values, (str, bytes)):
            continue
        values = list(values)
        if len(values) != n:
            continue
        if key == "prompt":
            values = [_user_text(v) for v in values]
        for task, value in zip(tasks, values, strict=True):
            task[key] = value
    return tasks


def _user_text(prompt: Any) -> Any:
    """A conversational prompt's last user turn: a plugin reads `task["prompt"]` as the task's
    text in the verify stage, and TRL hands the reward the whole chat (system turn included)."""
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        users = [m.get("content") for m in prompt if m.get("role") == "user"]
        if users and isinstance(users[-1], str):
            return users[-1]
    return prompt


def _score(v: Verdict, weight: float) -> float | None:
    return None if v.passed is None else float(v.score) * weight


def _clean(text: str) -> bool:
    return not false_claims(text)  # the answer's steps too: see filters.arithmetic


class _Reward:
    def __init__(self, verifier: Verifier | str | None, weight: float, opts: dict[str, Any],
                 check_arithmetic: bool = False, settings: dict[str, Any] | None = None) -> None:
        self.fixed = get_verifier(verifier, **opts) if isinstance(verifier, str) else verifier
        self.spec = verifier if isinstance(verifier, str) else None  # its code is fingerprinted
        self.weight, self.opts, self.check_arithmetic = weight, opts, check_arithmetic
        self.settings = settings
        self.cache: dict[str, Verifier] = {}
        # completions no verifier could judge (a plugin that raised): their reward is None,
        # which TRL leaves out, so GRPO trained on the other rewards without a word
        self.judged, self.unjudged, self.first_error = 0, 0, ""
        label = verifier if isinstance(verifier, str) else getattr(verifier, "name", "task")
        self.__name__ = f"{str(label).replace(':', '_').replace('.', '_')}_reward"

    def _verifier(self, name: str) -> Verifier:
        if name not in self.cache:  # with a run's verify settings, each verifier gets its own
            opts = self.opts if self.settings is None else verifier_options(name, **self.settings)
            self.cache[name] = get_verifier(name, **opts)
        return self.cache[name]

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                 **columns: Any) -> list[float | None]:
        texts = [completion_as_text(c) for c in completions]
        out = self._rewards(texts, _tasks(len(texts), prompts, columns))
        if self.check_arithmetic:  # a right answer through a false step earns nothing
            out = [r if not r or _clean(t) else 0.0 for r, t in zip(out, texts, strict=True)]
        return out

    def _tally(self, verdicts: Sequence[Verdict], name: str) -> None:
        self.judged += len(verdicts)
        for v in verdicts:
            if v.passed is None and v.reason == "verifier_error":
                self.unjudged += 1
                self.first_error = self.first_error or f"{name}: {v.detail}"[:200]

    def _rewards(self, texts: list[str], tasks: list[dict[str, Any]]) -> list[float | None]:
        if self.fixed is not None:
            verdicts = self.fixed.verify_batch(texts, tasks)
            self._tally(verdicts, self.__name__)
            return [_score(v, self.weight) for v in verdicts]
        out: list[float | None] = [None] * len(texts)
        by_name: dict[str, list[int]] = {}
        for i, t in enumerate(tasks):
            if t.get("verifier"):
                by_name.setdefault(str(t["verifier"]), []).append(i)
        for name, idxs in by_name.items():
            verdicts = self._verifier(name).verify_batch([texts[i] for i in idxs],
                                                         [tasks[i] for i in idxs])
            self._tally(verdicts, name)
            for i, v in zip(idxs, verdicts, strict=True):
                out[i] = _score(v, self.weight)
        return out


def as_reward(verifier: Verifier | str | None = None, weight: float = 1.0,
              check_arithmetic: bool = False, **opts: Any) -> Callable[..., list[float | None]]:
    """A TRL reward function from a verifier (instance, registry name or "module:callable").

    `verifier=None` uses each row's `verifier` column. The reward is `score * weight`;
    with `check_arithmetic`, 0 when the reasoning states a false step (`7+6=15`, `35 < 26`; the same rule
    the SFT quality filter applies, so GRPO does not reward lucky guesses SFT refused).
    """
    return _Reward(verifier, weight, opts, check_arithmetic)


def grpo_rewards(
    cfg: GRPOTrainConfig, verify: VerifyConfig | None = None, *, strict_format: bool = False
) -> tuple[list[Callable[..., Any]], list[float]]:
    """The flywheel's GRPO rewards and weights: each row's own verifier, plus the format.

    `verify` (the run's) gives the verifiers the options the verify stage gives them
    (percent_policy, timeouts), so GRPO rewards what the run counts as passed.
    `strict_format`: the trainer puts a template's pre-filled `<think>` back before scoring
    (`train.grpo.with_prefill`), so a completion without the tag wrote none, and the tolerant
    format check (for text whose pre-fill is unknown, as verl's) paid it the format reward."""
    settings = None if verify is None else verify.options()
    correct = _Reward(None, 1.0, {}, cfg.check_arithmetic, settings)
    fmt = as_reward("think_format", tolerant=not strict_format)
    return [correct, fmt], [1.0, cfg.format_weight]


def unjudged_warning(rewards: Sequence[Any]) -> str | None:
    """What GRPO's verifier rewards could not judge, or None: a plugin that raised gave None
    rewards, which TRL skips, and the run trained on the format reward alone in silence."""
    notes = [f"{r.__name__} could not judge {r.unjudged} of {r.judged} completions (first: "
             f"{r.first_error}), which earned no reward from it"
             for r in rewards if getattr(r, "unjudged", 0)]
    return "GRPO: " + "; ".join(notes) if notes else None


def as_async_reward(verifier: Verifier | str | None = None, weight: float = 1.0,
                    check_arithmetic: bool = False, **opts: Any) -> Callable[..., Any]:
    """The `async def` form (TRL runs async rewards concurrently with the others)."""
    sync = _Reward(verifier, weight, opts, check_arithmetic)

    async def reward(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (),
                     **columns: Any) -> list[float | None]:
        return await asyncio.to_thread(sync, prompts, completions, **columns)

    reward.__name__ = sync.__name__
    return reward
