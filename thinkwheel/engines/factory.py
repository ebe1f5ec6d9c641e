"""Pick and build the engine named in the config (`engine.kind`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from thinkwheel.config import EngineConfig
from thinkwheel.engines.base import Engine


def resolve_model(cfg: EngineConfig, model_path: str | os.PathLike[str] | None = None) -> str:
    """The model to load: an explicit path (a round's trained model) wins over the config;
    "bundled" means the small model shipped in thinkwheel/assets."""
    if model_path is not None:
        return str(model_path)
    if cfg.model != "bundled":
        return cfg.model
    try:
        from thinkwheel.assets import model_path as bundled_model_path
    except Exception as err:  # the assets package may not be built yet in a dev checkout
        raise FileNotFoundError(f"engine.model is 'bundled' but it is unavailable: {err}") from err
    return str(bundled_model_path())


def is_adapter(model: str | os.PathLike[str]) -> bool:
    """A LoRA adapter folder (PEFT's adapter_config.json), not a whole model."""
    return (Path(model) / "adapter_config.json").is_file()


def adapter_base(adapter: str | os.PathLike[str]) -> str:
    """The model a LoRA adapter was trained on (adapter_config.json's base_model_name_or_path):
    vLLM loads that and applies the adapter per request."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text())
        base = config["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        base = None
    if not isinstance(base, str) or not base:
        raise ValueError(f"{adapter} is a LoRA adapter whose adapter_config.json names no "
                         "base_model_name_or_path: set it to the model the adapter was trained on")
    return base


def make_engine(
    cfg: EngineConfig,
    model_path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Engine:
    """Build the configured engine. `cache_dir` is the openai engine's request cache (None = off).

    For vllm, a LoRA adapter folder (it has adapter_config.json) is applied per request to a
    base: the config's model for a round's adapter, the base the adapter names when engine.model
    is the adapter. engine.lora_path applies to the config's model only, not to a round's
    retrained one.
    """
    if cfg.kind == "hf":
        from thinkwheel.engines.hf import HFEngine

        return HFEngine(
            resolve_model(cfg, model_path),
            batch_size=cfg.batch_size,
            device=cfg.device,
            dtype=cfg.dtype,
        )
    if cfg.kind == "vllm":
        from thinkwheel.engines.vllm import VLLMEngine

        model = resolve_model(cfg, model_path)
        configured = resolve_model(cfg) if model_path is not None else model
        lora_path = cfg.lora_path if model == configured else None
        if is_adapter(model):
            lora_path, model = model, adapter_base(model) if model == configured else configured
        return VLLMEngine(
            model,
            tensor_parallel_size=cfg.tensor_parallel_size,
            data_parallel_size=cfg.data_parallel_size,
            enable_prefix_caching=cfg.enable_prefix_caching,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
            lora_path=lora_path,
            dtype=cfg.dtype,
        )
    if cfg.kind == "openai":
        from thinkwheel.engines.openai import OpenAIEngine

        return OpenAIEngine(
            base_url=cfg.base_url,
            model=str(model_path) if model_path is not None else cfg.model,
            api_key=os.environ.get(cfg.api_key_env),
            concurrency=cfg.concurrency,
            max_retries=cfg.max_retries,
            timeout_s=cfg.timeout_s,
            server_supports_n=cfg.server_supports_n,
            cache_dir=cache_dir,
            extra_body=cfg.extra_body,
        )
    raise ValueError(f"unknown engine.kind {cfg.kind!r}")
