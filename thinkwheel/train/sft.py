"""Cold-start SFT on the curated `<think>` chat set: TRL's SFTTrainer, or Unsloth on a GPU.

Loss falls on assistant tokens only. With a chat template that marks the assistant turn with
`{% generation %}` (and keeps its `<think>` block) TRL masks it directly (`assistant_only_loss`).
Otherwise we tokenize each conversation as the engine will see it, the prompt rendered with the
generation prompt then the model's reply, with labels over the reply only
(`chat_template.inference_tokens`): through a template that strips reasoning from assistant
turns (DeepSeek-R1-Distill's), TRL's own rendering would train on the answers alone. The
result is a plain `save_pretrained` folder (LoRA merged in) with the tokenizer and its chat
template, so the next round's engine loads it like the base model.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from thinkwheel import chat_template
from thinkwheel.config import CHECKPOINT_MINUTES, DPOTrainConfig, GRPOTrainConfig, SFTConfig
from thinkwheel.store import shareable
from thinkwheel.train import checkpoints

if TYPE_CHECKING:
    import datasets

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def train_sft(
    model_path: str,
    sft: pl.DataFrame | datasets.Dataset,
    out_dir: str,
    cfg: SFTConfig,
    *,
    callbacks: Sequence[Any] = (),
    checkpoint_minutes: float | None = CHECKPOINT_MINUTES,
) -> dict[str, Any]:
    """Fine-tune `model_path` on the `messages` column; write the model to `out_dir` atomically.

    Trains into `out_dir + ".tmp"` and renames it only when the model, tokenizer and
    `train_log.jsonl` are on disk, so a crash never leaves a half-written model behind; the
    same call after a crash resumes from the last checkpoint there (`checkpoints`).
    `callbacks` are extra transformers TrainerCallbacks (e.g. a progress bar for the CLI).
    Returns the final metrics plus the full log history.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    dataset = as_dataset(sft)
    if len(dataset) == 0:
        raise ValueError("the SFT set is empty: nothing to train on")
    kind = pick_trainer(cfg.trainer)
    fp = checkpoints.fingerprint(kind, model_path, dataset, cfg)
    if (done := checkpoints.finished(out_dir, fp)) is not None:
        return done
    tmp, resume = checkpoints.staging(out_dir, fp)

    if kind == "unsloth":
        model, tokenizer = load_unsloth(model_path, cfg)
        peft_config = None  # get_peft_model already wrapped the model
    else:
        model, tokenizer = load_hf(model_path)
        peft_config = lora_config(cfg) if cfg.lora else None

    if tokenizes_here(tokenizer, cfg, kind):  # tokenize once: the lengths come from it
        dataset = tokenize_for_inference(dataset, tokenizer)
        lengths = [len(ids) for ids in dataset["input_ids"]]
    else:
        lengths = token_lengths(dataset["messages"], tokenizer)
    over, longest = sum(n > cfg.max_length for n in lengths), max(lengths)
    trainer = build_sft_trainer(
        model, tokenizer, dataset, cfg, tmp, peft_config=peft_config, callbacks=callbacks,
        trainer=kind,
    )
    return train_and_publish(
        trainer, tokenizer, tmp, out_dir, resume, checkpoint_minutes,
        n_examples=len(dataset), loss_mode=loss_mode(tokenizer, cfg, kind), trainer=kind,
        lora=cfg.lora,
        over_max_length=over, longest_tokens=longest, max_length=cfg.max_length,
    )


def token_lengths(conversations: Iterable[list[dict[str, str]]], tokenizer: Any) -> list[int]:
    """Tokens per conversation as SFT trains it (`chat_template.inference_tokens`)."""
    prefill = chat_template.generation_prefill(tokenizer)
    eot = chat_template.end_of_turn(tokenizer)
    return [
        len(chat_template.inference_tokens(tokenizer, msgs, prefill=prefill, eot=eot)["input_ids"])
        for msgs in conversations
    ]


def over_length(
    conversations: Iterable[list[dict[str, str]]], tokenizer: Any, max_length: int
) -> tuple[int, int]:
    """(conversations longer than `max_length` tokens, the longest). The trainer cuts them
    without a word, and a cut example trains on a thought with no answer and no end of turn."""
    lengths = token_lengths(conversations, tokenizer)
    return sum(n > max_length for n in lengths), max(lengths, default=0)


def length_warning(
    metrics: dict[str, Any], key: str = "train.sft.max_length", what: str = "SFT examples"
) -> str | None:
    """The message for `over_length`'s count, or None when nothing was cut."""
    over = metrics.get("over_max_length") or 0
    total = metrics.get("n_examples") or metrics.get("n_pairs") or 0
    if not over:
        return None
    return (
        f"[yellow]{over} of {total} {what} ({over / total:.0%}) are longer than {key} "
        f"({metrics['max_length']} tokens; the longest is {metrics['longest_tokens']}) and were "
        f"cut, losing their answers; raise {key} to at least {metrics['longest_tokens']}[/]"
    )


def train_and_publish(
    trainer: Any, tokenizer: Any, tmp: str, out_dir: str, resume: str | None,
    checkpoint_minutes: float | None, /, **extra: Any,
) -> dict[str, Any]:
    """Train (from `resume`, a checkpoint, when given) with a checkpoint every
    `checkpoint_minutes`, save model and metrics into `tmp`, then swap it in as `out_dir`.

    The checkpoints go only once the model is saved: saving a merged large model takes
    minutes, and a crash then must resume from the last checkpoint, not start over."""
    saver = checkpoints.every(checkpoint_minutes)
    for callback in saver:
        trainer.add_callback(callback)
    with quiet_deprecations(), checkpoints.stoppable(bool(saver)):
        result = trainer.train(resume_from_checkpoint=resume)
    save_model(trainer.model, tokenizer, tmp)
    metrics = {**result.metrics, "global_step": trainer.state.global_step, **extra}
    if resume:
        metrics["resumed_from_step"] = checkpoints.checkpoint_step(Path(resume))
        # the trainer's train_loss averages only the steps this process ran; the log history
        # (restored with the checkpoint, one entry a step) has them all
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        if losses and "train_loss" in metrics:
            metrics["train_loss"] = sum(losses) / len(losses)
    Path(tmp, "train_metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    checkpoints.clear(tmp)
    checkpoints.publish(tmp, out_dir)
    return {**metrics, "log_history": trainer.state.log_history}


def pick_trainer(choice: str) -> str:
    """`auto` takes Unsloth only with a GPU and an importable `unsloth`, else TRL."""
    if choice == "trl":
        return "trl"
    import torch

    has_gpu = torch.cuda.is_available()
    ok = unsloth_available() if (has_gpu or choice == "unsloth") else False
    if choice == "unsloth":
        if not ok:
            raise RuntimeError("train.sft.trainer is 'unsloth' but `import unsloth` failed")
        return "unsloth"
    return "unsloth" if has_gpu and ok else "trl"


def unsloth_available() -> bool:
    try:
        import unsloth  # noqa: F401
    except Exception:  # without a GPU it raises NotImplementedError, not only ImportError
        return False
    return True


def load_hf(model_path: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = torch.bfloat16 if on_gpu_bf16() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_unsloth(model_path: str, cfg: SFTConfig) -> tuple[Any, Any]:
    """Unsloth's current API: `from_pretrained` (4-bit optional) then `get_peft_model` for LoRA."""
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_path,
        max_seq_length=cfg.max_length,
        dtype=None,  # Unsloth picks bf16/fp16 for the GPU
        load_in_4bit=cfg.lora and cfg.load_in_4bit,  # 4-bit weights only make sense under LoRA
        full_finetuning=not cfg.lora,
        # the configured model, not the `unsloth/*-bnb-4bit` mirror Unsloth maps a known hub id
        # to (another checkpoint, and one not cached: offline, the load failed)
        use_exact_model_name=True,
    )
    if cfg.lora:
        with quiet_deprecations():  # PEFT reads `is_gradient_checkpointing`, renamed in 5.2x
            model = FastLanguageModel.get_peft_model(
                model,
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=0.0,  # Unsloth's fast path
                bias="none",
                target_modules=LORA_TARGETS,
                use_gradient_checkpointing="unsloth",
                random_state=cfg.seed,
            )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def lora_config(cfg: SFTConfig | DPOTrainConfig | GRPOTrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def on_gpu_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def as_dataset(sft: pl.DataFrame | datasets.Dataset) -> datasets.Dataset:
    """Only the `messages` column goes to the trainer; lineage columns stay behind."""
    import datasets

    if isinstance(sft, pl.DataFrame):
        if "messages" not in sft.columns:
            raise ValueError("the SFT set needs a `messages` column")
        return datasets.Dataset.from_list(sft.select("messages").to_dicts())
    if "messages" not in sft.column_names:
        raise ValueError("the SFT set needs a `messages` column")
    return sft.select_columns(["messages"])


def tokenize_for_inference(
    dataset: datasets.Dataset, tokenizer: Any, max_length: int | None = None
) -> datasets.Dataset:
    """`input_ids` + `labels` per conversation, cut to `max_length` as TRL would cut them
    (Unsloth takes a tokenized set as it is); only the last assistant turn is trained."""
    prefill = chat_template.generation_prefill(tokenizer)
    eot = chat_template.end_of_turn(tokenizer)

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        tokens = chat_template.inference_tokens(tokenizer, msgs, prefill=prefill, eot=eot)
        return {k: v[:max_length] for k, v in tokens.items()}

    return dataset.map(encode, remove_columns=dataset.column_names)


def train_steps(n_examples: int, cfg: SFTConfig) -> int:
    """`epochs` sets the target, `max_steps` caps it (TRL would let max_steps override epochs).

    An epoch is as many optimizer steps as the trainer takes over the set: its last batch is a
    partial one (250 samples at batch 16 are 16 steps, not 15.6), so counting samples instead
    trained 7 of 8 epochs on a small set."""
    per_epoch = math.ceil(math.ceil(n_examples / cfg.batch_size) / cfg.grad_accum)
    return max(1, min(cfg.max_steps, math.ceil(per_epoch * cfg.epochs)))


def build_sft_trainer(
    model: Any,
    tokenizer: Any,
    dataset: datasets.Dataset,
    cfg: SFTConfig,
    output_dir: str,
    *,
    peft_config: Any = None,
    callbacks: Sequence[Any] = (),
    trainer: str = "trl",
) -> Any:
    """The configured SFTTrainer (not yet trained); tests inspect its label mask.

    Under Unsloth the set is always tokenized here: its trainer refuses a conversational set
    without a formatting function, and trains every token of a tokenized set without labels."""
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    mode = loss_mode(tokenizer, cfg, trainer)
    if tokenizes_here(tokenizer, cfg, trainer):
        if "input_ids" in dataset.column_names:  # tokenized by train_sft, not yet cut
            cut = cfg.max_length
            dataset = dataset.map(lambda row: {k: row[k][:cut] for k in ("input_ids", "labels")})
        else:
            dataset = tokenize_for_inference(dataset, tokenizer, cfg.max_length)
        if mode == "full":
            dataset = dataset.remove_columns("labels")

    gpu = device_is_gpu()
    with quiet_deprecations():  # TrainingArguments warns at construction
        args = TrlSFTConfig(
            output_dir=output_dir,
            max_steps=train_steps(len(dataset), cfg),
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0,
            max_length=cfg.max_length,
            assistant_only_loss=mode == "assistant_only",
            completion_only_loss=False,  # completion_only: the tokenized set carries its labels
            **runtime_args(gpu, cfg.seed),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[jsonl_log_callback(Path(output_dir, "train_log.jsonl")), *callbacks],
        )
    quiet(trainer)
    return trainer


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """transformers 5.2x renamed the gradient-checkpointing names TRL still uses; the
    FutureWarnings are noise for our users. Scoped to our training calls: importing thinkwheel
    does not change the process's warning filters."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*gradient_checkpointing.*deprecated.*", category=FutureWarning
        )
        yield


def runtime_args(gpu: bool, seed: int) -> dict[str, Any]:
    """Trainer arguments SFT, DPO and GRPO share: CPU-safe precision, no loggers, and no
    checkpoints but the one `checkpoints.every` asks for (the latest kept)."""
    return {
        # TRL turns checkpointing on by default: a win for big models on a GPU, pure cost for
        # small ones on CPU
        "gradient_checkpointing": gpu,
        "logging_steps": 1,
        "save_strategy": "no",
        "save_total_limit": 1,
        "report_to": "none",
        "use_cpu": not gpu,
        "bf16": on_gpu_bf16(),
        "fp16": False,
        "dataloader_num_workers": 0,
        "seed": seed,
        "disable_tqdm": True,
    }


def quiet(trainer: Any) -> None:
    """Drop the stdout log printer: curves go to train_log.jsonl, progress to our callbacks."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def tokenizes_here(tokenizer: Any, cfg: SFTConfig, trainer: str = "trl") -> bool:
    """Whether SFT tokenizes the set itself (`tokenize_for_inference`) rather than let TRL
    render the conversations: always for the completion-only fallback and under Unsloth, and
    for full loss when TRL's rendering would fail (no template) or change the reply."""
    mode = loss_mode(tokenizer, cfg, trainer)
    if mode != "full":
        return mode == "completion_only"
    no_template = not tokenizer.chat_template  # a base model: TRL cannot render conversations
    return trainer == "unsloth" or no_template or not chat_template.renders_reply_as_written(tokenizer)


def loss_mode(tokenizer: Any, cfg: SFTConfig, trainer: str = "trl") -> str:
    """assistant_only (TRL, and the template marks assistant turns and renders them as written),
    completion_only (our tokenization with labels, the fallback) or full."""
    if not cfg.assistant_only_loss:
        return "full"
    marked = chat_template.has_generation_markers(tokenizer)
    if trainer == "trl" and marked and chat_template.renders_reply_as_written(tokenizer):
        return "assistant_only"
    return "completion_only"


def device_is_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def save_model(model: Any, tokenizer: Any, out: str) -> None:
    """Save full weights (LoRA merged) plus the tokenizer, whose chat template travels with it."""
    merged_saver = getattr(model, "save_pretrained_merged", None)  # Unsloth dequantises 4-bit
    if callable(merged_saver):
        merged_saver(out, tokenizer, save_method="merged_16bit")
    else:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stop_on_end_of_turn(out, tokenizer)
    for f in Path(out).iterdir():  # transformers writes the weights through a 0600 temp file
        if f.is_file():
            shareable(f)


def stop_on_end_of_turn(out: str, tokenizer: Any) -> None:
    """Make the saved model's generation stop where the trained turns end. A base model whose
    generation config stops only at "<|endoftext|>", trained on ChatML turns that end in
    "<|im_end|>", would otherwise sample every next round to the token budget (transformers and
    vLLM both stop at the generation config's eos ids)."""
    from transformers import GenerationConfig

    stop = chat_template.stop_token_id(tokenizer)
    if stop is None:
        return
    try:
        gen = GenerationConfig.from_pretrained(out)
    except OSError:  # no generation_config.json was written
        gen = GenerationConfig()
    eos = gen.eos_token_id
    ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    ids = ids or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    if stop not in ids:
        gen.eos_token_id = [*ids, stop]
        gen.save_pretrained(out)


def jsonl_log_callback(path: Path) -> Any:
    """A TrainerCallback appending every log dict (loss, lr, grad_norm, rewards, kl...) as JSON."""
    from transformers import TrainerCallback

    class JsonlLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            row = {"step": state.global_step, "epoch": state.epoch, **logs}
            with Path(path).open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")

    return JsonlLog()
