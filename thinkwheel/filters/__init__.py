"""Filters: MinHash near-dedup, benchmark decontamination, quality checks, ROUGE-L novelty.

Stages (pure, polars in / polars out) live in `stage`; the algorithms in their own modules.
"""

from thinkwheel.filters.decontam import build_index, find_contamination, load_benchmarks
from thinkwheel.filters.minhash import MinHashParams, dedup, near_duplicate_pairs
from thinkwheel.filters.novelty import novel_mask, rouge_l
from thinkwheel.filters.stage import (
    DROP_REASONS,
    FUNNEL_STAGES,
    decontaminate_tasks,
    dedup_tasks,
    filter_candidates,
    funnel,
)

__all__ = [
    "DROP_REASONS",
    "FUNNEL_STAGES",
    "MinHashParams",
    "build_index",
    "decontaminate_tasks",
    "dedup",
    "dedup_tasks",
    "filter_candidates",
    "find_contamination",
    "funnel",
    "load_benchmarks",
    "near_duplicate_pairs",
    "novel_mask",
    "rouge_l",
]
