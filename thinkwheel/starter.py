"""The commented starter config `thinkwheel init` writes: the recipe `thinkwheel run` runs with
no --config, every key spelled out, so editing it starts from a run that was measured rather
than from library defaults no one ran (16 samples of 32 tasks per family and level)."""

from __future__ import annotations

from typing import Any

import yaml

from thinkwheel.config import DEFAULT_RUN, RunConfig, load_config

SECTION_NOTES = {
    "name": "Run name: the run directory is runs/<name> unless --out is given.",
    "rounds": "Flywheel rounds: round k+1 samples from round k's model.",
    "engine": (
        "LLM backend. kind: hf (transformers, CPU ok) | vllm (GPU, `pip install thinkwheel[gpu]`)"
        " | openai (any OpenAI-compatible server; the key comes from the env var api_key_env;"
        " a served model is not retrained in place, so set train.sft/grpo.enabled: false;"
        " a thought returned apart by a reasoning parser goes back into <think>; extra_body is"
        " merged into each request, e.g. {top_k: 20}; base_url may list several servers of the"
        " same model: calls spread over them, and one that fails is retried on the others)."
        " model: 'bundled' = the small model shipped in the package, or a local path / model id."
        " lora_path (vllm only): an adapter folder applied to engine.model when sampling; a run"
        " that trains refuses it (merge it into its base first)."
    ),
    "generate": (
        "Task generation: your own tasks (tasks.paths: JSONL / JSON / parquet files or datasets"
        " folders with a prompt and a reference or tests per row; tasks.columns maps your column"
        " names, e.g. {prompt: question, reference: answer}; domain / verifier fill rows that do"
        " not say; a row without a reference gets one"
        " by consensus; a row's verifier may be a 'module:callable' plugin), procedural families"
        " (exact references; procedural.mix is a budget per family group, or with mix: [] one"
        " budget of per_family tasks per family and difficulty level; mix: [] and per_family: 0"
        " for yours only), plus Self-Instruct and Evol-Instruct through the engine when enabled."
    ),
    "sampling": (
        "Rejection sampling: n candidates per task, keep at most keep_per_task verified ones;"
        " GRPO prompts are tasks whose pass rate lies in grpo_pass_band; stop: strings that end"
        " a generation (sampling, consensus and eval)."
    ),
    "verify": (
        "Verifiers run in killable worker processes. percent_policy: fraction (50% == 0.5),"
        " number (50% == 50) or either. plugins: 'module:callable' strings."
    ),
    "filters": (
        "Near-dup removal (MinHash), benchmark decontamination, quality rules"
        " (check_arithmetic drops traces that state false arithmetic, e.g. `7+6=15`)."
    ),
    "export": (
        "Curated <think> chat SFT set, GRPO prompt set and DPO pairs (kept vs failed samples of"
        " one task): parquet, hf (datasets), jsonl, verl (the GRPO set as verl's RL parquet)."
        " license: the dataset card's (unset:"
        " apache-2.0 for data our generators made, 'other' once generate.tasks brings yours)."
    ),
    "train": (
        "Cold-start SFT (TRL, or Unsloth on a GPU), then DPO and GRPO when enabled. Each saves a"
        " checkpoint every checkpoint_minutes; re-running a crashed run resumes from it."
    ),
    "eval": (
        "The held-out procedural split (its seed is never used for training data; families: []"
        " for none), plus your own held-out files in tasks.paths (read like generate.tasks; each"
        " row with a reference or tests; no round trains on them)."
    ),
}


def _enabled_first(value: Any) -> Any:
    """Sections that can be switched off say so on their first line."""
    if not isinstance(value, dict):
        return value
    ordered = {k: _enabled_first(v) for k, v in value.items()}
    return {"enabled": ordered.pop("enabled")} | ordered if "enabled" in ordered else ordered


def starter_yaml(cfg: RunConfig | None = None) -> str:
    """`cfg` spelled out with a note per section; by default the packaged CPU recipe."""
    recipe = cfg is None
    cfg = load_config(DEFAULT_RUN) if cfg is None else cfg
    data = _enabled_first(cfg.model_dump(mode="json"))
    procedural = data["generate"]["procedural"]
    if procedural["mix"]:  # mix replaces the single budget: its keys would only mislead
        for key in ("families", "per_family", "difficulty"):
            procedural.pop(key)
    head = ([
        "# thinkwheel run config: what `thinkwheel run` runs with no --config (the CPU recipe,",
        "# bundled model), every key spelled out. Every key is optional: one you delete takes",
        "# the library default (`thinkwheel init --defaults` writes those). Unknown keys are",
        "# errors.",
    ] if recipe else [
        "# thinkwheel run config: the library defaults, every key spelled out (not the CPU recipe",
        "# `thinkwheel run` runs with no --config: `thinkwheel init` writes that). Every key is",
        "# optional. Unknown keys are errors.",
    ])
    lines = [*head, ""]
    for key, value in data.items():
        note = SECTION_NOTES.get(key)
        if note:
            lines.append(f"# {note}")
        lines.append(yaml.safe_dump({key: value}, sort_keys=False).rstrip())
        lines.append("")
    return "\n".join(lines)
