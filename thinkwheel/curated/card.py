"""The dataset card (README.md with Hugging Face YAML front matter) of an exported round.

The front matter uses the Hub's own keys (license, size_categories, task_categories, tags,
and `configs` so `load_dataset(folder, "sft")` finds the files) plus a `thinkwheel` block
holding the provenance a reader needs to trust or reproduce the data: generator model,
sources, verifiers, filters with their thresholds, counts, decontamination hits and the
config hash. Pure: returns the text; `export.write_dataset(..., card=...)` writes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import polars as pl
import yaml

from thinkwheel.config import RunConfig
from thinkwheel.curated import inspect as ins
from thinkwheel.records import FILTERED, conform

_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]  # fmt: skip


def size_category(n: int) -> str:
    """The Hub's size bucket for n rows."""
    return next((label for limit, label in _SIZES if n < limit), "n>10M")


def _counts(df: pl.DataFrame, col: str) -> dict[str, int]:
    if col not in df.columns or not df.height:
        return {}
    vc = df.group_by(col).len().sort(["len", col], descending=[True, False])
    return {str(k): int(v) for k, v in vc.iter_rows()}


def filter_settings(config: RunConfig) -> dict[str, Any]:
    """The filters and thresholds that decided what was kept, from the run config."""
    f, s = config.filters, config.sampling
    return {
        "verified_only": config.export.verified_only,
        "keep_per_task": s.keep_per_task,
        "grpo_pass_band": list(s.grpo_pass_band),
        "dedup": f.dedup.model_dump(mode="json"),
        "decontam": {
            "enabled": f.decontam.enabled, "ngram": f.decontam.ngram,
            "min_overlap": f.decontam.min_overlap,
            "benchmarks": [b.name for b in f.decontam.benchmarks],
        },
        "quality": f.quality.model_dump(mode="json"),
    }  # fmt: skip


def decontam_results(filtered: pl.DataFrame | None,
                     tasks: pl.DataFrame | None = None) -> dict[str, Any]:
    """Decontamination drops by reason, with a few of the benchmark items they collided with;
    and the tasks dropped as contaminated before sampling (`tasks.parquet`), which is where the
    flow catches most (the card said "0 of N candidates" beside them)."""
    pre = (tasks.filter(pl.col("drop_reason") == "contaminated")
           if tasks is not None and "drop_reason" in tasks.columns else None)
    before = {"tasks_dropped": 0 if pre is None else pre.height,
              "task_examples": [] if pre is None else sorted(set(pre["drop_ref"].drop_nulls()))[:5]}
    if filtered is None or not filtered.height:
        return {"checked": 0, "dropped": 0, "by_reason": {}, **before}
    f = conform(filtered, FILTERED).with_columns(ins.drop_stage().alias("stage"))
    hits = f.filter(pl.col("stage") == "decontam")
    by_reason = {
        r: {"count": n, "examples": sorted({x for x in refs if x})[:5]}
        for r, n, refs in hits.group_by("drop_reason")
        .agg(pl.len(), pl.col("drop_ref"))
        .sort("drop_reason")
        .iter_rows()
    }
    return {"checked": f.height, "dropped": hits.height, "by_reason": by_reason, **before}


MODEL_LABELLED = ("consensus", "codet")  # references the model itself made: its majority, its tests


def model_labelled(tasks: pl.DataFrame | None, sets: Mapping[str, pl.DataFrame]) -> dict[str, int]:
    """Rows of each set whose task's reference or tests the model made itself
    (`meta.reference_source`): a verifier checks against them, but they are only as right as
    the model's majority was."""
    if tasks is None or "meta" not in tasks.columns or not tasks.height:
        return {}
    source = tasks["meta"].cast(pl.Utf8).str.json_path_match("$.reference_source")
    ids = tasks.filter(source.is_in(list(MODEL_LABELLED)).fill_null(False))["task_id"].implode()
    return {name: int(df["task_id"].is_in(ids).sum()) if "task_id" in df.columns else 0
            for name, df in sets.items()}


def dataset_card(
    sft: pl.DataFrame,
    grpo: pl.DataFrame,
    *,
    name: str = "thinkwheel dataset",
    config: RunConfig | None = None,
    config_hash: str | None = None,
    generator_model: str | None = None,
    round: int | str | None = None,  # noqa: A002 (the round's number, or "0-2" for several)
    funnel: pl.DataFrame | None = None,
    filtered: pl.DataFrame | None = None,
    data_format: str = "parquet",
    license: str = "apache-2.0",  # noqa: A002 (the Hub's key name)
    dpo: pl.DataFrame | None = None,
    tasks: pl.DataFrame | None = None,
) -> str:
    """README.md text for an export: HF front matter + a human-readable description."""
    config = config or RunConfig()
    if config_hash is None:
        dump = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
        config_hash = hashlib.sha256(dump).hexdigest()[:16]
    if generator_model is None and "model" in sft.columns and sft.height:
        generator_model = ", ".join(sorted(set(sft["model"].drop_nulls().to_list())))
    verifiers = sorted(set(_counts(sft, "verifier")) | set(_counts(grpo, "verifier")))
    decontam = decontam_results(filtered, tasks)
    meta = {
        "round": round,
        "generator_model": generator_model,
        "config_hash": config_hash,
        "counts": {"sft": sft.height, "grpo": grpo.height}
        | ({"dpo": dpo.height} if dpo is not None else {}),
        "sources": _counts(sft, "source"),
        "domains": _counts(sft, "domain") or _counts(grpo, "domain"),
        "families": _counts(sft, "family") or _counts(grpo, "family"),
        # which set `domains` and `families` count: the SFT set, or the GRPO set when it is empty
        "counted_in": "sft" if sft.height else "grpo",
        "model_labelled": model_labelled(tasks, {"sft": sft, "grpo": grpo}),
        "verifiers": verifiers,
        "filters": filter_settings(config),
        "decontamination": decontam,
        "funnel": funnel.to_dicts() if funnel is not None else None,
        # SFT rows whose trace the checker corrected at a false step (sampling.repair)
        "repaired": int((sft["repairs"] > 0).sum()) if "repairs" in sft.columns else 0,
    }
    front = {
        "license": license,
        "language": ["en"],
        "pretty_name": name,
        "size_categories": [size_category(max(sft.height, grpo.height))],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "reasoning", "think", "rejection-sampling", "thinkwheel"],
        # an empty split has no rows to load (and the hf format writes no file for it)
        "configs": [
            {"config_name": split, "data_files": [{"split": "train", "path": path}]}
            for split, df in (("sft", sft), ("grpo", grpo), ("dpo", dpo))
            if df is not None and df.height and (path := data_path(split, data_format))
        ],
        "thinkwheel": meta,
    }
    head = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{head}---\n\n{_body(name, meta, data_format)}"


def data_path(split: str, data_format: str) -> str | None:
    """Where a split's rows are in an export of this format, for the card's `configs` (so
    `load_dataset(folder, split)` finds them): the `datasets` folder's arrow files for hf, and
    for verl only its GRPO set. None when the export holds no such split."""
    if data_format == "verl":
        return "verl/train.parquet" if split == "grpo" else None
    if data_format == "hf":
        return f"hf/{split}/*.arrow"
    return f"{split}.{'jsonl' if data_format == 'jsonl' else 'parquet'}"


def _examples(dec: Mapping[str, Any]) -> str:
    refs = dec.get("task_examples") or []
    return f" (e.g. {', '.join(f'`{r}`' for r in refs)})" if refs else ""


def _loading(data_format: str, counts: Mapping[str, int]) -> str:
    """Code that loads a set this export holds: `datasets` has no "jsonl" builder (it is
    "json"), and an export with no SFT rows has no `sft` to load."""
    if data_format == "verl":
        return ("# the GRPO set in verl's RL format, for data.train_files:\n"
                "import polars as pl\ngrpo = pl.read_parquet(\"verl/train.parquet\")")
    split = next((s for s in ("sft", "grpo", "dpo") if counts.get(s)), None)
    if split is None:
        return "# this export holds no rows"
    if data_format == "hf":
        return f'import datasets\n{split} = datasets.load_from_disk("hf")["{split}"]'
    builder = "json" if data_format == "jsonl" else data_format
    return (f'from datasets import load_dataset\n{split} = load_dataset("{builder}", '
            f'data_files="{data_path(split, data_format)}", split="train")')


def _md_table(rows: Mapping[str, Any], key: str, value: str) -> str:
    if not rows:
        return "_none_\n"
    lines = [f"| {key} | {value} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def _dpo_line(m: Mapping[str, Any]) -> str:
    if "dpo" not in m["counts"]:
        return ""
    return (
        f"\n- **dpo** ({m['counts']['dpo']} rows): conversational `prompt`, `chosen` and `rejected`"
        "\n  from the same task: chosen is a kept sample, rejected one the verifier failed or whose"
        "\n  reasoning states false arithmetic (`rejected_reason`)."
    )


def _repaired_line(m: dict[str, Any]) -> str:
    if not m.get("repaired"):
        return ""
    return (f"\n{m['repaired']} of the {m['counts']['sft']} SFT solutions were repaired: the model's "
            "trace continued from its first false arithmetic step with the value corrected "
            "(`repairs` > 0; sampling.repair).")


def _labelled_line(m: Mapping[str, Any]) -> str:
    n = m.get("model_labelled") or {}
    if not any(n.values()):
        return ""
    return (f"\n\n**{n.get('sft', 0)} sft and {n.get('grpo', 0)} grpo rows are checked against "
            "references the model made itself** (its majority answer, or tests it wrote: "
            "`meta.reference_source` consensus / codet), not given ones: they are only as right as "
            "that majority.")


def _body(name: str, m: Mapping[str, Any], data_format: str) -> str:
    f = m["filters"]
    dec = m["decontamination"]
    funnel = ""
    if m["funnel"]:
        funnel = "\n## Funnel\n\n" + _md_table(
            {r["stage"]: f"{r['count']}" + (f" ({r['pct']}%)" if r["pct"] is not None else "")
             for r in m["funnel"]}, "stage", "count",
        )  # fmt: skip
    return f"""# {name}

Synthetic reasoning data made by thinkwheel, round {m["round"]}:
candidate solutions were sampled from `{m["generator_model"]}`, each was checked by a verifier,
and the survivors of decontamination, quality filters and near-dedup were kept, at most
{f["keep_per_task"]} per task.{_labelled_line(m)}{_repaired_line(m)}

- **sft** ({m["counts"]["sft"]} rows): `messages` = [system, user, assistant]; the assistant
  turn is exactly `<think>` + reasoning + `</think>` + newline + answer. Lineage columns:
  task_id, candidate_id, round, domain, family, source, verifier, model, repairs.
- **grpo** ({m["counts"]["grpo"]} rows): conversational `prompt` = [system, user], plus
  `reference`, `tests` and `verifier` for the reward, and the task's `pass_rate`.{_dpo_line(m)}

```python
{_loading(data_format, m["counts"])}
```

## Provenance

- generator model: `{m["generator_model"]}`
- verifiers: {", ".join(f"`{v}`" for v in m["verifiers"]) or "none"}
- config hash: `{m["config_hash"]}`

### Sources

{_md_table(m["sources"], "source", "sft rows")}
### Filters and thresholds

- verified only: {f["verified_only"]}; at most {f["keep_per_task"]} kept per task
- near-dedup: MinHash on {f["dedup"]["field"]}, threshold {f["dedup"]["threshold"]},
  {f["dedup"]["num_perm"]} permutations, {f["dedup"]["ngram"]}-gram {f["dedup"]["shingle"]}s
  (enabled: {f["dedup"]["enabled"]})
- decontamination: {f["decontam"]["ngram"]}-grams, flagged at ≥ {f["decontam"]["min_overlap"]}
  coverage of a benchmark item, against {", ".join(f["decontam"]["benchmarks"]) or "nothing"}
  (enabled: {f["decontam"]["enabled"]}); tasks also against the held-out eval split, always
- quality: {", ".join(f"{k}={v}" for k, v in f["quality"].items())}
- GRPO prompts: pass-rate band {f["grpo_pass_band"]}

### Decontamination results

{dec["tasks_dropped"]} task(s) dropped as contaminated before sampling{_examples(dec)};
{dec["dropped"]} of {dec["checked"]} candidates dropped as contaminated after it.

{_md_table({r: v["count"] for r, v in dec["by_reason"].items()}, "reason", "dropped")}{funnel}"""
