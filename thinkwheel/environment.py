"""Process settings for the flow and the commands that load models, applied before prefect or
transformers are imported."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Our own bars report progress: the libraries' loading bars and info logs are noise."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def configure_environment() -> None:
    """Settings a fresh machine needs before prefect/transformers are imported.

    Prefect's first flow starts a temporary server (~20 s cold) and its default start-up
    timeout is 20 s; no hub is reachable here.
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    quiet_libraries()
