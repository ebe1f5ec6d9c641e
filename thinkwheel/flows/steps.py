"""One function per stage of a round: load inputs from the store, call the pure stage, write
outputs atomically, record the stage in the manifest. Each is skipped when the manifest holds
the same input and config hashes. Prefect wraps these as tasks in `flywheel.py`; they do not
import Prefect themselves, so they run and test without a server.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel

from thinkwheel import records
from thinkwheel.config import DecontamConfig, RunConfig, TaskFilesConfig, hashed
from thinkwheel.engines.base import Engine, SamplingParams, request_for
from thinkwheel.filters.steps import STEPS_VERSION, task_conclusion, task_steps
from thinkwheel.flows.progress import reporter
from thinkwheel.generators.repair import dpo_candidates, own_verdicts, repaired, repaired_ids
from thinkwheel.store import (
    RunStore,
    atomic_write_bytes,
    eval_paths,
    file_stamps,
    frame_hash,
    ids_hash,
    model_hash,
    path_hash,
)
from thinkwheel.verifiers.batch import verifier_errors

EngineFactory = Callable[[str], Engine]  # model dir -> engine


def _hash(*parts: Any) -> str:
    return records.content_id(*parts)


def _content(table: pl.DataFrame) -> str:
    """A round table's content as a stage input: ids alone miss a re-verified candidate that
    now fails, or a task file's new verifier for the same prompt. Timings are left out, so a
    stage is not redone for a re-run that decided the same."""
    key = table.columns[0]  # task_id / candidate_id
    return frame_hash(table.drop("seconds", strict=False).sort(key, maintain_order=True))


def _order(ids: pl.Series) -> str:
    """The order of a stage's rows: shard i is rows i*size.. in it, so the same set reordered
    (a reordered mix or task file) must not reuse the old shards for other rows."""
    return records.content_id(ids.to_list())


def _files(*paths: str | None) -> str:
    """The content of the files a stage reads by path (benchmarks, templates): an edit in
    place, or a relative path read from another folder, is new input."""
    return _hash([path_hash(p) for p in paths if p and not p.startswith("builtin:")])


def _benchmarks(cfg: RunConfig) -> list[str]:
    d = cfg.filters.decontam
    return [b.path for b in d.benchmarks] if d.enabled else []


def _plugin_code(*frames: pl.DataFrame | None, plugins: list[str] | tuple = ()) -> str:
    """The source of the plugin verifiers these rows name (and `verify.plugins`): a fixed
    plugin must re-judge, not leave its old verdicts in place."""
    from thinkwheel.verifiers.registry import code_fingerprint, load_plugins

    names = load_plugins(plugins)  # the rows may name what a plugin module registers
    for f in frames:
        if f is not None and "verifier" in f.columns:
            names += f["verifier"].drop_nulls().unique().to_list()
    return _hash(code_fingerprint(names))


def _reused(store: RunStore, k: int | str, stage: str, in_hash: str, cfg_hash: str, *,
            also: bool = True) -> bool:
    """Whether the stage is done for these inputs (and `also`), saying so: a resumed run that
    skipped a stage without a word looked the same as one whose stage ran in no time."""
    if not (store.stage_done(k, stage, in_hash, cfg_hash) and also):
        return False
    count = (store.stage_entry(k, stage) or {}).get("count")
    who = "base model" if k == "base" else f"round {k}"
    reporter().message(f"[dim]{who}: {stage}{'' if count is None else f' ({count})'} "
                       "done before, reused[/]")
    return True


# sampling settings that only the filter and export read: changing them must not re-sample
_CURATION = ("keep_per_task", "grpo_pass_band")


def _generation(cfg: RunConfig, *, repair: bool = True) -> str:
    """What shapes a generated text: the sampling and engine settings, and the system prompt
    (the only part of `export` a model sees; switching formats must not throw samples away).
    `repair` off for the tasks stage: step repair changes the candidates, not the tasks."""
    drop = _CURATION if repair else (*_CURATION, "repair", "repair_steps")
    shaping = {k: v for k, v in hashed(cfg.sampling).items() if k not in drop}
    if shaping.get("repair_steps"):  # which families' steps it repairs to
        shaping["repair_steps"] = STEPS_VERSION
    return _hash(shaping, cfg.section_hash("engine"), cfg.export.system_prompt)


def _kept(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("drop_reason").is_null()) if "drop_reason" in df.columns else df


def task_files(files: TaskFilesConfig, k: int = 0, *, held_out: bool = False) -> pl.DataFrame:
    """`load_task_files`, parsed once per process while the files are unchanged (name, size,
    mtime): a run reads them before it starts and again in every round's tasks and eval stages,
    and a large set took seconds each time. Rows that do not say get round `k`."""
    return _task_files(files, held_out)[0].with_columns(pl.col("round").fill_null(k))


def task_file_notes(files: TaskFilesConfig, *, held_out: bool = False) -> list[str]:
    """What reading these files merged or split without an error (duplicate rows, a prompt
    with two references), for the run to say before it starts."""
    return _task_files(files, held_out)[1]


def _task_files(files: TaskFilesConfig, held_out: bool) -> tuple[pl.DataFrame, list[str]]:
    from thinkwheel.generators.task_files import load_task_files

    stamps = [file_stamps(p) if Path(p).expanduser().exists() else None for p in files.paths]
    key = (tuple(map(str, stamps)), files.model_dump_json(), held_out)
    if None in stamps:  # a missing file: read (and fail) every time
        return load_task_files(files, round=None, held_out=held_out), []
    if (hit := _READ.get(key)) is None:
        notes: list[str] = []
        hit = load_task_files(files, round=None, held_out=held_out, notes=notes), notes
        while len(_READ) >= 4:  # a run's training files and eval files, with room to spare
            _READ.pop(next(iter(_READ)))
        _READ[key] = hit
    return hit


_READ: dict[tuple, tuple[pl.DataFrame, list[str]]] = {}


def heldout(cfg: RunConfig) -> pl.DataFrame:
    """The procedural held-out split plus the eval files you bring."""
    from thinkwheel.train.evaluate import heldout_tasks

    e = cfg.eval
    yours = task_files(e.tasks, held_out=True)
    held = heldout_tasks(e) if e.families else yours.head(0)
    return pl.concat([held, yours], how="diagonal_relaxed").unique(
        "task_id", keep="first", maintain_order=True
    )


def user_tasks(cfg: RunConfig, k: int) -> pl.DataFrame:
    """Round k's share of the tasks you bring (`generate.tasks`)."""
    from thinkwheel.generators.task_files import draw

    t = cfg.generate.tasks
    return draw(task_files(t, k), t.per_round, t.seed, k)


def heldout_decontam(cfg: RunConfig) -> DecontamConfig:
    """Decontamination against the held-out split, applied to `procedural.canonical` prompts.

    Full coverage is required: procedural prompts share one template and differ in a constant,
    so a partial-coverage rule flags tasks that differ from an eval item only in its number
    (a different task) — it dropped every list_filter_sum task in our runs."""
    return cfg.filters.decontam.model_copy(
        update={"enabled": True, "min_item_words": 3, "min_overlap": 1.0, "fuzzy_threshold": None}
    )


# ------------------------------------------------------------------ tasks
def make_tasks(
    store: RunStore, cfg: RunConfig, k: int, model_dir: str, engines: EngineFactory
) -> pl.DataFrame:
    """Procedural tasks and yours (+ Self-Instruct / Evol-Instruct when enabled), deduped,
    decontaminated, never overlapping the held-out eval split."""
    from thinkwheel.filters.decontam import load_benchmarks
    from thinkwheel.filters.stage import decontaminate_tasks, dedup_tasks
    from thinkwheel.generators import procedural
    from thinkwheel.generators.procedural import canonical
    from thinkwheel.generators.task_files import unverifiable

    cfg = cfg.model_copy(update={"generate": cfg.generate.for_round(k)})  # its curriculum
    g = cfg.generate
    held, yours = heldout(cfg), user_tasks(cfg, k)
    unlabeled = yours.filter(unverifiable())
    generated = g.self_instruct.enabled or g.evol_instruct.enabled
    llm = generated or unlabeled.height > 0
    in_hash = _hash(
        k, ids_hash(held["prompt"]), model_hash(model_dir) if llm else "",
        records.content_id(yours.to_dicts()) if yours.height else "",
        _files(*_benchmarks(cfg), g.self_instruct.template, g.evol_instruct.template_dir,
               g.consensus.tests_template),
    )
    cfg_hash = cfg.section_hash("generate", "filters")
    if llm:  # the model writes and labels tasks: with the engine and sampling settings, under
        # the system prompt, and consensus judges agreement with the verify settings and plugins
        cfg_hash = _hash(cfg_hash, _generation(cfg, repair=False), cfg.section_hash("verify"),
                         _plugin_code(unlabeled))
    if _reused(store, k, "tasks", in_hash, cfg_hash):
        return store.read_table(k, "tasks")
    t0 = time.time()
    p, held_prompts = g.procedural, held["prompt"].to_list()
    short: list[str] = []
    drawn = pl.concat(
        [
            procedural.generate_tasks(
                families,
                per_family,
                level,
                seed=p.seed + 7919 * k,  # a fresh draw each round
                round=k,
                exclude_prompts=held_prompts,
                notes=short,
            )
            for families, per_family, level in p.plan()
        ]
        + [yours.filter(~unverifiable())]
    )
    tasks = drawn.unique("task_id", keep="first", maintain_order=True)
    if same := drawn.height - tasks.height:  # e.g. a code task both difficulties can draw
        twice = drawn.filter(pl.col("task_id").is_duplicated())["family"].unique().sort()
        short.append(f"{same} task(s) drawn twice (at two difficulties, or yours and a "
                     f"procedural one) kept once: {', '.join(twice)}")
    if llm:
        made = _llm_tasks(engines(model_dir), tasks, cfg, k) if generated else []
        labelled = _references(store, cfg, k, unlabeled, lambda: engines(model_dir),
                               key=_hash(in_hash, cfg_hash, cfg.sampling.shard_size))
        tasks = pl.concat([tasks, *made, labelled], how="diagonal_relaxed")
        tasks = tasks.unique("task_id", keep="first", maintain_order=True)
    pre_dropped = tasks.filter(pl.col("drop_reason").is_not_null()) if llm else None
    tasks = tasks.filter(pl.col("drop_reason").is_null()).drop("drop_reason") if llm else tasks
    tasks = dedup_tasks(tasks, cfg.filters.dedup)
    bench = load_benchmarks(cfg.filters.decontam.benchmarks) if cfg.filters.decontam.enabled else {}
    plain = tasks.drop("drop_reason", "drop_ref")
    for decon in (
        decontaminate_tasks(plain, bench, cfg.filters.decontam),
        # the eval split is a benchmark too: near-copies (same task, another function name)
        # of held-out items never reach training
        decontaminate_tasks(
            plain.with_columns(pl.col("prompt").map_elements(canonical, return_dtype=pl.Utf8)),
            {"heldout": [canonical(p) for p in held["prompt"]]},
            heldout_decontam(cfg),
        ),
    ):
        tasks = tasks.with_columns(
            pl.coalesce("drop_reason", decon["drop_reason"]).alias("drop_reason"),
            pl.coalesce("drop_ref", decon["drop_ref"]).alias("drop_ref"),
        )
    # an eval prompt word for word, however short (decontamination skips items under 3 words)
    copy = pl.col("drop_reason").is_null() & pl.col("prompt").is_in(held_prompts)
    tasks = tasks.with_columns(
        pl.when(copy).then(pl.lit("contaminated")).otherwise("drop_reason").alias("drop_reason"),
        pl.when(copy).then(pl.lit("heldout:exact")).otherwise("drop_ref").alias("drop_ref"),
    )
    if pre_dropped is not None and pre_dropped.height:
        tasks = pl.concat([tasks, pre_dropped], how="diagonal_relaxed")
    path = store.write_table(k, "tasks", tasks)
    store.mark_stage(
        k, "tasks", input_hash=in_hash, config_hash=cfg_hash, count=_kept(tasks).height,
        seconds=time.time() - t0, outputs=[path], generated=tasks.height, short=short,
    )
    for note in short:
        reporter().message(f"[dim]round {k}: {note}[/]")
    store.drop_shards(k, "consensus")
    return tasks


def _consensus(
    engine: Engine, tasks: pl.DataFrame, cfg: RunConfig, k: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """References by consensus with the run's consensus, verify and sampling settings, under a
    seed of its own: with the sampling stage's, the engines drew the same samples again (their
    seeds come from the run seed, the prompt and the sample), so a model-labelled task's pass
    rate was its vote share by construction, its wrong labels "verified" by the votes that made
    them."""
    from thinkwheel.generators.consensus import consensus_references, registry_verify_fn

    params = sampling_params(cfg, k)
    params = replace(params, seed=None if params.seed is None else params.seed + CONSENSUS_SEED)
    return consensus_references(
        engine, tasks, cfg.generate.consensus, registry_verify_fn(**cfg.verify.options()),
        params=params, system_prompt=cfg.export.system_prompt,
    )


CONSENSUS_SEED = 7_919_000  # far from any round's `sampling.seed + k`


def _references(
    store: RunStore, cfg: RunConfig, k: int, tasks: pl.DataFrame, engine: Callable[[], Engine],
    *, key: str,
) -> pl.DataFrame:
    """Your rows without a reference (math) or tests (code) get them by consensus, as
    Self-Instruct's do; the ones without agreement stay in the table with a drop_reason.

    Sharded like sampling (`consensus.samples` generations a row can be hours for a large
    file): a crash loses at most the shard in flight, and a re-run labels only what is left."""
    schema = {**records.TASKS, "drop_reason": pl.Utf8}
    size = cfg.sampling.shard_size
    n_shards = (tasks.height + size - 1) // size
    done = store.done_shards(k, "consensus", key)
    todo = [i for i in range(n_shards) if i not in done]
    if todo:
        rep, made = reporter(), engine()
        rep.start(f"round {k}: labelling {tasks.height} tasks by consensus", tasks.height)
        rep.advance(min(len(done) * size, tasks.height))
        for i in todo:
            shard = tasks.slice(i * size, size)
            kept, drop = _consensus(made, shard, cfg, k)
            kept = kept.with_columns(pl.lit(None, dtype=pl.Utf8).alias("drop_reason"))
            out = pl.concat([records.conform(kept, schema), records.conform(drop, schema)],
                            how="diagonal_relaxed")
            store.write_shard(k, "consensus", key, i, out)
            rep.advance(shard.height)
        rep.finish()
    if not n_shards:
        return pl.DataFrame(schema=schema)
    return records.conform(store.read_shards(k, "consensus", key), schema)


def _llm_tasks(engine: Engine, seeds: pl.DataFrame, cfg: RunConfig, k: int) -> list[pl.DataFrame]:
    """Self-Instruct / Evol-Instruct tasks through the engine; references by consensus.

    Every generated row is kept in the table: the ones that failed a rule carry drop_reason."""
    from thinkwheel.generators.evol_instruct import evol_instruct
    from thinkwheel.generators.self_instruct import default_params, self_instruct

    g, seed = cfg.generate, cfg.generate.procedural.seed + k
    params = default_params(seed, g)
    made, dropped = [], []
    if g.self_instruct.enabled:
        kept, drop = self_instruct(engine, seeds, g.self_instruct, round=k, seed=seed, params=params)
        made.append(kept)
        dropped.append(drop)
    if g.evol_instruct.enabled:
        kept, drop = evol_instruct(engine, seeds, g.evol_instruct, round=k, seed=seed, params=params)
        made.append(kept)
        dropped.append(drop)
    made = [m for m in made if m.height]
    if made:
        kept, drop = _consensus(engine, pl.concat(made, how="diagonal_relaxed"), cfg, k)
        made = [kept.with_columns(pl.lit(None, dtype=pl.Utf8).alias("drop_reason"))]
        dropped.append(drop)
    out = [records.conform(m, records.TASKS) for m in made]
    out += [records.conform(d, {**records.TASKS, "drop_reason": pl.Utf8}) for d in dropped if d.height]
    return out


# ------------------------------------------------------------------ sample
def candidate_rows(
    tasks: pl.DataFrame, outs: list, model: str, params: SamplingParams, k: int,
    repairs: dict[int, tuple[Any, int]] | None = None,
) -> list[dict[str, Any]]:
    """One row per sample; a task's repaired trace (`repairs`: task index -> (completion,
    repairs made)) is one more, sample `n`, with `"repairs"` in its gen_params."""
    own, rows = params.as_dict(), []
    for t, (task, completions) in enumerate(zip(tasks.iter_rows(named=True), outs, strict=True)):
        samples = [(c, own) for c in completions]
        if repairs and t in repairs:
            samples.append((repairs[t][0], {**own, "repairs": repairs[t][1]}))
        for i, (c, gen) in enumerate(samples):
            reasoning, answer = records.split_think(c.text)
            rows.append(
                {
                    "candidate_id": records.candidate_id(task["task_id"], model, i, gen),
                    "task_id": task["task_id"],
                    "round": k,
                    "sample_idx": i,
                    "model": model,
                    "completion": c.text,
                    "reasoning": reasoning,
                    "answer": answer,
                    "finish_reason": c.finish_reason,
                    "n_tokens": c.n_tokens,
                    "gen_params": records.dumps(gen),
                }
            )
    return rows


def verifier_settings(cfg: RunConfig) -> dict[str, Any]:
    """The `verify` settings the verify stage and the eval judge with (consensus labelling takes
    `cfg.verify.options()`: agreement is on answers, the format is the filter's)."""
    return {**cfg.verify.options(), "format_weight": cfg.verify.format_weight}


def sampling_params(cfg: RunConfig, k: int) -> SamplingParams:
    """Round k's sampling settings; consensus references use them too (with their own n), so a
    long-reasoning model is not cut at the library's short default."""
    s = cfg.sampling
    return SamplingParams(
        n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
        stop=tuple(s.stop), seed=s.seed + k,
    )


def sample(
    store: RunStore, cfg: RunConfig, k: int, model_dir: str, engines: EngineFactory
) -> pl.DataFrame:
    """Rejection sampling, sharded: each finished shard is on disk before the next starts, so a
    crash loses at most the shard in flight and a re-run regenerates only missing shards. The
    shards go once the candidates are stored.

    A served model's answers over its context are asked for again when the stage is reused:
    restarting the server with a longer context is the fix the run's warning gives, and a
    finished stage kept the empty answers for good. A stage of nothing but such answers stops
    the run: the budget, not the tasks, is over the server's context."""
    tasks = _kept(store.read_table(k, "tasks"))
    s, params = cfg.sampling, sampling_params(cfg, k)
    model = model_hash(model_dir)
    in_hash = _hash(ids_hash(tasks["task_id"]), model)
    cfg_hash = _generation(cfg)
    served = cfg.engine.kind == "openai"
    if _reused(store, k, "sample", in_hash, cfg_hash):
        cands = store.read_table(k, "candidates")
        return _reask_over_context(store, cfg, k, tasks, cands, model_dir, engines) if served else cands
    t0 = time.time()
    key = _hash(in_hash, cfg_hash, _order(tasks["task_id"]), s.shard_size)
    n_shards = (tasks.height + s.shard_size - 1) // s.shard_size
    done = store.done_shards(k, "sample", key)
    todo = [i for i in range(n_shards) if i not in done]
    rep = reporter()
    # step repair's continuations run inside each shard: the bar names them
    rep.start(f"round {k}: sampling {s.n}x{tasks.height}" + (" + step repair" if s.repair else ""),
              tasks.height * s.n)
    rep.advance(min(len(done) * s.shard_size, tasks.height) * s.n)
    engine = engines(model_dir) if todo else None
    # the flow keeps one engine per model: its counts include the base eval's calls, so the
    # stage records what they grew by while it sampled
    before = Counter(getattr(engine, "stats", None) or {})
    model_name = f"{Path(model_dir).name}@{model}"
    for i in todo:
        shard = tasks.slice(i * s.shard_size, s.shard_size)
        reqs = [request_for(p, cfg.export.system_prompt) for p in shard["prompt"]]
        ticks = _Ticks(rep)
        outs = engine.generate(reqs, params, progress=ticks)
        keys = shard.select("source", "family", "prompt").rows() if s.repair_steps else None
        worked = [task_steps(*row) for row in keys] if keys else None
        ends = [task_conclusion(*row) for row in keys] if keys else None
        fixed = repaired(engine, reqs, outs, params, s.repair, worked, ends) if s.repair else None
        rows = candidate_rows(shard, outs, model_name, params, k, fixed)
        store.write_shard(k, "sample", key, i, records.frame(rows, records.CANDIDATES))
        rep.advance(max(0, shard.height * s.n - ticks.n))
    rep.finish()
    cands = records.conform(store.read_shards(k, "sample", key), records.CANDIDATES)
    cands = cands.unique("candidate_id", keep="first", maintain_order=True)
    if served and cands.height and (cands["finish_reason"] == "context_length").all():
        store.drop_shards(k, "sample")  # empty answers all: the re-run asks again, whole
        from thinkwheel.engines.openai import EngineError

        raise EngineError(
            f"round {k}: the server refused all {tasks.height} requests as longer than the "
            f"model's context: is sampling.max_tokens ({s.max_tokens}) at or over the server's "
            "context length (vllm serve --max-model-len)? Lower it, or serve a longer context")
    path = store.write_table(k, "candidates", cands)
    cut = int((cands["finish_reason"] == "length").sum())
    n_repaired = repaired_ids(cands).len()
    calls = dict(Counter(getattr(engine, "stats", None) or {}) - before)  # a served model's, per server
    store.mark_stage(
        k, "sample", input_hash=in_hash, config_hash=cfg_hash, count=cands.height,
        seconds=time.time() - t0, outputs=[path], shards=n_shards, shards_reused=len(done),
        truncated=cut, **({"calls": calls} if calls else {}),
        **({"repaired": n_repaired} if s.repair else {}),
    )
    store.drop_shards(k, "sample")
    if retried := {r.split(":", 1)[1]: n for r, n in calls.items() if r.startswith("retry:")}:
        why = ", ".join(f"{n} {r}" for r, n in sorted(retried.items(), key=lambda x: -x[1]))
        rep.message(f"round {k}: {sum(retried.values())} of {calls.get('calls', 0)} calls were "
                    f"retried ({why}); the manifest's sample stage has the calls per server")
    if w := truncation_warning(f"round {k}: candidates", cut, cands.height,
                               "sampling.max_tokens", s.max_tokens):
        rep.message(w)
    over = int((cands["finish_reason"] == "context_length").sum())
    if w := context_warning(f"round {k}: candidates", over, cands.height, "sampling.max_tokens"):
        rep.message(w)
    if s.repair:
        rep.message(f"round {k}: step repair added {n_repaired} "
                    "candidates, traces continued from a corrected false step")
    return cands


def _reask_over_context(store: RunStore, cfg: RunConfig, k: int, tasks: pl.DataFrame,
                        cands: pl.DataFrame, model_dir: str, engines: EngineFactory) -> pl.DataFrame:
    """The stored candidates, with the samples the server refused as over its context asked for
    again (the same ids: sample i of a task is the same candidate); the stage is re-marked only
    when an answer came back."""
    # the model's own samples: a repaired trace is never stored over the context
    over = cands.filter((pl.col("finish_reason") == "context_length")
                        & (pl.col("sample_idx") < cfg.sampling.n))["task_id"].unique()
    if over.is_empty():
        return cands
    redo = tasks.filter(pl.col("task_id").is_in(over.implode()))
    params = sampling_params(cfg, k)
    reqs = [request_for(p, cfg.export.system_prompt) for p in redo["prompt"]]
    from thinkwheel.engines.openai import EngineError

    try:
        outs = engines(model_dir).generate(reqs, params)
    except EngineError as err:  # the stage is finished: a server down now must not undo it
        reporter().message(f"[yellow]round {k}: could not ask the server again for the samples "
                           f"over its context ({err}); the stored ones are kept[/]")
        return cands
    model_name = f"{Path(model_dir).name}@{model_hash(model_dir)}"
    fresh = records.frame(candidate_rows(redo, outs, model_name, params, k), records.CANDIDATES)
    fresh = fresh.filter(pl.col("finish_reason") != "context_length")
    still = int((cands["finish_reason"] == "context_length").sum()) - fresh.height
    reporter().message(f"round {k}: asked the server again for the samples of {redo.height} "
                       f"task(s) it refused as over its context: {fresh.height} came back, "
                       f"{still} still over it")
    if fresh.is_empty():
        return cands
    merged = pl.concat([cands.filter(~pl.col("candidate_id").is_in(fresh["candidate_id"].implode())),
                        records.conform(fresh, cands.schema)], how="diagonal_relaxed")
    cands = cands.select("candidate_id").join(merged, on="candidate_id", how="left",
                                              maintain_order="left")
    path = store.write_table(k, "candidates", cands)
    entry = store.stage_entry(k, "sample") or {}
    store.mark_stage(k, "sample", **{key: v for key, v in entry.items()
                                     if key not in ("status", "outputs", "finished_at", "version")},
                     outputs=[path])
    return cands


class _Ticks:
    """An engine's `progress` callback: samples move the bar as they finish, so a slow shard
    on a remote server is not a frozen bar; the count lets the caller top up the rest."""

    def __init__(self, rep: Any) -> None:
        self.rep, self.n = rep, 0

    def __call__(self, n: int) -> None:
        self.n += n
        self.rep.advance(n)


TRUNCATION_WARNING = 0.05  # a share of outputs cut at max_tokens worth telling the user about


def truncation_warning(what: str, cut: int, total: int, key: str, limit: int) -> str | None:
    """A cut-off output seldom has a closed </think> and an answer: when many are cut (more
    than TRUNCATION_WARNING of them), the token budget is setting the numbers, which a user
    bringing a bigger model must hear. None when few are."""
    if not total or cut / total <= TRUNCATION_WARNING:
        return None
    return (
        f"[yellow]{what}: {cut} of {total} ({cut / total:.0%}) stopped at {key} ({limit} "
        f"tokens), most without a final answer; raise {key} if your model needs longer[/]"
    )


def context_warning(what: str, over: int, total: int, key: str) -> str | None:
    """Any request over the model's context is said: its output is empty and fails, and
    nothing else would tell a run whose long tasks all failed from one whose model is weak."""
    if not over:
        return None
    return (f"[yellow]{what}: {over} of {total} are empty: the prompt is longer than the "
            f"model's context (a server may count {key} in; finish_reason context_length); "
            f"shorten those tasks, lower {key} or serve a longer context[/]")


# ------------------------------------------------------------------ verify
VERIFY_SHARD = 2048  # candidates per verify shard: a crash loses at most one


def verify(store: RunStore, cfg: RunConfig, k: int) -> pl.DataFrame:
    """Verdicts, written shard by shard: code checks run at ~100 a second, so 100k candidates
    are a quarter of an hour, and a crash loses at most the shard in flight.

    Keyed by the candidates' text, not their ids: an id names a task, model and sampling
    settings, and a re-sample under another system prompt or engine setting writes new text
    under the same ids, which the old verdicts did not judge."""
    from thinkwheel.verifiers import verify_frame

    tasks, cands = store.read_table(k, "tasks"), store.read_table(k, "candidates")
    in_hash = _hash(_content(cands), _content(tasks),
                    _plugin_code(tasks, plugins=cfg.verify.plugins))
    cfg_hash = cfg.section_hash("verify")
    if _reused(store, k, "verify", in_hash, cfg_hash):
        return store.read_table(k, "verdicts")
    t0 = time.time()
    size = VERIFY_SHARD
    # shards cut to another size, or from candidates in another order, are not these
    key = _hash(in_hash, cfg_hash, size, _order(cands["candidate_id"]))
    n_shards = (cands.height + size - 1) // size
    done = store.done_shards(k, "verify", key)
    rep = reporter()
    rep.start(f"round {k}: verifying", cands.height)
    rep.advance(min(len(done) * size, cands.height))
    for i in (i for i in range(n_shards) if i not in done):
        shard = cands.slice(i * size, size)
        mine = tasks.filter(pl.col("task_id").is_in(shard["task_id"].unique().implode()))
        verdicts = verify_frame(mine, shard, **verifier_settings(cfg))
        store.write_shard(k, "verify", key, i, verdicts)
        rep.advance(shard.height)
    rep.finish()
    verdicts = records.conform(store.read_shards(k, "verify", key), records.VERDICTS)
    path = store.write_table(k, "verdicts", verdicts)
    passed = int(verdicts["passed"].fill_null(False).sum())
    store.mark_stage(
        k, "verify", input_hash=in_hash, config_hash=cfg_hash, count=passed,
        seconds=time.time() - t0, outputs=[path], shards=n_shards, shards_reused=len(done),
    )
    store.drop_shards(k, "verify")
    if note := verifier_errors(verdicts):
        rep.message(f"[yellow]round {k}: {note}[/]")
    return verdicts


# ------------------------------------------------------------------ filter + select
def filter_and_select(store: RunStore, cfg: RunConfig, k: int) -> pl.DataFrame:
    """Filters (decontamination, quality, reasoning-path dedup), then the ReST-EM cap of K kept
    candidates per task; every dropped row carries its reason in `filtered.parquet`."""
    from thinkwheel.filters.decontam import load_benchmarks
    from thinkwheel.filters.stage import filter_candidates
    from thinkwheel.generators.selection import OVER_K, sft_decisions

    tasks = store.read_table(k, "tasks")
    cands, verdicts = store.read_table(k, "candidates"), store.read_table(k, "verdicts")
    in_hash = _hash(_content(cands), _content(verdicts), _content(tasks),
                    _files(*_benchmarks(cfg)))
    # what the filters and the cap read: the export's formats, card or DPO pairs do not re-filter
    cfg_hash = _hash(cfg.section_hash("filters"), cfg.sampling.keep_per_task,
                     cfg.export.verified_only)
    if cfg.filters.quality.check_steps:  # which families' steps it reads
        cfg_hash = _hash(cfg_hash, STEPS_VERSION)
    if _reused(store, k, "filter", in_hash, cfg_hash):
        return store.read_table(k, "filtered")
    t0 = time.time()
    bench = load_benchmarks(cfg.filters.decontam.benchmarks) if cfg.filters.decontam.enabled else {}
    if not cfg.export.verified_only:  # the OpenThoughts3 ablation: keep unverified answers too
        verdicts = verdicts.with_columns(pl.lit(True).alias("passed"))
    filtered = filter_candidates(tasks, cands, verdicts, cfg.filters, bench)
    decisions = sft_decisions(cands, verdicts, filtered, cfg.sampling.keep_per_task)
    capped = decisions.filter(pl.col("drop_reason") == OVER_K)["candidate_id"]
    filtered = filtered.with_columns(
        pl.when(pl.col("candidate_id").is_in(capped.to_list()) & pl.col("drop_reason").is_null())
        .then(pl.lit(OVER_K))
        .otherwise(pl.col("drop_reason"))
        .alias("drop_reason")
    )
    path = store.write_table(k, "filtered", filtered)
    kept = int(filtered["drop_reason"].is_null().sum())
    store.mark_stage(
        k, "filter", input_hash=in_hash, config_hash=cfg_hash, count=kept,
        seconds=time.time() - t0, outputs=[path],
    )
    return filtered


# ------------------------------------------------------------------ export
def export(store: RunStore, cfg: RunConfig, k: int, generator_model: str) -> dict[str, Any]:
    from thinkwheel.curated.export import (
        dpo_frame,
        grpo_frame,
        sft_frame,
        task_pass_rates,
        write_dataset,
    )
    from thinkwheel.filters.quality import ANSWER_LEAK
    from thinkwheel.filters.stage import CONTAMINATED, funnel, leaked_tasks

    tasks, cands = store.read_table(k, "tasks"), store.read_table(k, "candidates")
    verdicts, filtered = store.read_table(k, "verdicts"), store.read_table(k, "filtered")
    # the filter's reasons too, not only what it kept: DPO's rejected side and the card's
    # funnel read why each sample was dropped
    in_hash = _hash(_content(filtered), _content(verdicts), _content(tasks), _content(cands))
    cfg_hash = cfg.section_hash("export", "sampling")
    out_dir = store.round_dir(k) / "curated"
    # parquet is always written: it is what the trainers, `inspect` and `thinkwheel export` read
    # (an export of `formats: [verl]` alone used to leave SFT nothing to train on, silently)
    formats = ("parquet", *(f for f in cfg.export.formats if f != "parquet"))
    if _reused(store, k, "export", in_hash, cfg_hash, also=(out_dir / "sft.parquet").is_file()):
        return store.stage_entry(k, "export")
    t0 = time.time()
    kept_ids = filtered.filter(pl.col("drop_reason").is_null())["candidate_id"].to_list()
    sft = sft_frame(tasks, cands, kept_ids, cfg.export.system_prompt)
    # a task the filters dropped as a whole (its answer is in its prompt, it copies a
    # benchmark) is no GRPO prompt either: its reward is won by copying
    whole = filtered.filter(pl.col("drop_reason").is_in([ANSWER_LEAK, CONTAMINATED]))["task_id"]
    if cfg.filters.quality.enabled:  # also one no sample solved, in a pass band from 0
        whole = pl.concat([whole, pl.Series("task_id", leaked_tasks(tasks, cfg.filters.quality),
                                            dtype=pl.Utf8)])
    grpo = grpo_frame(
        tasks.filter(~pl.col("task_id").is_in(whole.implode())),
        task_pass_rates(own_verdicts(cands, verdicts)),
        cfg.export.system_prompt, band=cfg.sampling.grpo_pass_band,
    )
    e = cfg.export
    dpo = (
        dpo_frame(tasks, dpo_candidates(cands, kept_ids), verdicts, filtered, e.system_prompt,
                  e.dpo_pairs_per_task)
        if e.dpo_pairs_per_task
        else None
    )
    fun = funnel(filtered)
    frames = {"tasks": tasks, "candidates": cands, "verdicts": verdicts, "filtered": filtered}
    # named as the candidates name it (`thinkwheel export` reads it there): a path is this
    # machine's, and a card pushed to the Hub showed it
    named = f"{Path(generator_model).name}@{model_hash(generator_model)}"
    card = round_card(cfg, {k: frames}, sft, grpo, dpo, "parquet", named)
    write_dataset(sft, grpo, out_dir, formats=formats, card=card, dpo=dpo)
    store.mark_stage(
        k, "export", input_hash=in_hash, config_hash=cfg_hash, count=sft.height,
        seconds=time.time() - t0, outputs=[out_dir], sft=sft.height, grpo=grpo.height,
        dpo=None if dpo is None else dpo.height, funnel=fun,
    )
    return store.stage_entry(k, "export")


def round_card(
    cfg: RunConfig, rounds: dict[int, dict[str, pl.DataFrame]], sft: pl.DataFrame,
    grpo: pl.DataFrame, dpo: pl.DataFrame | None, data_format: str,
    generator_model: str | None = None,
) -> str:
    """The dataset card of these rounds' curated sets (their tables by round): counts and
    decontamination of all of them, the funnel of a single round, and the files of this
    export's format. `thinkwheel export` copied the last round's card, which named parquet
    files a jsonl export does not have, and one round's counts for --all-rounds."""
    from thinkwheel.curated.card import dataset_card
    from thinkwheel.curated.inspect import funnel

    ks = sorted(rounds)
    filtered = [t["filtered"] for t in rounds.values() if t.get("filtered") is not None]
    tasks = [t["tasks"] for t in rounds.values() if t.get("tasks") is not None]
    span = ks[0] if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
    return dataset_card(
        sft, grpo, dpo=dpo, name=f"{cfg.name}-round{'s' if len(ks) > 1 else ''}-{span}",
        config=cfg, config_hash=cfg.section_hash("generate", "sampling", "verify", "filters", "export"),
        generator_model=generator_model, round=span,
        filtered=pl.concat(filtered, how="diagonal_relaxed") if filtered else None,
        license=cfg.export.card_license(bool(cfg.generate.tasks.paths)),
        funnel=funnel(rounds[ks[0]]) if len(ks) == 1 else None, data_format=data_format,
        tasks=pl.concat(tasks, how="diagonal_relaxed") if tasks else None,
    )


# ------------------------------------------------------------------ train
def _release_gpu_memory() -> None:
    """Hand the trainers' GPU memory back before the eval starts its engine: PyTorch keeps what
    it freed reserved (weights, optimizer state, activations; Unsloth's bound methods are a
    reference cycle), and vLLM refuses to start with less free memory than
    `gpu_memory_utilization` asks for."""
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _forget_training(store: RunStore, k: int) -> None:
    """A round that now trains nothing keeps no model, curves or records from a run of an
    earlier config: `round-k/model` would be a model trained on data the run no longer has."""
    import shutil

    shutil.rmtree(store.round_dir(k) / "model", ignore_errors=True)
    for log in (store.round_dir(k) / "logs").glob("*.jsonl"):
        log.unlink()
    store.forget_stages(k, "train")


def _forget_trainers(store: RunStore, k: int, keep: set[str]) -> None:
    """The curves and records of trainers an earlier config ran and this one does not: the
    report drew GRPO's curves for a model trained without GRPO."""
    for name in ("sft", "dpo", "grpo"):
        if name not in keep:
            (store.round_dir(k) / "logs" / f"{name}.jsonl").unlink(missing_ok=True)
            if store.stage_entry(k, f"train.{name}") is not None:
                store.forget_stages(k, f"train.{name}")


def train(store: RunStore, cfg: RunConfig, k: int, start_model: str,
          carry_model: str | None = None) -> str:
    """Cold-start SFT on this round's curated set, then DPO and GRPO when enabled; returns the
    model dir. With SFT off, or no sample kept for it, the first trainer with data starts from
    `start_model` (GRPO on an instruct model, or on the tasks whose passing samples all stated
    a false step). When no trainer has data, the round's model is `carry_model` (the one it
    sampled with; `start_model` when not given): under from_base, returning the base model
    threw away every earlier round's training.

    "continue" fine-tunes the previous round's model, "from_base" the base model (STaR /
    ReST-EM); with `accumulate` the data is every round's curated set so far. Each trainer is
    recorded when it has published the model, so a re-run after a crash starts at the trainer
    that was cut short, and that one from its last checkpoint."""
    from thinkwheel.train.sft import length_warning, train_sft

    model_dir = store.round_dir(k) / "model"
    rounds = range(k + 1) if cfg.train.accumulates() else [k]
    t = cfg.train.for_round(k)  # round k's step cap (sft.max_steps_growth)
    data = {"sft": _curated(store, rounds, "sft") if t.sft.enabled else None,
            "dpo": _curated(store, rounds, "dpo") if t.dpo.enabled else None,
            "grpo": _curated(store, [k], "grpo") if t.grpo.enabled else None}
    plan = t.trainers()
    seen = {name: frame_hash(data[name]) for name, _ in plan}
    if "grpo" in seen:  # GRPO's reward judges as the verify stage does, cut where sampling stops
        seen["grpo"] = _hash(seen["grpo"], cfg.verify.options(), _plugin_code(data["grpo"]),
                             *([cfg.sampling.stop] if cfg.sampling.stop else []))
    start = model_hash(start_model)  # reads the weights: once
    in_hash = _hash(start, seen)
    cfg_hash = cfg.model_copy(update={"train": t}).section_hash("train")
    # the model folder must still hold this stage's model: a trainer of another config (or
    # one cut short) may have republished it since
    entry = store.stage_entry(k, "train") or {}
    if _reused(store, k, "train", in_hash, cfg_hash,
               also=entry.get("model") == model_hash(model_dir)):
        return str(model_dir)
    t0 = time.time()
    sft = data["sft"]
    minutes = t.checkpoint_minutes
    _forget_trainers(store, k, {name for name, _ in plan})

    def run_sft(src: str, out_dir: str) -> dict[str, Any]:
        # skipped, not the stage: GRPO's prompts do not come from the SFT set
        if sft is None or sft.height == 0:
            reporter().message(f"round {k}: no curated samples; SFT skipped")
            return {"skipped": "no curated samples"}
        rep = reporter()
        rep.start(f"round {k}: SFT on {sft.height} samples", None)
        out = train_sft(src, sft, out_dir, t.sft,
                        callbacks=step_callbacks(), checkpoint_minutes=minutes)
        rep.finish()
        if warning := length_warning(out):
            rep.message(f"round {k}: {warning}")
        return out

    once = _Trainers(store, k, _hash(start), model_dir, plan, seen)
    runs = {"sft": run_sft, "dpo": functools.partial(_dpo, data["dpo"], cfg, k),
            "grpo": functools.partial(_grpo, data["grpo"], cfg, k)}
    metrics: dict[str, dict[str, Any]] = {}
    for name, _ in plan:  # each trainer goes on from the last one's model
        src = str(model_dir) if once.published else start_model
        metrics[name] = once(name, functools.partial(runs[name], src, str(model_dir)))
    if not once.published:  # every trainer skipped for want of data
        reporter().message(f"round {k}: nothing to train on; the model is carried forward")
        _forget_training(store, k)
        return carry_model or start_model
    _release_gpu_memory()
    first = metrics[plan[0][0]]  # SFT's loss and steps when it ran
    store.mark_stage(
        k, "train", input_hash=in_hash, config_hash=cfg_hash, count=0 if sft is None else sft.height,
        seconds=time.time() - t0, outputs=[model_dir], model=model_hash(model_dir),
        loss=first.get("train_loss"), steps=first.get("global_step"),
    )
    return str(model_dir)


def _curated(store: RunStore, rounds: range | list[int], split: str) -> pl.DataFrame:
    """A curated split of these rounds, concatenated (empty when no round wrote it)."""
    paths = [store.round_dir(r) / "curated" / f"{split}.parquet" for r in rounds]
    parts = [pl.read_parquet(p) for p in paths if p.is_file()]
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


class _Trainers:
    """Runs the train stage's trainers once each. SFT, DPO and GRPO publish the round's model
    in turn, and each is recorded in the manifest (`train.sft`, ...) with its metrics, curves
    and the model it left, keyed by its own data and settings and what it started from: a
    re-run after a crash skips the trainers that had finished (the GRPO that ran out of memory
    can be re-run with a smaller batch without redoing hours of SFT). Only while the model
    folder still holds the last finished one's model, though: once a later trainer has
    replaced it, the earlier ones' models are gone and the chain starts over."""

    def __init__(self, store: RunStore, k: int, start: str, model_dir: Path,
                 plan: list[tuple[str, BaseModel]], data: dict[str, str]):
        self.store, self.k, self.model_dir = store, k, model_dir
        self.keys: dict[str, tuple[str, str]] = {}
        chain = start
        for name, settings in plan:
            key = (_hash(chain, name, data[name]), _hash(hashed(settings)))
            self.keys[name], chain = key, _hash(*key)
        done: list[str] = []
        for name, _ in plan:
            if not store.stage_done(k, f"train.{name}", *self.keys[name]):
                break
            done.append(name)
        left = done and store.stage_entry(k, f"train.{done[-1]}").get("model")
        self.done = set(done) if left == model_hash(model_dir) else set()
        # whether model_dir holds this chain's model yet (a trainer without data writes none)
        self.published = any(store.stage_entry(k, f"train.{n}").get("published", True)
                             for n in self.done)

    def __call__(self, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        stage, (in_hash, cfg_hash) = f"train.{name}", self.keys[name]
        if name in self.done:
            reporter().message(f"[dim]round {self.k}: {name.upper()} done before, reused[/]")
            return dict(self.store.stage_entry(self.k, stage)["metrics"])
        t0 = time.time()
        out = {key: v for key, v in run().items() if key != "log_history"}
        metrics = json.loads(json.dumps(out, default=str))  # as the manifest will hold them
        wrote = "skipped" not in out
        self.published = self.published or wrote
        log = self.store.round_dir(self.k) / "logs" / f"{name}.jsonl"
        if wrote:
            _keep_log(self.model_dir, log)
        else:  # an earlier run's curves are not this model's
            log.unlink(missing_ok=True)
        self.store.mark_stage(
            self.k, stage, input_hash=in_hash, config_hash=cfg_hash, seconds=time.time() - t0,
            outputs=[self.model_dir], metrics=metrics, model=model_hash(self.model_dir),
            published=wrote,
        )
        return metrics


def _keep_log(model_dir: Path, dest: Path) -> None:
    """Copy a trainer's curves out of the model folder: GRPO republishes that folder, which
    would otherwise take SFT's curves with it."""
    src = model_dir / "train_log.jsonl"
    if src.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, src.read_bytes())


def _dpo(pairs: pl.DataFrame, cfg: RunConfig, k: int, src: str, model_dir: str) -> dict[str, Any]:
    """DPO on the dpo split of the same rounds the SFT data came from."""
    from thinkwheel.train.dpo import train_dpo
    from thinkwheel.train.sft import length_warning

    if pairs.height == 0:
        reporter().message(f"round {k}: no DPO pairs (export.dpo_pairs_per_task 0?); DPO skipped")
        return {"skipped": "no pairs"}
    rep = reporter()
    rep.start(f"round {k}: DPO on {pairs.height} pairs", None)
    out = train_dpo(src, pairs, model_dir, cfg.train.dpo, callbacks=step_callbacks(),
                    checkpoint_minutes=cfg.train.checkpoint_minutes)
    rep.finish()
    if warning := length_warning(out, "train.dpo.max_length", "preference pairs"):
        rep.message(f"round {k}: {warning}")
    return out


def _grpo(grpo: pl.DataFrame, cfg: RunConfig, k: int, src: str, model_dir: str) -> dict[str, Any]:
    from thinkwheel.train.grpo import train_grpo
    from thinkwheel.train.rewards import grpo_rewards, unjudged_warning

    if grpo.height == 0:
        return {"skipped": "no prompts in the pass-rate band"}
    g = cfg.train.grpo
    rewards, weights = grpo_rewards(g, cfg.verify, strict_format=True)
    rep = reporter()
    rep.start(f"round {k}: GRPO on {grpo.height} prompts", None)
    out = train_grpo(src, grpo, model_dir, g, rewards, weights, callbacks=step_callbacks(),
                     checkpoint_minutes=cfg.train.checkpoint_minutes, stop=cfg.sampling.stop)
    rep.finish()
    if longer := out.get("stop_in_rewards_only"):
        rep.message(f"round {k}: GRPO without vLLM stops only at one-token strings; the rewards "
                    f"scored the text before {longer}, but the tokens after it trained too")
    if note := unjudged_warning(rewards):
        rep.message(f"[yellow]round {k}: {note}[/]")
    return out


def step_callbacks() -> list:
    """Trainer callbacks that advance the reporter's bar once per optimizer step."""
    from transformers import TrainerCallback

    class Advance(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            if state.global_step:  # resumed: count the steps the checkpoint holds
                reporter().message(f"resuming from the checkpoint at step {state.global_step}"
                                   f" of {state.max_steps}")
                reporter().advance(state.global_step)

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            reporter().advance(1)

    return [Advance()]


# ------------------------------------------------------------------ eval
def score_model(
    cfg: RunConfig, engine: Engine, held: pl.DataFrame | None = None, *,
    label: str = "held-out eval", who: str = "",
) -> tuple[dict[str, Any], pl.DataFrame]:
    """The eval.json dict of `engine`'s model on the held-out tasks, and its answers (one row a
    task: the greedy answer, its verdict and why, pass@k counts), with the run's eval, verify
    and system-prompt settings: the flow's rounds and `thinkwheel eval` score alike.
    The reporter's bar counts the answers as the engine returns them; it is told when many
    answers stopped at eval.max_tokens (`who` names the model in that message)."""
    from thinkwheel.train.evaluate import samples_per_task, score_tasks, summarize
    from thinkwheel.verifiers import verify_frame

    e = cfg.eval
    held = heldout(cfg) if held is None else held

    judged: list[pl.DataFrame] = []

    def verify_fn(tasks: pl.DataFrame, cands: pl.DataFrame) -> pl.DataFrame:
        judged.append(verify_frame(tasks, cands, **verifier_settings(cfg)))
        return judged[-1]

    rep = reporter()
    rep.start(label, held.height * (1 + samples_per_task(e.k)))
    try:
        answers = score_tasks(
            engine, held, verify_fn, k=e.k, max_tokens=e.max_tokens, seed=e.seed,
            temperature=e.temperature, system_prompt=cfg.export.system_prompt,
            stop=cfg.sampling.stop, progress=rep.advance,
        )
    finally:
        rep.finish()
    result = summarize(answers, e.k)
    what = f"{who}: held-out answers" if who else "held-out answers"
    if w := truncation_warning(what, result["truncated"], result["n"], "eval.max_tokens",
                               e.max_tokens):
        rep.message(w)
    if w := context_warning(what, result.get("over_context", 0), result["n"], "eval.max_tokens"):
        rep.message(w)
    if judged and (note := verifier_errors(pl.concat(judged, how="diagonal_relaxed"))):
        rep.message(f"[yellow]{what}: {note}[/]")  # a broken plugin read as a weak model
    return result, answers



def evaluate(
    store: RunStore, cfg: RunConfig, key: int | str, model_dir: str, engines: EngineFactory
) -> dict[str, Any]:
    """Held-out accuracy of `model_dir`; `key` is the round (or "base" for the starting model)."""

    held = heldout(cfg)
    rel, rel_answers = eval_paths(key)
    in_hash = _hash(model_hash(model_dir), _content(held), _plugin_code(held))
    # the eval prompts carry the system prompt, stop where sampling does, and are answered by
    # the engine with its settings (dtype, extra_body such as enable_thinking, ...)
    cfg_hash = _hash(cfg.section_hash("eval", "verify", "engine"), cfg.export.system_prompt,
                     cfg.sampling.stop)
    if _reused(store, key, "eval", in_hash, cfg_hash, also=(store.root / rel_answers).is_file()):
        return store.read_json(rel)
    t0 = time.time()
    who = f"round {key}" if key != "base" else "base model"
    result, answers = score_model(cfg, engines(model_dir), held, label=f"{who}: held-out eval",
                                  who=who)
    result["model"] = model_dir
    answers_path = store.write_parquet(rel_answers, answers)
    path = store.write_json(rel, result)
    store.mark_stage(
        key, "eval", input_hash=in_hash, config_hash=cfg_hash, count=result.get("n"),
        seconds=time.time() - t0, outputs=[path, answers_path], accuracy=result.get("accuracy"),
        clean_accuracy=result.get("clean_accuracy"),
    )
    return result


def funnel_row(store: RunStore, k: int) -> dict[str, Any]:
    """The printed funnel: tasks, candidates, passed, kept (+ the filter funnel)."""
    m = store.manifest()["rounds"].get(str(k), {}).get("stages", {})
    exp = m.get("export", {})
    return {
        "round": k,
        "tasks": m.get("tasks", {}).get("count"),
        "candidates": m.get("sample", {}).get("count"),
        "repaired": m.get("sample", {}).get("repaired"),  # of the candidates; None: repair off
        "passed": m.get("verify", {}).get("count"),
        "kept": m.get("filter", {}).get("count"),
        "sft": exp.get("sft"),
        "grpo": exp.get("grpo"),
        "accuracy": m.get("eval", {}).get("accuracy"),
        "clean_accuracy": m.get("eval", {}).get("clean_accuracy"),
    }
