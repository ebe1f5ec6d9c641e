"""Filters: MinHash near-dedup, benchmark decontamination, quality checks, ROUGE-L novelty.

Stages (pure, polars in / polars out) live in `stage`; the algorithms in their own modules.
The names below load on first use: the false-step check (`filters.arithmetic`, stdlib only)
is imported by the math verifier's worker processes and the GRPO rewards, and importing the
package eagerly cost each of them scipy and datasketch (0.65 s).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "build_index": "decontam", "find_contamination": "decontam", "load_benchmarks": "decontam",
    "MinHashParams": "minhash", "dedup": "minhash", "near_duplicate_pairs": "minhash",
    "novel_mask": "novelty", "rouge_l": "novelty",
    "DROP_REASONS": "stage", "FUNNEL_STAGES": "stage", "decontaminate_tasks": "stage",
    "dedup_tasks": "stage", "filter_candidates": "stage", "funnel": "stage",
}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'thinkwheel.filters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"thinkwheel.filters.{_WHERE[name]}"), name)
