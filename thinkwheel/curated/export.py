"""Turn a round's kept candidates into a `<think>` chat SFT set, a GRPO prompt set and a DPO
preference set.

The assistant turn of every SFT row is exactly

    "<think>" + reasoning.strip() + "</think>" + "\n" + answer.strip()

i.e. no whitespace inside the tags, one newline between `</think>` and the answer, and no
trailing newline. That is the shape the bundled model's chat template renders and the shape
`records.split_think` parses back, so a model trained on it emits completions the verifiers
and the next round's sampler read unchanged. A candidate without reasoning (no `</think>`)
gets an empty think block rather than being dropped here: dropping is the filters' job,
and they record a `drop_reason`.

`sft_frame`, `grpo_frame`, `dpo_frame`, `verl_frame` and `task_pass_rates` are pure;
`write_dataset` and `read_dataset` are the I/O edge (parquet, JSONL, a `datasets`
`save_to_disk` folder, and the GRPO set as verl's RL parquet).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from thinkwheel.config import ExportConfig
from thinkwheel.engines.base import request_for
from thinkwheel.generators.repair import repairs_made
from thinkwheel.generators.selection import candidate_outcomes  # noqa: F401 (re-exported)
from thinkwheel.generators.selection import pass_rates as task_pass_rates  # noqa: F401
from thinkwheel.records import CANDIDATES, TASKS, conform
from thinkwheel.store import jsonl_has_rows, read_jsonl

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SFT_LINEAGE = [
    "task_id",
    "candidate_id",
    "round",
    "domain",
    "family",
    "source",
    "verifier",
    "model",
    "repairs",  # steps the checker corrected (sampling.repair); 0: the model's own sample
]
GRPO_COLUMNS = [
    "prompt",
    "reference",
    "tests",
    "verifier",
    "task_id",
    "domain",
    "family",
    "pass_rate",
    "meta",  # a plugin verifier reads its extras here, as it does in the flow's verify stage
]
FORMATS = ("parquet", "hf", "jsonl", "verl")
SPLITS = ("sft", "grpo", "dpo")


def assistant_content(reasoning: str | None, answer: str | None) -> str:
    """The assistant turn for one candidate (the format documented at the top of this module)."""
    return f"{THINK_OPEN}{(reasoning or '').strip()}{THINK_CLOSE}\n{(answer or '').strip()}"


def _assistant_expr() -> pl.Expr:
    # Vectorised twin of `assistant_content`; a test pins the two to the same output.
    return pl.concat_str(
        [
            pl.lit(THINK_OPEN),
            pl.col("reasoning").str.strip_chars().fill_null(""),
            pl.lit(THINK_CLOSE + "\n"),
            pl.col("answer").str.strip_chars().fill_null(""),
        ]
    )


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.alias("content"))


def _prompt_messages(system_prompt: str | None, user: pl.Expr) -> list[pl.Expr]:
    """[system?, user], the rule of `engines.base.request_for`: an empty system prompt adds no
    turn. Training on an empty system turn the model is never sampled with (ChatML), or
    failing on it (Gemma-style templates reject the system role), would both be wrong."""
    system = [_message("system", pl.lit(system_prompt))] if system_prompt else []
    return [*system, _message("user", user)]


def sft_frame(
    tasks: pl.DataFrame,
    candidates: pl.DataFrame,
    selected_ids: Iterable[str] | pl.Series,
    system_prompt: str,
) -> pl.DataFrame:
    """One TRL-ready row per selected candidate: `messages` [system?, user, assistant] + lineage.

    Rows are sorted by (task_id, sample_idx) so the output does not depend on input order.
    Raises ValueError when a selected id has no candidate or its task is missing: an export
    that silently loses rows would make the funnel lie.
    """
    ids = pl.Series("candidate_id", list(selected_ids), dtype=pl.Utf8).unique()
    cands = conform(candidates, CANDIDATES).filter(pl.col("candidate_id").is_in(ids.implode()))
    if cands.height != ids.len():
        missing = ids.filter(~ids.is_in(cands["candidate_id"].implode())).head(3).to_list()
        raise ValueError(f"selected candidate ids not in candidates: {missing}")
    cands = cands.unique("candidate_id", keep="first")
    task_cols = ["task_id", "round", "domain", "family", "source", "prompt", "verifier"]
    t = conform(tasks, TASKS).select(task_cols).unique("task_id", keep="first")
    joined = cands.join(t, on="task_id", how="left", suffix="_task")
    orphans = joined.filter(pl.col("prompt").is_null())
    if orphans.height:
        raise ValueError(
            f"candidates whose task is missing: {orphans['task_id'].head(3).to_list()}"
        )
    messages = pl.concat_list(
        *_prompt_messages(system_prompt, pl.col("prompt")),
        _message("assistant", _assistant_expr()),
    ).alias("messages")
    return joined.sort("task_id", "sample_idx").select(
        messages,
        "task_id",
        "candidate_id",
        pl.coalesce("round", "round_task").cast(pl.Int32).alias("round"),
        "domain",
        "family",
        "source",
        "verifier",
        "model",
        repairs_made().alias("repairs"),
    )


def dpo_frame(
    tasks: pl.DataFrame,
    candidates: pl.DataFrame,
    verdicts: pl.DataFrame,
    filtered: pl.DataFrame,
    system_prompt: str,
    pairs_per_task: int = 1,
) -> pl.DataFrame:
    """TRL-ready preference pairs from one round: conversational `prompt` [system?, user],
    `chosen` and `rejected` [assistant], from the same task.

    Chosen are the kept samples (the SFT set); rejected are samples whose answer the verifier
    failed or whose reasoning states false arithmetic (never unverifiable ones, passed None),
    labelled `wrong_answer` / `false_arithmetic` in `rejected_reason`. Both sides go through
    `assistant_content`, so a pair differs in what was said, never in whitespace around the
    tags. Pair i of a task is (chosen[i mod #chosen], rejected[i]) in sample order, up to
    `pairs_per_task`; tasks that lack either side give none.
    """
    cands = conform(candidates, CANDIDATES).unique("candidate_id", keep="first")
    verdict = verdicts.select("candidate_id", "passed").unique("candidate_id", keep="first")
    drops = filtered.select("candidate_id", "drop_reason").unique("candidate_id", keep="first")
    d = (
        cands.join(verdict, on="candidate_id", how="left")
        .join(drops, on="candidate_id", how="left")
        .with_columns(
            side=pl.when(pl.col("passed").fill_null(False) & pl.col("drop_reason").is_null())
            .then(pl.lit("chosen"))
            .when(pl.col("passed").eq(False))
            .then(pl.lit("wrong_answer"))
            .when(pl.col("drop_reason") == "false_arithmetic")
            .then(pl.lit("false_arithmetic")),
            content=_assistant_expr(),
        )
        .filter(pl.col("side").is_not_null())
        .sort("task_id", "sample_idx")
    )
    chosen = d.filter(pl.col("side") == "chosen").group_by("task_id", maintain_order=True).agg(
        chosen_id=pl.col("candidate_id"), chosen=pl.col("content")
    )
    rejected = d.filter(pl.col("side") != "chosen").group_by("task_id", maintain_order=True).agg(
        rejected_id=pl.col("candidate_id"), rejected=pl.col("content"), why=pl.col("side")
    )
    task_cols = ["task_id", "round", "domain", "family", "prompt"]
    t = conform(tasks, TASKS).select(task_cols).unique("task_id", keep="first")
    rows = []
    # in task order, every time: a join's order is not kept, and DPO's input hash (and its data
    # order) changed on every export, so an export-only change retrained the model
    pairs = chosen.join(rejected, on="task_id", maintain_order="left").join(
        t, on="task_id", maintain_order="left")
    for r in pairs.iter_rows(named=True):
        for i in range(min(pairs_per_task, len(r["rejected"]))):
            c = i % len(r["chosen"])
            rows.append({
                "prompt": request_for(r["prompt"], system_prompt),
                "chosen": [{"role": "assistant", "content": r["chosen"][c]}],
                "rejected": [{"role": "assistant", "content": r["rejected"][i]}],
                "task_id": r["task_id"], "chosen_id": r["chosen_id"][c],
                "rejected_id": r["rejected_id"][i], "rejected_reason": r["why"][i],
                "round": r["round"], "domain": r["domain"], "family": r["family"],
            })  # fmt: skip
    message = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))
    schema = {
        "prompt": message, "chosen": message, "rejected": message, "task_id": pl.Utf8,
        "chosen_id": pl.Utf8, "rejected_id": pl.Utf8, "rejected_reason": pl.Utf8,
        "round": pl.Int32, "domain": pl.Utf8, "family": pl.Utf8,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _pass_rate_frame(pass_rates: pl.DataFrame | Mapping[str, float]) -> pl.DataFrame:
    if isinstance(pass_rates, pl.DataFrame):
        return pass_rates.select(
            pl.col("task_id").cast(pl.Utf8), pl.col("pass_rate").cast(pl.Float64)
        )
    return pl.DataFrame(
        {"task_id": list(pass_rates), "pass_rate": [float(v) for v in pass_rates.values()]},
        schema={"task_id": pl.Utf8, "pass_rate": pl.Float64},
    )


def grpo_frame(
    tasks: pl.DataFrame,
    pass_rates: pl.DataFrame | Mapping[str, float],
    system_prompt: str | None = None,
    band: tuple[float, float] | None = None,
) -> pl.DataFrame:
    """GRPO prompt set: conversational `prompt` [system?, user] + what the reward needs.

    `pass_rates` is `task_pass_rates(...)` output or a {task_id: rate} mapping; tasks without
    a rate get null. With `band=(lo, hi)` only tasks with lo <= pass_rate <= hi are kept
    (open-r1's [0.2, 0.8]: always-solved and never-solved prompts give GRPO no signal).
    """
    if system_prompt is None:
        system_prompt = ExportConfig().system_prompt
    t = conform(tasks, TASKS).unique("task_id", keep="first")
    df = t.join(_pass_rate_frame(pass_rates), on="task_id", how="left")
    if band is not None:
        lo, hi = band
        df = df.filter(pl.col("pass_rate").is_between(lo, hi))
    prompt = pl.concat_list(*_prompt_messages(system_prompt, pl.col("prompt"))).alias("prompt")
    return df.sort("task_id").select(prompt, *GRPO_COLUMNS[1:])


def verl_frame(grpo: pl.DataFrame) -> pl.DataFrame:
    """The GRPO set in verl's RL data format (its `examples/data_preprocess` shape): a
    `data_source` per family (verl reports validation scores per source), the chat `prompt`,
    `ability`, `reward_model.ground_truth` (the reference) and, in `extra_info`, what our
    verifiers need besides it (tests, verifier name, meta), which verl hands to the reward
    function `thinkwheel.train.verl_reward.compute_score`."""
    g = conform(grpo, _VERL_NEEDS).with_row_index("index")
    return g.select(
        ("thinkwheel/" + pl.col("family").fill_null("tasks")).alias("data_source"),
        "prompt",
        pl.col("domain").alias("ability"),
        pl.struct(pl.lit("rule").alias("style"),
                  pl.col("reference").fill_null("").alias("ground_truth")).alias("reward_model"),
        pl.struct(pl.col("index").cast(pl.Int64), "task_id", "verifier", "tests", "meta",
                  "family", "pass_rate").alias("extra_info"),
    )


_VERL_NEEDS = {"reference": pl.Utf8, "tests": pl.List(pl.Utf8), "verifier": pl.Utf8,
               "task_id": pl.Utf8, "domain": pl.Utf8, "family": pl.Utf8, "pass_rate": pl.Float64,
               "meta": pl.Utf8}


def write_dataset(
    sft: pl.DataFrame,
    grpo: pl.DataFrame,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    card: str | None = None,
    dpo: pl.DataFrame | None = None,
) -> dict[str, Any]:
    """Write sft/grpo (and dpo when given) as parquet, JSONL and/or a `datasets` folder, plus
    README.md (the card).

    Everything is written into a temporary sibling directory that is renamed onto `out_dir`
    only when complete, so a reader sees the old export or the new one, never half of one.
    Returns {"path", "files" (relative paths), "counts", "formats"}.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown export format(s) {bad}; choose from {list(FORMATS)}")
    out = Path(out_dir)
    check_export_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_writes(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        frames = {"sft": sft, "grpo": grpo, **({"dpo": dpo} if dpo is not None else {})}
        for name, df in frames.items():
            if "parquet" in formats:
                df.write_parquet(tmp / f"{name}.parquet")
            if "jsonl" in formats:
                df.write_ndjson(tmp / f"{name}.jsonl")
        if "hf" in formats:
            _save_hf(frames, tmp / "hf")
        if "verl" in formats:  # an RL set: verl trains on the GRPO prompts
            (tmp / "verl").mkdir()
            verl_frame(grpo).write_parquet(tmp / "verl" / "train.parquet")
        if card is not None:
            (tmp / "README.md").write_text(card, encoding="utf-8")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {
        "path": str(out),
        "files": files,
        "counts": {name: df.height for name, df in frames.items()},
        "formats": [f for f in FORMATS if f in formats],
    }


def _save_hf(frames: Mapping[str, pl.DataFrame], path: Path) -> None:
    import datasets  # heavy import: only when the hf format is asked for

    # an empty split is left out: `datasets` saves one without a data file and then cannot
    # load the folder at all (IndexError), which broke every round without GRPO prompts
    dd = datasets.DatasetDict({k: datasets.Dataset.from_polars(v) for k, v in frames.items()
                               if v.height})
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a bar per split for a write of a second; ours say enough
    try:
        dd.save_to_disk(str(path))
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def check_export_dir(out: Path) -> None:
    """An export replaces its folder whole, so the folder must be empty or an export: `--out`
    naming the run itself (or any folder of yours) deleted it without a word."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out} is a file; an export writes a folder")
    strays = sorted(p.name for p in out.iterdir()
                    if not (p.name in ("README.md", "hf", "verl") or p.name.split(".")[0] in SPLITS))
    if strays:
        raise ValueError(
            f"{out} holds {', '.join(strays[:3])}{' ...' if len(strays) > 3 else ''}, which is not "
            "an export: an export replaces its whole folder, so it will not write there; use "
            "another --out")


def _sweep_dead_writes(out: Path) -> None:
    """Remove what an export killed mid-write left beside `out` (its temporary folder, or the
    old export it had moved aside): each is named with the writing process's id, and only a
    process that is gone leaves its own behind. One still running keeps its folders."""
    for left in out.parent.glob(f".{out.name}.*-*-*"):
        kind, _, rest = left.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(left, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _replace_dir(src: Path, dst: Path) -> None:
    # Two renames: the old export moves aside, the new one moves in, then the old is deleted.
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant"}


def chat_messages(sft: pl.DataFrame) -> pl.DataFrame:
    """An SFT set with `messages` as chat turns (role/content): as it is when it has them;
    from ShareGPT `conversations` (from/value, human/gpt), the shape OpenThoughts and most
    distilled reasoning sets ship in, otherwise. Anything else is a ValueError naming both."""
    if "messages" in sft.columns:
        return sft
    if "conversations" not in sft.columns:
        raise ValueError(f"an SFT set needs `messages` (chat turns: role, content) or ShareGPT "
                         f"`conversations` (from, value); this one has {sft.columns}")
    turn = pl.element().struct
    roles = sft["conversations"].explode().struct.field("from").drop_nulls().unique().to_list()
    unknown = sorted(set(roles) - set(_SHAREGPT_ROLES))
    if unknown:
        raise ValueError(f"`conversations` has speakers {unknown}; known: {sorted(_SHAREGPT_ROLES)}")
    return sft.with_columns(pl.col("conversations").list.eval(pl.struct(
        turn.field("from").replace_strict(_SHAREGPT_ROLES, return_dtype=pl.Utf8).alias("role"),
        turn.field("value").alias("content"),
    )).alias("messages"))


def read_dataset(path: str | Path) -> dict[str, pl.DataFrame]:
    """Load an exported dataset (folder, `datasets` folder, parquet or JSONL file) by split name."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".parquet":
            return {p.stem: pl.read_parquet(p)}
        if p.suffix in (".jsonl", ".ndjson"):
            return {p.stem: read_jsonl(p)}
        raise ValueError(f"not a dataset file (want .parquet or .jsonl): {p}")
    if not p.is_dir():
        raise FileNotFoundError(f"no dataset at {p}")
    for ext, reader in ((".parquet", pl.read_parquet), (".jsonl", read_jsonl)):
        # an empty JSONL split (no GRPO prompts this round) has no columns to read: left out
        found = {n: p / f"{n}{ext}" for n in SPLITS
                 if (p / f"{n}{ext}").is_file() and (ext != ".jsonl" or jsonl_has_rows(p / f"{n}{ext}"))}
        if found:
            return {n: reader(f) for n, f in found.items()}
    empty = sorted(f.name for f in p.glob("*.jsonl") if f.stem in SPLITS)
    if empty:  # not "no dataset here": it is here, and it kept nothing
        raise ValueError(f"{p}: the export has no rows ({', '.join(empty)} are empty)")
    hf = p / "hf" if (p / "hf").is_dir() else p
    if (hf / "dataset_dict.json").is_file() or (hf / "dataset_info.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(hf))
        if isinstance(ds, datasets.DatasetDict):
            return {k: v.to_polars() for k, v in ds.items()}
        return {hf.name: ds.to_polars()}
    verl = p / "train.parquet" if p.name == "verl" else p / "verl" / "train.parquet"
    if verl.is_file():  # `--format verl`: the GRPO prompts in verl's RL layout
        return {"grpo": pl.read_parquet(verl)}
    raise ValueError(f"no sft/grpo/dpo parquet, jsonl, datasets or verl folder in {p}")

