"""The flywheel as a Prefect flow: one task per stage, `rounds` rounds, round k+1 generating with
round k's model. The only module that imports prefect; it launches and wires, the stages do
the work (flows/steps.py wraps the pure stage functions with store I/O).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinkwheel.environment import configure_environment

configure_environment()

from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from thinkwheel import __version__  # noqa: E402
from thinkwheel.config import RunConfig, parse_config  # noqa: E402
from thinkwheel.flows import steps  # noqa: E402
from thinkwheel.flows.progress import reporter  # noqa: E402
from thinkwheel.store import RunStore, run_lock  # noqa: E402

# Inputs are a store and a config, outputs live on disk: Prefect's own caching and result
# persistence would only duplicate the store's resume logic.
_task = task(cache_policy=NO_CACHE, persist_result=False)


class _Engines:
    """Loads each model once per flow run (sampling, tasks and eval share it).

    A served model's answers also go to an on-disk request cache under the run directory as
    they arrive, so a crash inside a stage (Self-Instruct, a sampling shard, eval) loses no paid
    request: the re-run sends only what had not come back. `settle` empties it once a stage's
    outputs are stored, so the run does not keep every sample twice."""

    def __init__(self, cfg: RunConfig, cache_dir: Path | None = None):
        self.cfg = cfg
        self.cache_dir = cache_dir
        self._cache: dict[str, Any] = {}

    def __call__(self, model_dir: str):
        from thinkwheel.engines.factory import make_engine

        if model_dir not in self._cache:
            self.release()  # one model resident at a time: vLLM's GPU memory, the cache's file
            self._cache[model_dir] = make_engine(self.cfg.engine, model_dir, cache_dir=self.cache_dir)
        return self._cache[model_dir]

    def release(self) -> None:
        """Close every engine: training needs the GPU memory a vLLM engine holds, and the
        next stage samples from the model training makes."""
        for engine in self._cache.values():
            if callable(close := getattr(engine, "close", None)):
                close()
        self._cache.clear()

    def settle(self) -> None:
        for engine in self._cache.values():
            if (cache := getattr(engine, "cache", None)) is not None:
                cache.clear()


tasks_task = _task(steps.make_tasks, name="generate-tasks")
sample_task = _task(steps.sample, name="sample")
verify_task = _task(steps.verify, name="verify")
filter_task = _task(steps.filter_and_select, name="filter")
export_task = _task(steps.export, name="export")
train_task = _task(steps.train, name="train")
eval_task = _task(steps.evaluate, name="evaluate")


def _funnel_markdown(rows: list[dict[str, Any]], base: dict[str, Any] | None) -> str:
    fixed = any(r.get("repaired") is not None for r in rows)  # sampling.repair on
    head = ("| round | tasks | candidates | " + ("repaired | " if fixed else "")
            + "passed | kept | SFT | GRPO | held-out acc | clean |\n")
    head += "|---" * (10 if fixed else 9) + "|\n"

    def num(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    if base:
        head += ("| base | | | | | | | " + ("| " if fixed else "")
                 + f"{num(base.get('accuracy'))} | {num(base.get('clean_accuracy'))} |\n")
    for r in rows:
        head += (
            f"| {r['round']} | {r['tasks']} | {r['candidates']} | "
            + (f"{r.get('repaired')} | " if fixed else "") + f"{r['passed']} | {r['kept']} "
            f"| {r['sft']} | {r['grpo']} | {num(r['accuracy'])} | {num(r.get('clean_accuracy'))} |\n"
        )
    return head


@flow(name="thinkwheel-flywheel", validate_parameters=False, log_prints=False)
def flywheel(config: dict[str, Any], out: str) -> dict[str, Any]:
    """generate -> sample -> verify -> filter -> export -> train -> eval, `rounds` times."""
    cfg = parse_config(config)
    from thinkwheel.verifiers import load_plugins

    load_plugins(cfg.verify.plugins)  # the verifiers task files name by a plugin's @register
    with run_lock(out):
        return _flywheel(cfg, RunStore.create(out, cfg))


def _flywheel(cfg: RunConfig, store: RunStore) -> dict[str, Any]:
    engines = _Engines(cfg, store.root / "cache" / "requests")
    from thinkwheel.engines.factory import resolve_model

    model = resolve_model(cfg.engine)
    base_model = model
    base = None
    # the round-0 gain needs the base model's score; a served model's is the server's business
    if cfg.engine.kind != "openai":
        base = eval_task(store, cfg, "base", model, engines)
    rows = []
    for k in range(cfg.rounds):
        tasks_task(store, cfg, k, model, engines)
        engines.settle()
        sample_task(store, cfg, k, model, engines)
        engines.settle()
        verify_task(store, cfg, k)
        filter_task(store, cfg, k)
        export_task(store, cfg, k, model)
        start = base_model if cfg.train.strategy == "from_base" else model
        if cfg.train.trainers():
            engines.release()
            model = train_task(store, cfg, k, start, model)
        eval_task(store, cfg, k, model, engines)
        engines.settle()
        rows.append(steps.funnel_row(store, k))
    # after the rounds: a stage re-run by this version no longer counts, only what was reused
    this_run = {"base", *(f"round-{k}" for k in range(cfg.rounds))}
    for version, stages in store.stale_versions().items():
        stages = [s for s in stages if s.split("/")[0] in this_run]
        if not stages:
            continue
        reporter().message(
            f"[yellow]{store.root}: {len(stages)} finished stage(s) ({', '.join(stages[:3])}"
            f"{', ...' if len(stages) > 3 else ''}) were made by "
            f"{'an earlier thinkwheel' if version == 'unknown' else 'thinkwheel ' + version}, this "
            f"is {__version__}; this run reused them as they are. Use a new --out to remake them.[/]"
        )
    summary = {"out": str(store.root.resolve()), "base": base, "rounds": rows}
    store.set_run_info(summary={"base_accuracy": (base or {}).get("accuracy"), "rounds": rows})
    _write_report(store)
    try:
        create_markdown_artifact(
            key="thinkwheel-funnel", markdown=_funnel_markdown(rows, base),
            description=f"thinkwheel run {cfg.name}: funnel and held-out accuracy per round",
        )
    except Exception:  # artifacts are a convenience for Prefect UI users, never fatal
        pass
    return summary


def _write_report(store: RunStore) -> None:
    from thinkwheel.curated.inspect import BASE_ROUND
    from thinkwheel.curated.report import read_round_logs, render_report, write_report

    rounds = {k: store.load_round(k) for k in store.rounds()}
    evals = {k: store.read_json(f"round-{k}/eval.json") for k in rounds}
    evals = {k: v for k, v in evals.items() if v}
    if base := store.read_json("eval-base.json"):  # the starting point every round is read against
        evals[BASE_ROUND] = base
    logs = {k: read_round_logs(store.round_dir(k)) for k in rounds}
    html = render_report(rounds, store.manifest(), evals, logs,
                         answers=store.eval_answers(rounds, BASE_ROUND),
                         title=f"thinkwheel: {store.root.name}")
    write_report(html, store.root / "report.html")


def run(cfg: RunConfig, out: str | Path) -> dict[str, Any]:
    return flywheel(cfg.model_dump(mode="json"), str(out))
