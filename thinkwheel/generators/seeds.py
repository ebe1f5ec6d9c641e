"""The seed pool Self-Instruct and Evol-Instruct start from.

Default: a stratified sample of procedural tasks (every family represented), so a run needs
no data files. Users bring their own tasks as rows with at least a `prompt` (read from files
by `task_files`); domain and verifier are inferred when missing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl

from thinkwheel import records
from thinkwheel.generators import procedural
from thinkwheel.generators.self_instruct import VERIFIER_OF_DOMAIN, label_domain
from thinkwheel.verifiers.code_tests import parse_tests


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


def _level(value: Any, i: int, what: str = "difficulty") -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"row {i}: {what} must be an integer, got {value!r}") from None


def chat_prompt(turns: list[Any], i: int) -> str:
    """The task text of a prompt given as chat turns (RL sets in verl's format): one user turn,
    after any system turns, whose text goes in front of it so their instructions stay."""
    try:
        roles = [t["role"] for t in turns]
        texts = [str(t["content"]) for t in turns]
    except (KeyError, TypeError):
        raise ValueError(f"row {i}: prompt is a list but not of {{role, content}} turns") from None
    if roles.count("user") != 1 or roles[-1] != "user" or set(roles) - {"system", "user"}:
        raise ValueError(
            f"row {i}: prompt turns are {roles}; a task is one user turn after any system turns"
        )
    return "\n\n".join(t.strip() for t in texts if t.strip())


def seed_pool(
    rows: Iterable[Mapping[str, Any]], *, round: int | None = 0, family: str = "seed",
    source: str = "seed",
) -> pl.DataFrame:
    """User rows -> TASKS rows, inferring domain and verifier; columns outside the schema go into
    `meta`, so nothing a user's row carried is lost."""
    out = []
    for i, r in enumerate(rows, start=1):  # row 1 is a JSONL file's first line
        if not isinstance(r, Mapping):
            raise ValueError(f"row {i} is a {type(r).__name__}; a task is an object with a prompt")
        prompt = r.get("prompt")
        if isinstance(prompt, list):
            prompt = chat_prompt(prompt, i)
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"row {i}: prompt is a {type(prompt).__name__}, not text")
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError(f"row {i} has no prompt")
        # a row that carries tests is code, however its prompt reads ("e.g. for x = 3 the result
        # is 10" read as math: its tests were ignored and the model labelled it by vote)
        domain = r.get("domain") or ("code" if r.get("tests") else label_domain(prompt))
        if domain is None:
            raise ValueError(
                f"row {i}: cannot infer a domain, set a 'domain' column or the file's domain "
                f"setting: {prompt[:60]!r}"
            )
        verifier = r.get("verifier") or VERIFIER_OF_DOMAIN.get(domain)
        if verifier is None:
            raise ValueError(
                f"row {i}: domain {domain!r} has no built-in verifier, set a 'verifier' column "
                "or the file's verifier setting"
            )
        meta = r.get("meta") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                raise ValueError(f"row {i}: meta is a string but not JSON: {meta[:60]!r}") from None
        if not isinstance(meta, Mapping):
            raise ValueError(f"row {i}: meta is a {type(meta).__name__}, not an object")
        meta = dict(meta)
        if r.get("source") not in (None, source):  # your provenance column, kept
            meta["source"] = r["source"]
        meta.update({k: v for k, v in r.items() if k not in records.TASKS and v is not None})
        reference = r.get("reference")
        if isinstance(reference, (Mapping, list)):  # str() made a Python repr no answer equals
            raise ValueError(f"row {i}: reference is a {type(reference).__name__}; give the answer "
                             f"as text or a number: {str(reference)[:60]}")
        out.append(
            {
                "task_id": records.task_id(domain, prompt, None if reference is None else str(reference)),
                "round": _level(r["round"], i, "round") if r.get("round") is not None else round,
                "domain": domain,
                "family": r.get("family") or family,
                "difficulty": _level(r.get("difficulty"), i),
                "source": source,
                "parent_id": r.get("parent_id"),
                "prompt": prompt,
                "reference": None if reference is None else str(reference),
                "tests": parse_tests(r.get("tests"), f"row {i}"),
                "verifier": verifier,
                "meta": records.dumps(meta),
            }
        )
    return records.frame(out, records.TASKS)
