"""DPO with TRL's DPOTrainer over the exported dpo split (`curated/export.dpo_frame`).

Why a second stage at all: SFT on verified samples only ever sees what was right; the dpo
split also says, for the same prompt, what the verifier rejected (a wrong answer, or a right
one reached through false arithmetic). `nll_weight` > 0 adds an NLL term on the chosen answer
(Iterative RPO), which keeps DPO from lowering the chosen answer's likelihood too. The model
is written like SFT's and GRPO's: merged, atomically, with `train_log.jsonl` beside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel import chat_template
from thinkwheel.config import CHECKPOINT_MINUTES, DPOTrainConfig
from thinkwheel.train import checkpoints
from thinkwheel.train.sft import (
    device_is_gpu,
    jsonl_log_callback,
    load_hf,
    lora_config,
    over_length,
    quiet,
    quiet_deprecations,
    runtime_args,
    train_and_publish,
)

COLUMNS = ("prompt", "chosen", "rejected")


def dpo_dataset(dpo: pl.DataFrame) -> Any:
    """A `datasets.Dataset` of conversational prompt/chosen/rejected (lineage columns dropped:
    DPOTrainer tokenizes every column it is given)."""
    import datasets

    return datasets.Dataset.from_polars(conversational_pairs(dpo).select(COLUMNS))


def conversational_pairs(dpo: pl.DataFrame) -> pl.DataFrame:
    """Preference pairs as chat turns, from any of TRL's standard shapes: ours (turns), text
    (`prompt` a string, `chosen` / `rejected` the replies), or an implicit prompt (`chosen` and
    `rejected` whole conversations that share every turn but the last). The trainer renders
    turns itself (see `as_text_pairs`), so every shape is brought to turns here."""
    if "chosen" not in dpo.columns or "rejected" not in dpo.columns:
        raise ValueError(f"the DPO set needs `chosen` and `rejected` (and a `prompt`, unless they "
                         f"are whole conversations); it has {dpo.columns}")
    rows = dpo.select(c for c in COLUMNS if c in dpo.columns).to_dicts()
    out = []
    for n, row in enumerate(rows):
        chosen, rejected = _turns(row["chosen"], "assistant"), _turns(row["rejected"], "assistant")
        prompt = row.get("prompt")
        if prompt is None:  # implicit prompt: the turns both conversations share
            if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
                raise ValueError(f"DPO row {n}: without a `prompt`, `chosen` and `rejected` must be "
                                 "conversations that differ only in their last turn")
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        out.append({"prompt": _turns(prompt, "user"), "chosen": chosen, "rejected": rejected})
    schema = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
    return pl.DataFrame(out, schema={c: schema for c in COLUMNS})


def _turns(value: Any, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def as_text_pairs(dataset: Any, tokenizer: Any) -> Any:
    """Prompt, chosen and rejected as text, the prompt rendered as at sampling time.

    For a template that changes finished assistant turns: DeepSeek-R1-Distill's drops the
    `<think>` block (DPO through it compared bare answers while the model is sampled thinking),
    Qwen3's re-spaces it. And for a base model with no template, which TRL cannot render at all.
    """
    prefill = chat_template.generation_prefill(tokenizer)
    stop = chat_template.stop_text(tokenizer)
    bos = chat_template.self_added_bos(tokenizer)

    def reply(turns: list[dict[str, str]]) -> str:
        return chat_template.completion_text(turns[-1]["content"], prefill) + stop

    def convert(row: dict[str, Any]) -> dict[str, str]:
        prompt = chat_template.render_prompt(tokenizer, row["prompt"])
        if bos and prompt.startswith(bos):
            prompt = prompt[len(bos) :]
        return {"prompt": prompt, "chosen": reply(row["chosen"]), "rejected": reply(row["rejected"])}

    return dataset.map(convert)


def train_dpo(
    model_path: str,
    dpo: pl.DataFrame,
    out_dir: str,
    cfg: DPOTrainConfig,
    *,
    callbacks: Sequence[Any] = (),
    checkpoint_minutes: float | None = CHECKPOINT_MINUTES,
) -> dict[str, Any]:
    """Run DPO from `model_path` (also the frozen reference); write the model to `out_dir`,
    resuming from the last checkpoint of the same run after a crash, as SFT does."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    dataset = dpo_dataset(dpo)
    if len(dataset) == 0:
        raise ValueError("the DPO set is empty: no task had both a kept and a failed sample")
    model, tokenizer = load_hf(model_path)
    prompts = [chat_template.render_prompt(tokenizer, r) for r in dataset["prompt"]]
    shortest = min(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    if shortest >= cfg.max_length:  # TRL drops such pairs, then fails on an empty set
        raise ValueError(
            f"every DPO prompt fills train.dpo.max_length ({cfg.max_length} tokens; the shortest "
            f"is {shortest}), leaving no room for the answers: raise train.dpo.max_length"
        )
    longer = ([*r["prompt"], *max(r["chosen"], r["rejected"], key=_chars)] for r in dataset)
    over, longest = over_length(longer, tokenizer, cfg.max_length)
    fp = checkpoints.fingerprint("dpo", model_path, dataset, cfg)
    if (done := checkpoints.finished(out_dir, fp)) is not None:
        return done
    tmp, resume = checkpoints.staging(out_dir, fp)
    trainer = build_dpo_trainer(model, tokenizer, dataset, cfg, tmp, callbacks=callbacks)
    return train_and_publish(
        trainer, tokenizer, tmp, out_dir, resume, checkpoint_minutes, n_pairs=len(dataset), lora=cfg.lora,
        over_max_length=over, longest_tokens=longest, max_length=cfg.max_length,
    )


def _chars(turns: list[dict[str, str]]) -> int:
    return sum(len(t["content"]) for t in turns)


def build_dpo_trainer(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    cfg: DPOTrainConfig,
    output_dir: str,
    *,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The configured DPOTrainer (not yet trained); tests inspect its tokenized pairs."""
    from trl import DPOConfig, DPOTrainer

    if not tokenizer.chat_template or not chat_template.renders_reply_as_written(tokenizer):
        dataset = as_text_pairs(dataset, tokenizer)  # TRL would render through the template
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, cfg.nll_weight]}
    with quiet_deprecations():
        args = DPOConfig(
            output_dir=output_dir,
            max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate,
            beta=cfg.beta,
            per_device_train_batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            # the reference pass runs once up front, so only one model is in memory after
            precompute_ref_log_probs=not cfg.lora,
            **(losses if cfg.nll_weight > 0 else {}),
            **runtime_args(device_is_gpu(), cfg.seed),
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(cfg) if cfg.lora else None,
            callbacks=[jsonl_log_callback(Path(output_dir, "train_log.jsonl")), *callbacks],
        )
    quiet(trainer)
    return trainer
