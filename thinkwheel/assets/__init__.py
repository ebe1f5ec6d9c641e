"""The bundled model and seed files the default run uses (no hub needed)."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent
MODEL_DIR = ASSETS / "model"


def model_path() -> str:
    """Path of the bundled model; a clear error if it was not shipped or regenerated."""
    if not (MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"bundled model missing at {MODEL_DIR}; regenerate it with `thinkwheel pretrain`"
        )
    return str(MODEL_DIR)
