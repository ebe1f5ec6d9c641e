"""GRPO with verifier rewards: TRL's GRPOTrainer over the exported GRPO prompt set.

Every dataset column besides `prompt` (reference, tests, verifier, ...) reaches the reward
functions as a keyword argument. A chat template that ends its generation prompt with
`<think>` makes the model's completion start inside the think block, so a naive format
reward never sees the opening tag and scores 0 forever (TRL #6966, open-r1 #560): we detect
that pre-fill from the template and put it back in front of each completion before scoring.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel.chat_template import THINK_OPEN, generation_prefill, render_prompt
from thinkwheel.config import CHECKPOINT_MINUTES, GRPOTrainConfig
from thinkwheel.train import checkpoints
from thinkwheel.train.sft import (
    device_is_gpu,
    jsonl_log_callback,
    load_hf,
    lora_config,
    quiet,
    quiet_deprecations,
    runtime_args,
    train_and_publish,
)

RewardFn = Callable[..., list[float | None]]


def train_grpo(
    model_path: str,
    grpo: pl.DataFrame,
    out_dir: str,
    cfg: GRPOTrainConfig,
    reward_funcs: Sequence[RewardFn],
    reward_weights: Sequence[float],
    *,
    callbacks: Sequence[Any] = (),
    checkpoint_minutes: float | None = CHECKPOINT_MINUTES,
) -> dict[str, Any]:
    """Run GRPO from `model_path`; write the model atomically to `out_dir` with its curves
    (resuming from the last checkpoint of the same run after a crash, as SFT does).

    `train_log.jsonl` in `out_dir` holds every log row: reward mean/std (overall and per
    reward function), kl (when beta > 0), completion lengths, clip ratios, loss, lr.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from trl import GRPOConfig, GRPOTrainer

    if len(reward_funcs) != len(reward_weights):
        raise ValueError(f"{len(reward_funcs)} reward functions but {len(reward_weights)} weights")
    dataset = grpo_dataset(grpo)
    if len(dataset) == 0:
        raise ValueError("the GRPO set is empty: no prompts to train on")
    rewards = {"rewards": [checkpoints.callable_name(f) for f in reward_funcs],
               "weights": list(reward_weights)}
    tmp, resume = checkpoints.staging(
        out_dir, checkpoints.fingerprint("grpo", model_path, dataset, cfg, **rewards)
    )

    model, tokenizer = load_hf(model_path)
    if not tokenizer.chat_template:  # a base model: TRL cannot render conversations
        dataset = dataset.map(lambda row: {"prompt": render_prompt(tokenizer, row["prompt"])})
    prefill = generation_prefill(tokenizer)
    funcs = [with_prefill(f, prefill) for f in reward_funcs]
    gpu = device_is_gpu()
    with quiet_deprecations():
        args = GRPOConfig(
            output_dir=tmp,
            max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate,
            per_device_train_batch_size=group_batch_size(cfg.batch_size, cfg.num_generations),
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            loss_type=cfg.loss_type,
            beta=cfg.beta,
            reward_weights=list(reward_weights),
            use_vllm=cfg.use_vllm,
            vllm_mode="colocate",
            **runtime_args(gpu, cfg.seed),
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg) if cfg.lora else None,
            callbacks=[jsonl_log_callback(Path(tmp, "train_log.jsonl")), *callbacks],
        )
    quiet(trainer)
    return train_and_publish(
        trainer, tokenizer, tmp, out_dir, resume, checkpoint_minutes,
        n_prompts=len(dataset), prefill=prefill, lora=cfg.lora,
    )


def group_batch_size(batch_size: int, num_generations: int) -> int:
    """TRL needs whole groups per batch: round the batch up to a multiple of the group size."""
    return num_generations * max(1, math.ceil(batch_size / num_generations))


def verifiable_prompts(grpo: pl.DataFrame) -> pl.DataFrame:
    """A GRPO prompt set whose rows the flow's correctness reward can check, from ours or from
    verl's RL format (the answer in `reward_model.ground_truth`, our export's tests, verifier
    and meta in `extra_info`). A row without a verifier gets `implied_verifier`'s. A set with no checkable row is a ValueError: GRPO would otherwise train on the
    format reward alone, every correctness reward None, and say nothing."""
    if "prompt" not in grpo.columns:
        raise ValueError(f"the GRPO set needs a `prompt` column; it has {grpo.columns}")
    g = grpo
    nested = {"reward_model": ("ground_truth",), "extra_info": ("tests", "verifier", "meta")}
    for column, fields in nested.items():
        if isinstance(g.schema.get(column), pl.Struct):
            have = {f.name for f in g.schema[column].fields}
            for field in fields:
                ours = "reference" if field == "ground_truth" else field
                if field in have and ours not in g.columns:
                    g = g.with_columns(pl.col(column).struct.field(field).alias(ours))
    if "domain" not in g.columns and "ability" in g.columns:  # verl's name for it
        g = g.with_columns(pl.col("ability").alias("domain"))
    for name, dtype in (("reference", pl.Utf8), ("tests", pl.List(pl.Utf8)), ("verifier", pl.Utf8),
                        ("domain", pl.Utf8)):
        if name not in g.columns:
            g = g.with_columns(pl.lit(None, dtype).alias(name))
    g = g.with_columns(pl.col("reference").cast(pl.Utf8).replace("", None))
    g = g.with_columns(pl.struct("verifier", "domain", "tests").map_elements(
        lambda r: r["verifier"] or implied_verifier(r["domain"], r["tests"]), return_dtype=pl.Utf8,
    ).alias("verifier"))
    has_tests = pl.col("tests").list.len().fill_null(0) > 0
    checkable = pl.col("reference").is_not_null() | has_tests
    if g.height and not g.select(checkable.any()).item():
        raise ValueError(
            "no prompt in this GRPO set has a reference or tests, so the correctness reward would "
            f"score nothing (columns: {grpo.columns}); give each row a `reference` (math) or "
            "`tests` (code), or verl's `reward_model.ground_truth`"
        )
    return g


def implied_verifier(domain: str | None, tests: Sequence[str] | None) -> str:
    """The verifier of a row that names none: its domain's, as task files infer it; without a
    domain, code for a row with tests and math otherwise."""
    # imported here, not at the top: self_instruct's imports set warning filters, and importing
    # the trainers must leave the process's filters alone
    from thinkwheel.generators.self_instruct import VERIFIER_OF_DOMAIN

    return VERIFIER_OF_DOMAIN.get(domain or "") or ("code" if tests else "math")


def grpo_dataset(grpo: pl.DataFrame) -> Any:
    """A `datasets.Dataset` with a conversational `prompt`; a bare string becomes a user turn."""
    import datasets

    if "prompt" not in grpo.columns:
        raise ValueError("the GRPO set needs a `prompt` column")
    rows = grpo.to_dicts()
    for row in rows:
        p = row["prompt"]
        if isinstance(p, str):
            row["prompt"] = [{"role": "user", "content": p}]
        else:
            row["prompt"] = [{"role": m["role"], "content": m["content"]} for m in p]
    return datasets.Dataset.from_list(rows)


def with_prefill(fn: RewardFn, prefill: str) -> RewardFn:
    """Wrap a TRL reward function so it scores `prefill + completion` (sync or async)."""
    if not prefill:
        return fn
    name = getattr(fn, "__name__", type(fn).__name__)  # TRL keys its reward metrics by name
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

        @functools.wraps(fn)
        async def async_reward(*, completions: list, **kw: Any) -> list[float | None]:
            return await fn(completions=prefilled(completions, prefill), **kw)

        async_reward.__name__ = name
        return async_reward

    @functools.wraps(fn)
    def reward(*, completions: list, **kw: Any) -> list[float | None]:
        return fn(completions=prefilled(completions, prefill), **kw)

    reward.__name__ = name
    return reward


def prefilled(completions: list, prefill: str) -> list:
    """Prepend the pre-fill to each completion (text, or conversational assistant turn)."""
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(c if c.lstrip().startswith(THINK_OPEN) else prefill + c)
            continue
        turns = [dict(m) for m in c]
        if turns and not str(turns[0].get("content") or "").lstrip().startswith(THINK_OPEN):
            turns[0]["content"] = prefill + str(turns[0].get("content") or "")
        out.append(turns)
    return out
