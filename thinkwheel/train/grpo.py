"""GRPO with verifier rewards: TRL's GRPOTrainer over the exported GRPO prompt set.

Every dataset column besides `prompt` (reference, tests, verifier, ...) reaches the reward
functions as a keyword argument. A chat template that ends its generation prompt with
`<think>` makes the model's completion start inside the think block, so a naive format
reward never sees the opening tag and scores 0 forever (TRL #6966, open-r1 #560): we detect
that pre-fill from the template and put it back in front of each completion before scoring.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel.chat_template import (
    decode_text,
    generation_prefill,
    prefilled_text,
    render_prompt,
    special_think_ids,
    stop_token_id,
)
from thinkwheel.config import CHECKPOINT_MINUTES, GRPOTrainConfig
from thinkwheel.engines.base import first_stop
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
from thinkwheel.verifiers.code_tests import parse_tests

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
    stop: Sequence[str] = (),
) -> dict[str, Any]:
    """Run GRPO from `model_path`; write the model atomically to `out_dir` with its curves
    (resuming from the last checkpoint of the same run after a crash, as SFT does).

    `stop` ends completions where sampling's `stop` ends them (see `stop_settings`).
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
    verifiers = grpo["verifier"].drop_nulls().unique().to_list() if "verifier" in grpo.columns else []
    rewards = {**reward_fingerprint(reward_funcs, reward_weights, verifiers),
               **({"stop": list(stop)} if stop else {})}
    fp = checkpoints.fingerprint("grpo", model_path, dataset, cfg, **rewards)
    if (done := checkpoints.finished(out_dir, fp)) is not None:
        return done
    tmp, resume = checkpoints.staging(out_dir, fp)

    model, tokenizer = load_hf(model_path)
    if not tokenizer.chat_template:  # a base model: TRL cannot render conversations
        dataset = dataset.map(lambda row: {"prompt": render_prompt(tokenizer, row["prompt"])})
    prefill = generation_prefill(tokenizer)
    eos_ids, in_rewards, generation_kwargs = stop_settings(tokenizer, stop, cfg.use_vllm)
    keep = special_think_ids(tokenizer)
    funcs = [with_think_tags(with_stop(with_prefill(f, prefill), in_rewards), tokenizer, keep)
             for f in reward_funcs]
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
            vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            vllm_max_model_length=cfg.vllm_max_model_length,
            generation_kwargs=generation_kwargs,
            **loss_settings(cfg.loss_type, cfg.use_vllm),
            **runtime_args(gpu, cfg.seed),
        )
        with extra_eos(model, eos_ids):  # TRL reads them once, when it is built
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
        **({"stop_in_rewards_only": in_rewards} if in_rewards and not cfg.use_vllm else {}),
    )


# what a verifier reward of `train.rewards` scores with (its attributes)
_REWARD_STATE = ("weight", "check_arithmetic", "opts", "settings")


def reward_fingerprint(
    reward_funcs: Sequence[RewardFn], reward_weights: Sequence[float],
    verifiers: Sequence[str] = (),
) -> dict[str, Any]:
    """What GRPO's rewards are, for the resume fingerprint: each function's name and weight and,
    for the verifier rewards of `train.rewards`, what they judge with (the run's verify options
    such as percent_policy and timeouts, the format check's strictness, check_arithmetic), plus
    the source of the plugin verifiers they run (`verify.plugins`, and the rows' `verifiers`
    when a reward judges each row by its own). With the names alone, a re-run under other verify
    settings resumed the old checkpoint: one model trained under two reward definitions.
    Your own reward functions and verifiers add the source they are defined in."""
    from thinkwheel.verifiers.registry import code_fingerprint, load_plugins, user_code_fingerprint

    out: dict[str, Any] = {"rewards": [checkpoints.callable_name(f) for f in reward_funcs],
                           "weights": list(reward_weights)}
    states, plugins, by_row = [], [], False
    for f in reward_funcs:
        state = {a: getattr(f, a) for a in _REWARD_STATE if getattr(f, a, None) is not None}
        for a in ("opts", "settings"):
            if isinstance(state.get(a), dict):
                # `workers` sets how many judge at once, not what they reward
                state[a] = {k: v for k, v in state[a].items() if k != "workers"}
                plugins += list(state[a].get("plugins") or [])
        by_row = by_row or (hasattr(f, "fixed") and f.fixed is None)  # the row's verifier judges
        states.append(state)
    if any(states):
        out["reward_settings"] = states
    named = [f.spec for f in reward_funcs if isinstance(getattr(f, "spec", None), str)]
    if code := code_fingerprint([*load_plugins(plugins), *(verifiers if by_row else ()), *named]):
        out["plugin_code"] = code  # an edited plugin is another reward
    # your own reward functions and verifier objects by their source: an edited reward
    # function under the same name resumed the checkpoint trained on the old one
    own = [user_code_fingerprint(getattr(f, "fixed", None) or f) for f in reward_funcs
           if not isinstance(getattr(f, "spec", None), str)]
    if any(own):
        out["reward_code"] = own
    return out


def loss_settings(loss_type: str, use_vllm: bool) -> dict[str, Any]:
    """What a loss needs beside its name, which TRL leaves to the user: VESPO on vLLM raises
    unless the importance-sampling correction works per token, and LUSPO is defined on
    sequence-level ratios (TRL only warns, and trains another objective)."""
    if loss_type == "vespo" and use_vllm:
        return {"vllm_importance_sampling_mode": "token_truncate"}
    if loss_type == "luspo":
        return {"importance_sampling_level": "sequence"}
    return {}


def stop_settings(
    tokenizer: Any, stop: Sequence[str], use_vllm: bool
) -> tuple[list[int], list[str], dict[str, Any] | None]:
    """(extra end-of-sequence ids, stops applied in the rewards, TRL generation_kwargs).

    vLLM stops at any string, but TRL decodes the completion from its token ids, which keep the
    tokens that made the stop string: the rewards cut there too. TRL's transformers path calls `generate` without a tokenizer,
    which stop strings need, so a stop that is one token becomes an end-of-sequence id (the
    completion ends there, and its mask with it), and a longer one is applied where it can be:
    the rewards score the text before it, as sampling and the eval would have cut it.

    The token that closes the template's assistant turn (`stop_token_id`) always ends a
    completion, as it does in sampling: a base model whose generation config stops only at
    "<|endoftext|>" otherwise writes past "<|im_end|>" to the length limit, every completion
    clipped and scored with whatever followed the turn."""
    turn_end = stop_token_id(tokenizer)
    if use_vllm:  # vLLM cuts the text but keeps the stop's tokens, which TRL decodes: cut again
        kwargs: dict[str, Any] = {"stop": list(stop)} if stop else {}
        if turn_end is None:
            return [], list(stop), kwargs or None
        kwargs["stop_token_ids"] = [turn_end]
        # and an end-of-sequence id for TRL too: it counts a completion whose last token is not
        # one of its eos ids as clipped (clipped_ratio, mask_truncated_completions)
        return [turn_end], list(stop), kwargs
    ids: list[int] = [] if turn_end is None else [turn_end]
    longer: list[str] = []
    for s in stop:
        tokens = tokenizer.encode(s, add_special_tokens=False)
        if len(tokens) == 1:
            ids += [t for t in tokens if t not in ids]
        else:
            longer.append(s)
    return ids, longer, None


@contextlib.contextmanager
def extra_eos(model: Any, ids: Sequence[int]) -> Iterator[None]:
    """The model's generation config stops at `ids` too while the trainer reads it; the saved
    model keeps its own stop ids."""
    gen = model.generation_config
    before = gen.eos_token_id
    if ids:
        have = [] if before is None else [before] if isinstance(before, int) else list(before)
        gen.eos_token_id = [*have, *(i for i in ids if i not in have)]
    try:
        yield
    finally:
        gen.eos_token_id = before


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
        if name not in g.columns or g.schema[name] == pl.Null:  # JSONL types an all-null column Null
            g = g.with_columns(pl.lit(None, dtype).alias(name))
    g = g.with_columns(pl.col("reference").cast(pl.Utf8).replace("", None), _parsed_tests(g))
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


def _parsed_tests(g: pl.DataFrame) -> pl.Series:
    """`tests` as a list of strings, each row through `parse_tests` (the code verifier's parser):
    many code sets store a JSON array in a string, which polars' list operations refuse, and a
    test that asserts nothing is a ValueError here, not a None reward in every GRPO step."""
    parsed = [parse_tests(t, f"row {i + 1}'s tests") for i, t in enumerate(g["tests"].to_list())]
    return pl.Series("tests", parsed, dtype=pl.List(pl.Utf8))


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
    return _on_completions(fn, lambda cs, _: prefilled(cs, prefill)) if prefill else fn


def with_stop(fn: RewardFn, stop: Sequence[str]) -> RewardFn:
    """Wrap a TRL reward function so it scores each completion up to its first stop string."""
    return _on_completions(fn, lambda cs, _: cut_at_stop(cs, stop)) if stop else fn


def with_think_tags(fn: RewardFn, tokenizer: Any, keep: set[int]) -> RewardFn:
    """Wrap a TRL reward function so it scores completions decoded with their think tags, when
    the tokenizer marks them special (`special_think_ids`): TRL decodes without special tokens,
    and the format reward then saw no tags at all. It re-decodes the `completion_ids` TRL passes."""
    if not keep:
        return fn

    def redecode(completions: list, kw: dict[str, Any]) -> list:
        texts = iter([decode_text(tokenizer, list(ids), keep) for ids in kw["completion_ids"]])
        return _map_text(completions, lambda _: next(texts))

    return _on_completions(fn, redecode)


def prefilled(completions: list, prefill: str) -> list:
    """Prepend the pre-fill to each completion (text, or conversational assistant turn)."""
    return _map_text(completions, lambda t: prefilled_text(t, prefill))


def cut_at_stop(completions: list, stop: Sequence[str]) -> list:
    """Each completion (text or assistant turn) up to the first of the stop strings."""

    def cut(text: str) -> str:
        at = first_stop(text, stop)
        return text if at < 0 else text[:at]

    return _map_text(completions, cut)


def _map_text(completions: list, change: Callable[[str], str]) -> list:
    out = []
    for c in completions:
        if isinstance(c, str):
            out.append(change(c))
            continue
        turns = [dict(m) for m in c]
        if turns:
            turns[0]["content"] = change(str(turns[0].get("content") or ""))
        out.append(turns)
    return out


def _on_completions(fn: RewardFn, change: Callable[[list, dict[str, Any]], list]) -> RewardFn:
    """`fn` (sync or async) called on `change(completions, other keyword arguments)`, under its
    own name (TRL keys its reward metrics by name)."""
    name = getattr(fn, "__name__", type(fn).__name__)
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__):

        @functools.wraps(fn)
        async def async_reward(*, completions: list, **kw: Any) -> list[float | None]:
            return await fn(completions=change(completions, kw), **kw)

        async_reward.__name__ = name
        return async_reward

    @functools.wraps(fn)
    def reward(*, completions: list, **kw: Any) -> list[float | None]:
        return fn(completions=change(completions, kw), **kw)

    reward.__name__ = name
    return reward
