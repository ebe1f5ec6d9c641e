"""The seed pool Self-Instruct and Evol-Instruct start from.

Default: a stratified sample of procedural tasks (every family represented), so a run needs
no data files. Users bring their own seeds as rows with at least a `prompt`; domain and
verifier are inferred when missing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel import records
from thinkwheel.generators import procedural
from thinkwheel.generators.self_instruct import VERIFIER_OF_DOMAIN, label_domain


def default_seeds(
    n: int = 24, *, seed: int = 4321, families: Iterable[str] = ("all",), difficulty: int = 1
) -> pl.DataFrame:
    """`n` procedural tasks spread evenly over `families`, deterministic in `seed`."""
    fams = procedural.resolve_families(families)
    per_family = -(-n // len(fams))
    tasks = procedural.generate_tasks(
        families=fams, per_family=per_family, difficulty=difficulty, seed=seed
    )
    rng = random.Random(f"seeds:{seed}")
    by_family = {f: tasks.filter(pl.col("family") == f).to_dicts() for f in fams}
    for rows in by_family.values():
        rng.shuffle(rows)
    picked: list[dict[str, Any]] = []
    for i in range(per_family):  # round-robin so a small n still covers the families
        picked += [rows[i] for rows in by_family.values() if i < len(rows)]
    return records.frame(picked[:n], records.TASKS)


def seed_pool(rows: Iterable[Mapping[str, Any]], *, round: int = 0) -> pl.DataFrame:
    """User seed rows -> TASKS rows with source `seed`, inferring domain and verifier."""
    out = []
    for i, r in enumerate(rows):
        prompt = str(r.get("prompt") or "").strip()
        if not prompt:
            raise ValueError(f"seed row {i} has no prompt")
        domain = r.get("domain") or label_domain(prompt)
        if domain is None:
            raise ValueError(f"seed row {i}: cannot infer a domain, set 'domain': {prompt[:60]!r}")
        meta = r.get("meta")
        out.append(
            {
                **r,
                "task_id": records.task_id(domain, prompt, r.get("reference")),
                "round": r.get("round", round),
                "domain": domain,
                "family": r.get("family") or "seed",
                "source": r.get("source") or "seed",
                "prompt": prompt,
                "verifier": r.get("verifier") or VERIFIER_OF_DOMAIN.get(domain),
                "meta": meta if isinstance(meta, str) else records.dumps(meta or {}),
            }
        )
    return records.frame(out, records.TASKS)


def read_seeds(path: str | Path) -> pl.DataFrame:
    """Seed rows from a .jsonl, .json (a list) or .parquet file (for flows and the CLI)."""
    p = Path(path)
    if p.suffix == ".parquet":
        rows = pl.read_parquet(p).to_dicts()
    elif p.suffix == ".json":
        rows = json.loads(p.read_text())
    else:
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return seed_pool(rows)
