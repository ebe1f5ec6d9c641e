"""`thinkwheel` console script: run, inspect, report, verify, export, train, verifiers, init,
pretrain. Errors a user can fix are one line on stderr with exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from thinkwheel.config import DEFAULT_RUN, ConfigError, RunConfig, load_config, parse_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A synthetic-data flywheel for LLM post-training.",
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(no_args_is_help=True, help="Train on a curated dataset (SFT, DPO or GRPO).")
app.add_typer(train_app, name="train")
console = Console()
err = Console(stderr=True, soft_wrap=True)


def fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False)  # msg is text, not markup
    raise typer.Exit(2)


def _polars_message(err: Exception) -> str:
    """A polars error in one line: its first line names the problem; the rest is the query plan
    it happened in, which tells a user of a data file nothing."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _config(path: Path | None, **overrides) -> RunConfig:
    try:
        return load_config(path, **overrides)
    except ConfigError as e:
        fail(str(e))


# ------------------------------------------------------------------ run
def missing_extras(cfg: RunConfig) -> list[str]:
    """Libraries the config needs that are not installed, each with what needs it; checked
    before Prefect starts, so a GPU-only setting fails in a second rather than after a round."""
    import importlib.util

    needs = []
    if cfg.engine.kind == "vllm":
        needs.append(("vllm", "engine.kind: vllm"))
    if cfg.train.sft.enabled and cfg.train.sft.trainer == "unsloth":
        needs.append(("unsloth", "train.sft.trainer: unsloth"))
    if cfg.train.grpo.enabled and cfg.train.grpo.use_vllm:
        needs.append(("vllm", "train.grpo.use_vllm: true"))
    return [
        f"{what} needs {lib} (pip install 'thinkwheel[gpu]' on a CUDA machine)"
        for lib, what in needs
        if importlib.util.find_spec(lib) is None
    ]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def unreachable_model(cfg: RunConfig, *, training: bool = True) -> str | None:
    """Why engine.model cannot load here, or None. A missing folder, or a hub id that is not in
    the local Hugging Face cache while HF_HUB_OFFLINE is set, otherwise fails inside the flow
    after Prefect starts, with a loader traceback. Online, a hub id is left to download. A
    folder without a tokenizer never works; a LoRA adapter folder scores (`eval`) but does not
    train."""
    model = cfg.engine.model
    if cfg.engine.kind == "openai" or model == "bundled":
        return None
    folder = Path(model).expanduser()
    if folder.is_dir():
        if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
            if not any((folder / f).is_file() for f in TOKENIZER_FILES):
                # transformers 5 builds an empty tokenizer instead, and generation fails later
                # with an IndexError
                return (f"engine.model: {model} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}"
                        "): copy the tokenizer files of the model it came from into it")
            if (folder / "config.json").is_file():
                return None
            if training:
                return (f"engine.model: {model} is a LoRA adapter, not a model: merge it into its "
                        "base (peft's merge_and_unload) and train that, or train the base with "
                        "`lora: true`")
            return _adapter_base_problem(cfg, folder) if cfg.engine.kind == "vllm" else None
        inner = next((p for p in (folder / "model", *sorted(folder.glob("round-*/model"))[::-1])
                      if (p / "config.json").is_file()), None)
        return (f"engine.model: {model} is a folder but not a model (no config.json)"
                + (f"; did you mean {inner}?" if inner else ""))
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        return f"engine.model: no such folder: {model}"
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return None
    try:
        cached = try_to_load_from_cache(model, "config.json")
    except ValueError:  # not a valid repo id either
        cached = None
    if not isinstance(cached, str):
        return (
            f"engine.model: {model} is neither a local folder nor in the Hugging Face cache, and "
            f"HF_HUB_OFFLINE is set: download it first (`hf download {model}`) or give a local path"
        )
    return None


def _adapter_base_problem(cfg: RunConfig, adapter: Path) -> str | None:
    """vLLM loads the base an adapter given as engine.model names, and applies it to that."""
    from thinkwheel.engines.factory import adapter_base

    try:
        base = adapter_base(adapter)
    except ValueError as err:
        return f"engine.model: {err}"
    on_base = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"model": base})})
    if why := unreachable_model(on_base, training=False):
        return (f"engine.model: {cfg.engine.model} is a LoRA adapter of {base} (its "
                f"base_model_name_or_path), which vLLM loads: {why.removeprefix('engine.model: ')}")
    return None


def unusable_lora(cfg: RunConfig, *, training: bool = True) -> str | None:
    """Why engine.lora_path cannot be used, or None. A wrong path failed inside vLLM once the
    model had loaded; and the trainers train engine.model without the adapter, so a run that
    trains would sample its later rounds from a model that never had it."""
    lora = cfg.engine.lora_path
    if not lora or cfg.engine.kind != "vllm":  # other kinds refuse it at load
        return None
    if training:
        return ("engine.lora_path: a run that trains would train engine.model without the "
                "adapter: merge it into the model (peft's merge_and_unload) and give that as "
                "engine.model, or set every train.*.enabled: false")
    from thinkwheel.engines.factory import is_adapter

    if not is_adapter(lora):
        return f"engine.lora_path: {lora} is not a LoRA adapter folder (no adapter_config.json)"
    if is_adapter(Path(cfg.engine.model).expanduser()):
        return (f"engine.lora_path: engine.model {cfg.engine.model} is a LoRA adapter too, and "
                "vLLM applies one: give the base model as engine.model")
    return None


def server_check(cfg: RunConfig, timeout_s: float = 5.0, *,
                 strict_name: bool = False) -> tuple[str | None, str | None]:
    """(why the served model cannot be used, a warning) for engine.kind openai. A server that is
    down or refuses the key otherwise shows only after Prefect starts and every retry backs off.
    Of several servers, one that is down is a warning: the others take its calls. A model name
    the server does not list is a warning (servers take aliases), or with `strict_name` (the
    name is a local folder: `vllm serve PATH` lists it so) the problem."""
    if cfg.engine.kind != "openai":
        return None, None
    import httpx

    key = os.environ.get(cfg.engine.api_key_env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    urls, down, warnings = cfg.engine.base_urls(), [], []
    for base in urls:
        root = re.sub(r"(/chat)?/completions/?$", "", base)
        if root != base:  # the endpoint pasted whole: every call went to .../completions/chat/completions
            return f"engine.base_url: {base} is an endpoint; give the API root ({root})", None
        try:
            resp = httpx.get(base.rstrip("/") + "/models", headers=headers, timeout=timeout_s)
        except httpx.HTTPError as err:
            down.append(f"nothing answers at {base} ({err})")
            continue
        if resp.status_code in (401, 403):
            if not key:
                return (f"engine.base_url: {base} wants an API key (HTTP {resp.status_code}) and "
                        f"${cfg.engine.api_key_env} is not set (engine.api_key_env names the "
                        "variable)"), None
            return f"engine.base_url: {base} refused the API key from ${cfg.engine.api_key_env} " \
                   f"(HTTP {resp.status_code})", None
        if resp.status_code == 404 and not base.rstrip("/").endswith("/v1"):
            warnings.append(f"engine.base_url: {base} has no /models (HTTP 404); an OpenAI-"
                            f"compatible server's API root usually ends in /v1 ({base.rstrip('/')}/v1)")
        try:
            served = [m["id"] for m in resp.json()["data"]] if resp.status_code == 200 else []
        except (ValueError, KeyError, TypeError):
            served = []  # not every server lists its models; the requests will tell
        if served and cfg.engine.model not in served:
            shown = ", ".join(served[:5]) + (", ..." if len(served) > 5 else "")
            note = f"engine.model {cfg.engine.model} is not among the models {base} lists ({shown})"
            if strict_name:  # a server that ignores the name would score its own model as this one
                return f"{note}: serve that folder, or use a config with engine.kind: hf", None
            warnings.append(note)
    if len(down) == len(urls):
        return f"engine.base_url: {'; '.join(down)}; start the server (e.g. `vllm serve " \
               "<model>`) or fix engine.base_url", None
    warnings += [f"engine.base_url: {d}; its calls go to the {len(urls) - len(down)} other "
                 "server(s)" for d in down]
    return None, "\n".join(f"[yellow]{w}[/]" for w in warnings) or None


def preflight(cfg: RunConfig, *, model_flag: bool = False, training: bool = True,
              strict_name: bool = False) -> None:
    """Every check a run or an eval makes before loading anything: missing extras, the server,
    the model and its chat template, the task files. One line and exit 2 on the first problem;
    warnings printed. With `model_flag` the model came from --model, and the message says so."""
    if missing := missing_extras(cfg):
        fail("; ".join(missing))
    problem, warning = server_check(cfg, strict_name=strict_name)
    if problem := (problem or unknown_names(cfg) or missing_device(cfg)
                   or unreachable_model(cfg, training=training)
                   or unusable_lora(cfg, training=training) or unreadable_tasks(cfg)):
        fail(problem.replace("engine.model", "--model") if model_flag else problem)
    if warning:
        console.print(warning)
    problem, warning = template_check(cfg)
    if problem:
        fail(problem)
    if warning:
        console.print(f"[yellow]{escape(warning)}[/]")
    if cfg.generate.tasks.paths or cfg.eval.tasks.paths:
        from thinkwheel.flows.steps import task_file_notes

        for key, files, held in _task_files_of(cfg):
            for note in task_file_notes(files, held_out=held) if files.paths else []:
                console.print(f"[yellow]{key}: {escape(note)}[/]")


def template_check(cfg: RunConfig) -> tuple[str | None, str | None]:
    """(why the model's chat template cannot render our requests, a warning) for a local model.
    A template that refuses a system turn (Gemma's, Mistral's) raised a 130-line traceback after
    Prefect started; a model without a template is prompted as a base model, which a user who
    copied only the tokenizer files (transformers 5 keeps the template in chat_template.jinja)
    should hear before a whole run of it."""
    if cfg.engine.kind == "openai":
        return None, None  # the server renders
    from thinkwheel.engines.factory import resolve_model

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.engine))
    except Exception:  # not loadable here (a hub id online, say): the engine will say why
        return None, None
    if not tokenizer.chat_template:
        return None, (f"{cfg.engine.model} has no chat template: its prompts are the turns' text, "
                      "one per line, as for a base model (copy chat_template.jinja along with the "
                      "tokenizer if it has one)")
    from thinkwheel.chat_template import render_prompt
    from thinkwheel.engines.base import request_for

    try:
        render_prompt(tokenizer, request_for("What is 1 + 1?", cfg.export.system_prompt))
    except Exception as err:
        hint = ("; set export.system_prompt: '' (the system turn sampling, the eval and the "
                "curated sets share)" if cfg.export.system_prompt else "")
        return f"the chat template of {cfg.engine.model} fails on our requests: {err}{hint}", None
    return None, None


def _task_files_of(cfg: RunConfig) -> tuple:
    """(config key, its task files, whether held out) for the training and the eval files."""
    return (("generate.tasks", cfg.generate.tasks, False), ("eval.tasks", cfg.eval.tasks, True))


def missing_device(cfg: RunConfig) -> str | None:
    """engine.device naming a GPU this machine does not have ("Torch not compiled with CUDA
    enabled" came after Prefect started), or None."""
    device = cfg.engine.device
    if cfg.engine.kind != "hf" or device == "cpu":
        return None
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        return f"engine.device {device!r} is not usable here ({str(err).splitlines()[0]}); use cpu"
    return None


def unknown_names(cfg: RunConfig) -> str | None:
    """A task family, evol operator or benchmark the run would only trip over once Prefect is
    up (the families after the base model's eval), named by its config key; or None."""
    from thinkwheel.generators.evol_instruct import OPERATORS
    from thinkwheel.generators.procedural import resolve_families

    p, g = cfg.generate.procedural, cfg.generate
    keys = ([(f"generate.procedural.mix[{i}].families", m.families) for i, m in enumerate(p.mix)]
            or [("generate.procedural.families", p.families)])
    for key, families in [*keys, ("eval.families", cfg.eval.families)]:
        try:
            resolve_families(families)
        except ValueError as err:
            return f"{key}: {err}"
    if g.evol_instruct.enabled and (bad := [o for o in g.evol_instruct.operators
                                            if o not in OPERATORS]):
        return f"generate.evol_instruct.operators: unknown {bad}; known: {', '.join(OPERATORS)}"
    # found after the base model's eval, minutes in; Evol-Instruct without seeds made nothing
    seeded = g.tasks.paths or any(per > 0 and families for families, per, _ in p.plan(0))
    for key, gen in (("self_instruct", g.self_instruct), ("evol_instruct", g.evol_instruct)):
        if gen.enabled and gen.num_tasks > 0 and not seeded:
            return (f"generate.{key} needs seed tasks to start from: give generate.procedural "
                    "families with per_family > 0, or generate.tasks.paths")
    for key, gen, path in (
            ("generate.self_instruct.template", g.self_instruct, g.self_instruct.template),
            ("generate.evol_instruct.template_dir", g.evol_instruct, g.evol_instruct.template_dir)):
        if gen.enabled and path and not Path(path).expanduser().exists():
            return f"{key}: {path}: no such file or folder"
    if cfg.filters.decontam.enabled:
        from thinkwheel.filters.decontam import load_benchmarks

        try:
            load_benchmarks(cfg.filters.decontam.benchmarks)
        except (ValueError, FileNotFoundError) as err:
            return str(err)
    return None


def unreadable_tasks(cfg: RunConfig) -> str | None:
    """Why the task files the config names (`generate.tasks`, `eval.tasks`) cannot be used, or
    None: a missing file, a row without a prompt, an unknown verifier (there or in
    verify.plugins), a held-out row that cannot be verified. Checked before Prefect starts,
    not a round in."""
    if not (cfg.generate.tasks.paths or cfg.eval.tasks.paths or cfg.verify.plugins):
        return None
    from thinkwheel.flows.steps import task_files
    from thinkwheel.verifiers import UnknownVerifierError, load_plugins

    try:
        load_plugins(cfg.verify.plugins)
    except UnknownVerifierError as err:
        return f"verify.plugins: {err}"
    for key, files, held in _task_files_of(cfg):
        try:
            task_files(files, held_out=held)  # parsed once: the run's stages reuse them
        except (ValueError, UnknownVerifierError) as err:
            return f"{key}: {err}"
    return None


def _exit_cleanly_on_term() -> None:
    """SIGTERM and SIGHUP leave through Python's normal exit, so atexit stops Prefect's temporary
    server: it is a child process (uvicorn) and, under the default handlers, outlived us.
    Finished shards are on disk either way; re-running the command resumes (a trainer first
    saves a checkpoint: `checkpoints.stoppable`). SIGKILL cannot be caught: kill the process
    group (`kill -- -PGID`) to take the server with it."""
    from thinkwheel.train.checkpoints import checkpoint_on_signals

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    checkpoint_on_signals()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


@contextmanager
def _resumable() -> Iterator[None]:
    """Ctrl-C in a long command: say how to go on and exit 130. Left to click, the installed
    `thinkwheel` script printed "Aborted!" and exited 1.

    A terminal's Ctrl-C reaches the whole process group, Prefect's temporary server too: it
    stops, and Prefect's crash handling then fails to reach it (a ConnectError, after
    retries). That is still the interrupt, not an error, so whatever ends the command after a
    Ctrl-C ends it as one. A second Ctrl-C quits at once."""
    hit: list[bool] = []
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # not when ignored

    def on_sigint(signum: int, frame: object) -> None:
        if hit:
            err.print("interrupted")
            os._exit(130)
        hit.append(True)
        err.print("interrupted: stopping (Ctrl-C again to quit at once) ...")
        raise KeyboardInterrupt

    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except (typer.Exit, SystemExit):
        raise
    except BaseException as e:
        if not hit and not isinstance(e, KeyboardInterrupt):
            raise
        err.print("interrupted; re-run the same command to resume")
        raise typer.Exit(130) from None
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    rounds: Annotated[int | None, typer.Option(help="Number of flywheel rounds")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>)")] = None,
) -> None:
    """Run the flywheel; re-running the same command resumes where it stopped.

    Without --config it runs the packaged CPU recipe, thinkwheel/configs/default.yaml."""
    cfg = _config(config or DEFAULT_RUN, rounds=rounds)
    preflight(cfg, training=bool(cfg.train.trainers()))
    out = out or Path("runs") / cfg.name
    t0 = time.time()
    console.print(
        f"[bold]thinkwheel run[/] {cfg.name}: {cfg.rounds} round(s), engine {cfg.engine.kind} "
        f"({cfg.engine.model}) -> {out}"
    )
    console.print("starting Prefect (a temporary local server on first use) ...")
    _exit_cleanly_on_term()
    # a failed stage reaches the user once, as our one-line error (or Python's traceback for
    # the unexpected), not also as Prefect's task and flow failure logs with their tracebacks
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    # the server is a local child process: when it is gone (a Ctrl-C reaches it too), Prefect's
    # five retries with exponential backoff held the exit for over a minute
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", "2")
    from thinkwheel.engines.openai import EngineError
    from thinkwheel.flows.flywheel import run as run_flow
    from thinkwheel.flows.progress import RichReporter, use_reporter
    from thinkwheel.store import RunInUse, running

    if holder := running(out):  # before Prefect's server takes its 20 s to start
        fail(f"{out} is being run by {holder}: wait for it to finish, or use another --out")
    if why := not_a_run_dir(out):  # and before anything is written into it
        fail(why)
    try:
        with _resumable(), RichReporter() as rep, use_reporter(rep):
            summary = run_flow(cfg, out)
    except (FileNotFoundError, ConfigError, ValueError, RunInUse) as e:
        fail(str(e))
    except EngineError as e:
        fail(f"{e}. Every answer that came back is kept in {out}: fix the server and re-run the "
             "same command to resume")
    print_summary(summary)
    console.print(
        f"done in {time.time() - t0:.0f}s. Inspect: [bold]thinkwheel inspect {out}[/]; "
        f"report: {out / 'report.html'}"
    )


def not_a_run_dir(out: Path) -> str | None:
    """Why `out` cannot hold a run, or None: a run writes into a new or empty folder, or its
    own earlier run (to resume), never among other files (a data folder, another run's round)."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; a run needs a folder"
    others = sorted(p.name for p in out.iterdir()  # .gitignore, .DS_Store: still empty
                    if p.name != "run.lock" and not p.name.startswith(".")) if out.is_dir() else []
    if others and not (out / "manifest.json").is_file():
        held = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        return (f"--out {out} holds other files ({held}) and no run to resume: "
                "give a new or empty folder")
    return None


def print_summary(summary: dict) -> None:
    t = Table(title="flywheel funnel and held-out accuracy per round")
    counts = ["tasks", "candidates", "passed", "kept", "sft", "grpo"]
    if any(r.get("repaired") is not None for r in summary["rounds"]):  # sampling.repair on
        counts.insert(2, "repaired")
    for col in ("round", *(c.upper() if c in ("sft", "grpo") else c for c in counts),
                "accuracy", "clean"):
        t.add_column(col, justify="right")

    def pct(v: float | None) -> str:
        return "" if v is None else f"{v:.1%}"

    base = summary.get("base")
    if base:
        t.add_row("base", *[""] * len(counts), pct(base["accuracy"]),
                  pct(base.get("clean_accuracy")))
    for r in summary["rounds"]:
        vals = [r.get(c) for c in counts]
        t.add_row(str(r["round"]), *["" if v is None else str(v) for v in vals],
                  pct(r["accuracy"]), pct(r.get("clean_accuracy")))
    console.print(t)


# ------------------------------------------------------------------ inspect / report
def _load_run(path: Path):
    from thinkwheel.store import RunStore

    store = RunStore(path)
    rounds = {k: store.load_round(k) for k in store.rounds()}
    evals = {k: store.read_json(f"round-{k}/eval.json") for k in rounds}
    return store, rounds, {k: v for k, v in evals.items() if v}


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="A run directory, an export folder or a parquet file")],
    samples: Annotated[int, typer.Option(min=0, help="Show this many sample records")] = 0,
    where: Annotated[str | None, typer.Option(help="Filter: SQL (family = 'addition') or polars")] = None,
    reason: Annotated[str | None, typer.Option(help="Drop reason, stage, 'kept' or 'dropped'")] = None,
    round: Annotated[int | None, typer.Option("--round", help="Only this round")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    held_out: Annotated[bool, typer.Option(
        "--eval", help="Show the held-out answers of one model (--round, -1 for the base model; "
        "default the last) instead; --reason passed, failed, lucky, truncated, unverified, "
        "fixed or broken (against the model before)")] = False,
) -> None:
    """Funnel, drop reasons, pass rates, lengths and accuracy per round; or sample records;
    or, with --eval, the held-out answers and why each failed."""
    from thinkwheel.curated import inspect as ins

    if not path.exists():
        fail(f"no such run or dataset: {path}")
    if held_out and path.is_file() and path.suffix == ".parquet":  # `eval --out`'s answers
        import polars as pl

        if round is not None:
            fail(f"--round picks a round of a run; {path} is one model's answers")
        try:
            answers = {0: pl.read_parquet(path)}
        except (pl.exceptions.PolarsError, OSError) as e:
            fail(f"{path}: not a parquet file ({e})")
        _inspect_eval_answers(answers, samples or 5, where, reason, None, as_json,
                              names={0: path.stem.removesuffix("-answers")})
        return
    if not (path / "manifest.json").exists():  # an exported dataset
        from thinkwheel.curated.export import read_dataset

        flags = [f for f, on in (("--samples", samples > 0), ("--where", where is not None),
                                 ("--reason", reason is not None), ("--round", round is not None),
                                 ("--eval", held_out))
                 if on]
        if flags:  # they were ignored without a word
            what = "an empty folder" if path.is_dir() and not any(path.iterdir()) else "no run"
            fail(f"{' and '.join(flags)} need a run's records (verdicts, drop reasons, rounds, "
                 f"held-out answers), and {path} is {what}: inspect it without them, or point "
                 "at the run directory (or, with --eval, at an eval's -answers.parquet)")
        try:
            summary = ins.dataset_summary(read_dataset(path))
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
        console.print_json(json.dumps(summary, default=str)) if as_json else console.print(
            ins.render_dataset_summary(summary)
        )
        return
    from thinkwheel.store import running

    if holder := running(path):
        err.print(f"[yellow]{escape(str(path))} is being run by {holder}: a stage it has not "
                  "redone yet shows the previous run's results[/]")
    store, rounds, evals = _load_run(path)
    if held_out:
        _inspect_eval(store, rounds, samples or 5, where, reason, round, as_json)
        return
    if not rounds:
        fail(f"{path} holds no finished round yet")
    if round is not None and round not in rounds:
        fail(f"{path} has no round {round}; it has {', '.join(map(str, sorted(rounds)))}")
    if samples or where or reason:
        try:
            df = ins.sample_records(rounds, samples or 5, where=where, reason=reason, round=round)
        except ValueError as e:
            fail(str(e))
        if as_json:
            print(json.dumps(df.to_dicts(), default=str, indent=1))
        else:
            console.print(ins.render_samples(df))
        return
    if round is not None:
        rounds = {k: v for k, v in rounds.items() if k == round}
    summary = ins.summarize(rounds, store.manifest(), evals)
    base = store.read_json("eval-base.json")
    if base:
        summary["base_accuracy"] = base.get("accuracy")
    if as_json:
        print(json.dumps(summary, default=str, indent=1))
    else:
        if base:
            console.print(f"base model held-out accuracy: {base['accuracy']:.1%}")
        console.print(ins.render_summary(summary))


def _inspect_eval(store, rounds, n: int, where: str | None, reason: str | None,  # noqa: ANN001
                  round: int | None, as_json: bool) -> None:
    from thinkwheel.curated.inspect import BASE_ROUND

    _inspect_eval_answers(store.eval_answers(rounds, BASE_ROUND), n, where, reason, round,
                          as_json)


def _inspect_eval_answers(answers: dict, n: int, where: str | None, reason: str | None,
                          round: int | None, as_json: bool, names: dict | None = None) -> None:
    from thinkwheel.curated import inspect as ins

    if any("greedy_passed" not in df.columns for df in answers.values()):
        fail("not held-out answers (an eval-answers.parquet file)")
    try:
        df, counts = ins.eval_samples(answers, n, where=where, reason=reason, round=round,
                                      names=names)
    except ValueError as e:
        fail(str(e))
    if as_json:
        print(json.dumps({"counts": counts, "answers": df.to_dicts()}, default=str, indent=1))
    else:
        console.print(ins.render_eval_answers(df, counts))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="Run directory")]) -> None:
    """(Re)write RUN/report.html: one self-contained file with charts and a sample browser."""
    from thinkwheel.flows.flywheel import _write_report
    from thinkwheel.store import RunStore

    if not (run_dir / "manifest.json").exists():
        fail(f"{run_dir} is not a run directory (no manifest.json)")
    _write_report(RunStore(run_dir))
    console.print(f"wrote {run_dir / 'report.html'}")


# ------------------------------------------------------------------ export
@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    format: Annotated[str, typer.Option(help="parquet | jsonl | hf | verl (the GRPO set)")] = "parquet",
    round: Annotated[int | None, typer.Option("--round", help="Round (default: last)")] = None,
    all_rounds: Annotated[bool, typer.Option("--all-rounds", help="Concatenate every round")] = False,
    push_to_hub: Annotated[str | None, typer.Option(help="Also push to this Hub repo")] = None,
) -> None:
    """Copy a round's curated SFT + GRPO sets (with the dataset card) to another format."""
    import polars as pl

    from thinkwheel.curated.export import FORMATS, check_export_dir, read_dataset, write_dataset
    from thinkwheel.flows.steps import round_card

    if format not in FORMATS:
        fail(f"unknown format {format!r}: choose {', '.join(FORMATS)}")
    try:
        check_export_dir(out)  # it replaces the folder whole: never a run or a folder of yours
    except ValueError as e:
        fail(str(e))
    if round is not None and all_rounds:
        fail("--round and --all-rounds: give one")
    if not run_dir.exists():
        fail(f"no such run: {run_dir}")
    if not (run_dir / "manifest.json").is_file():
        fail(f"{run_dir} is not a run directory" + (
            "; it is a dataset: `thinkwheel inspect` reads it, and export starts from its run"
            if run_dir.is_dir() and (run_dir / "sft.parquet").is_file() else ""))
    store, rounds, _ = _load_run(run_dir)
    ks = [k for k in rounds if (store.round_dir(k) / "curated").exists()]
    if not ks:
        fail(f"{run_dir} has no curated round yet")
    if all_rounds:
        pick = ks
    else:
        pick = [round if round is not None else ks[-1]]
    missing = [k for k in pick if k not in ks]
    if missing:
        fail(f"round {missing[0]} has no curated data (have: {ks})")
    parts = [read_dataset(store.round_dir(k) / "curated") for k in pick]
    sft = pl.concat([p["sft"] for p in parts], how="diagonal_relaxed")
    grpo = pl.concat([p["grpo"] for p in parts], how="diagonal_relaxed")
    dpo_parts = [p["dpo"] for p in parts if "dpo" in p]  # runs from before the dpo split have none
    dpo = pl.concat(dpo_parts, how="diagonal_relaxed") if dpo_parts else None
    cfg = store.config()
    card = round_card(cfg, {k: store.load_round(k) for k in pick}, sft, grpo, dpo, format)
    info = write_dataset(sft, grpo, out, formats=(format,), card=card, dpo=dpo)
    if format != "verl":
        console.print(f"wrote {info['counts']} to {out}")
    elif not info["counts"]["grpo"]:
        console.print(f"[yellow]wrote no GRPO prompts to {out / 'verl'}: no task of "
                      f"round(s) {pick} had a pass rate in sampling.grpo_pass_band[/]")
    else:  # verl trains on the GRPO prompts; its SFT takes the parquet or jsonl format
        from thinkwheel.train import verl_reward

        console.print(f"wrote {info['counts']['grpo']} GRPO prompts to {out / 'verl'}")
        console.print(
            f"train it in verl with data.train_files={(out / 'verl' / 'train.parquet').resolve()} "
            f"custom_reward_function.path={verl_reward.__file__} "
            "custom_reward_function.name=compute_score "
            # the run's own GRPO reward settings (train.grpo, verify), not the defaults
            f"+custom_reward_function.reward_kwargs.config={(run_dir / 'config.yaml').resolve()}",
            soft_wrap=True)
    if push_to_hub:
        from datasets import load_from_disk

        if format != "hf":
            write_dataset(sft, grpo, out, formats=(format, "hf"), card=card, dpo=dpo)
        # one config per set: the sets have different columns, which one DatasetDict's splits
        # may not (datasets refused the push before any upload)
        pushed = []
        for name, ds in load_from_disk(str(out / "hf")).items():
            ds.push_to_hub(push_to_hub, config_name=name, split="train")
            pushed.append(name)
        console.print(f"pushed {', '.join(pushed)} to {push_to_hub} (one config each)")


# ------------------------------------------------------------------ verify / verifiers
PluginOpt = Annotated[list[str] | None, typer.Option(
    "--plugin", help="Plugin 'module:callable', or a 'module' whose @register verifiers to load "
    "(repeatable; a module beside you is found)")]


@app.command()
def verify(
    file: Annotated[Path, typer.Argument(help="JSONL or parquet of completion, reference[, tests]")],
    verifier: Annotated[str, typer.Option(help="Verifier name or module:callable")] = "math",
    out: Annotated[Path | None, typer.Option(help="Verdicts file (default: beside FILE, <name>.verdicts.parquet)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: the config's, 2)")] = None,
    plugin: PluginOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Judge with this run config's verify settings and plugins")] = None,
) -> None:
    """Verify a file of completions and write verdicts plus a summary."""
    from thinkwheel.verifiers.files import verify_file

    if not file.exists():
        fail(f"no such file: {file}")
    out = out or file.with_suffix(".verdicts.parquet")
    if out.is_dir():
        fail(f"--out {out} is a folder; give the verdicts file, e.g. {out / 'verdicts.parquet'}")
    v = _config(config).verify if config else None
    settings = {**v.options(), "format_weight": v.format_weight} if v else {}
    settings["plugins"] = [*settings.get("plugins", []), *(plugin or [])]
    if workers is not None:
        settings["workers"] = workers
    try:
        summary = verify_file(file, verifier, out, **settings)
    except (ValueError, KeyError, ImportError) as e:
        fail(str(e))
    console.print_json(json.dumps(summary, default=str))


@app.command()
def verifiers(
    plugin: PluginOpt = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Also list the verifiers this run config's plugins register")] = None,
) -> None:
    """List every registered verifier and where it comes from."""
    from thinkwheel.verifiers import UnknownVerifierError, list_verifiers, load_plugins

    specs = [*(_config(config).verify.plugins if config else []), *(plugin or [])]
    try:
        load_plugins(specs)
    except UnknownVerifierError as e:
        fail(str(e))
    t = Table("name", "origin")
    for name, origin in list_verifiers():
        t.add_row(name, origin)
    console.print(t)


# ------------------------------------------------------------------ train
ModelOpt = Annotated[str | None, typer.Option(
    help="Model folder or id (default: engine.model of --config; 'bundled' for the shipped model)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c")]


def _train_inputs(data: Path, split: str, model: str | None, config: Path | None, out: Path):
    """(run config, the `split` table of a curated set, the resolved model path); everything
    wrong with them, or with `out`, is said before the model loads. Without --model the
    config's engine.model is trained, as `thinkwheel eval` scores it (the bundled model when
    neither is given)."""
    from thinkwheel.environment import quiet_libraries

    quiet_libraries()  # before datasets / transformers load: our bar shows the steps
    import polars as pl

    from thinkwheel.curated.export import chat_messages, read_dataset
    from thinkwheel.engines.factory import resolve_model
    from thinkwheel.train.checkpoints import check_model_dir

    cfg = _config(config)
    try:
        check_model_dir(out)
        frames = read_dataset(data)
        if data.is_file():  # one file is the set to train on, whatever its name
            frames = {split: next(iter(frames.values()))}
        if split == "sft" and split in frames:
            frames[split] = chat_messages(frames[split])
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    except pl.exceptions.PolarsError as err:  # a malformed JSONL line: not a ValueError
        fail(f"{data}: {_polars_message(err)}")
    if split not in frames:
        fail(f"{data} holds no {split} set")
    if frames[split].height == 0:
        fail(f"the {split} set in {data} is empty")
    engine = cfg.engine.model_copy(update={"model": model or cfg.engine.model, "kind": "hf"})
    if problem := unreachable_model(cfg.model_copy(update={"engine": engine})):
        fail(problem.replace("engine.model", "--model") if model else problem)
    problem, warning = template_check(cfg.model_copy(update={"engine": engine}))
    if problem or warning:
        console.print(f"[yellow]{escape(problem or warning)}[/]")
    path = resolve_model(engine)
    if Path(path).resolve() == out.resolve():
        fail(f"--out {out} is the model being trained; write the trained model to another folder")
    console.print(f"training {engine.model}" + (f" ({path})" if str(path) != engine.model else ""))
    return cfg, frames[split], path


def _show(metrics: dict) -> None:
    console.print({k: v for k, v in metrics.items() if k != "log_history"})


@contextmanager
def _training(label: str) -> Iterator[list]:
    """A step counter for a training command; yields the trainer callbacks that drive it."""
    from thinkwheel.flows.progress import RichReporter, use_reporter
    from thinkwheel.flows.steps import step_callbacks

    _exit_cleanly_on_term()  # and a SIGTERM mid-training saves a checkpoint first
    with _resumable(), RichReporter() as rep, use_reporter(rep):
        rep.start(label, None)
        yield step_callbacks()
        rep.finish()


@train_app.command("sft")
def train_sft_cmd(
    data: Annotated[Path, typer.Argument(
        help="Curated folder, or one parquet / JSONL file of chat `messages` or ShareGPT `conversations`")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Output model folder")] = Path("model-sft"),
    config: ConfigOpt = None,
) -> None:
    """Cold-start SFT on a curated <think> set (TRL on CPU, Unsloth on a GPU when installed)."""
    from thinkwheel.train.sft import length_warning, train_sft

    cfg, sft, path = _train_inputs(data, "sft", model, config, out)
    try:
        with _training(f"SFT on {sft.height} samples") as callbacks:
            metrics = train_sft(path, sft, str(out), cfg.train.sft, callbacks=callbacks,
                                checkpoint_minutes=cfg.train.checkpoint_minutes)
    except ValueError as err:  # a conversation without an assistant turn, ...
        fail(str(err))
    _show(metrics)
    if warning := length_warning(metrics):
        console.print(warning)


@train_app.command("dpo")
def train_dpo_cmd(
    data: Annotated[Path, typer.Argument(help="Curated folder, or one parquet / JSONL file of pairs")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Output model folder")] = Path("model-dpo"),
    config: ConfigOpt = None,
) -> None:
    """DPO on the curated preference pairs (a kept vs a failed sample of one task), TRL."""
    from thinkwheel.train.dpo import conversational_pairs, train_dpo
    from thinkwheel.train.sft import length_warning

    cfg, dpo, path = _train_inputs(data, "dpo", model, config, out)
    try:
        conversational_pairs(dpo)  # the pairs' shape is checked before the model loads
        with _training(f"DPO on {dpo.height} pairs") as callbacks:
            metrics = train_dpo(path, dpo, str(out), cfg.train.dpo, callbacks=callbacks,
                                checkpoint_minutes=cfg.train.checkpoint_minutes)
    except ValueError as err:
        fail(str(err))
    _show(metrics)
    if warning := length_warning(metrics, "train.dpo.max_length", "preference pairs"):
        console.print(warning)


@train_app.command("grpo")
def train_grpo_cmd(
    data: Annotated[Path, typer.Argument(help="Curated folder, or one parquet / JSONL file of prompts")],
    model: ModelOpt = None,
    out: Annotated[Path, typer.Option(help="Output model folder")] = Path("model-grpo"),
    config: ConfigOpt = None,
    plugin: PluginOpt = None,
) -> None:
    """GRPO with the verifiers as rewards (plus the format reward)."""
    import polars as pl

    from thinkwheel.train.grpo import train_grpo, verifiable_prompts
    from thinkwheel.train.rewards import grpo_rewards, unjudged_warning
    from thinkwheel.verifiers import UnknownVerifierError, get_verifier, load_plugins
    from thinkwheel.verifiers.batch import verifier_options
    from thinkwheel.verifiers.registry import resolve

    cfg, grpo, path = _train_inputs(data, "grpo", model, config, out)
    if plugin:
        cfg.verify.plugins = [*cfg.verify.plugins, *plugin]
    try:
        grpo = verifiable_prompts(grpo)
        load_plugins(cfg.verify.plugins)
        for name in grpo["verifier"].drop_nulls().unique().sort():
            # found at the first reward call, it failed after the model loaded; a plugin is
            # built too (a function of three arguments fails there)
            if resolve(name)[1] != "builtin":
                get_verifier(name, **verifier_options(name, **cfg.verify.options()))
    except UnknownVerifierError as err:
        hint = (" (a verifier a plugin module registers needs --plugin MODULE or the config's "
                "verify.plugins)") if str(err).startswith("unknown verifier") else ""
        fail(f"{err}{hint}")
    except (ValueError, TypeError) as err:
        fail(str(err))
    except pl.exceptions.PolarsError as err:  # a column of a type the set cannot have: not a
        fail(f"{data}: {_polars_message(err)}")  # ValueError, and it ended in a raw traceback
    rewards, weights = grpo_rewards(cfg.train.grpo, cfg.verify, strict_format=True)
    try:
        with _training(f"GRPO on {grpo.height} prompts") as callbacks:
            metrics = train_grpo(
                path, grpo, str(out), cfg.train.grpo, rewards, weights,
                callbacks=callbacks, checkpoint_minutes=cfg.train.checkpoint_minutes,
                stop=cfg.sampling.stop,
            )
    except ValueError as err:
        fail(str(err))
    _show(metrics)
    if note := unjudged_warning(rewards):
        console.print(f"[yellow]{escape(note)}[/]")


# ------------------------------------------------------------------ eval
@app.command("eval")
def eval_cmd(
    model: Annotated[str | None, typer.Option(help="Model folder or id (default: engine.model)")] = None,
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(
        help="Also write the eval.json here, and its answers beside it (<stem>-answers.parquet)")] = None,
) -> None:
    """Score a model on the held-out split (and eval.tasks files), as the flow scores each round:
    greedy pass@1 (pass@k and maj@k when eval.k > 1), per family."""
    from thinkwheel.engines.factory import make_engine
    from thinkwheel.flows.steps import score_model

    cfg = _config(config)
    if model is not None:  # through the validators: model_copy let `--model bundled` score the
        try:  # bundled model on a held-out split it was pretrained on
            cfg = parse_config({**cfg.model_dump(),
                                "engine": {**cfg.engine.model_dump(), "model": model}})
        except ConfigError as e:
            fail(f"--model {model}: {e}")
    if out is not None and out.is_dir():  # found after the whole eval, it lost the scores
        fail(f"--out {out} is a folder; give the eval.json file, e.g. {out / 'eval.json'}")
    folder = model is not None and cfg.engine.kind == "openai" and Path(model).expanduser().is_dir()
    preflight(cfg, model_flag=model is not None, training=False, strict_name=folder)
    from thinkwheel.engines.openai import EngineError
    from thinkwheel.environment import quiet_libraries
    from thinkwheel.flows.progress import RichReporter, use_reporter

    quiet_libraries()
    t0 = time.time()
    try:
        with RichReporter() as rep, use_reporter(rep):
            result, answers = score_model(cfg, make_engine(cfg.engine),
                                          label=f"scoring {cfg.engine.model}")
    except (EngineError, FileNotFoundError, ValueError) as e:  # as `run` says them
        fail(str(e))
    result["model"] = cfg.engine.model
    if out is not None:
        from thinkwheel.store import answers_path, atomic_write_bytes, atomic_write_parquet

        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(Path(answers_path(str(out))), answers)
        atomic_write_bytes(out, json.dumps(result, indent=2, sort_keys=True, default=str).encode())
    t = Table(title=f"{cfg.engine.model}: held-out accuracy ({time.time() - t0:.0f}s)")
    for col in ("family", "n", "accuracy", "clean", f"pass@{result['k']}", f"maj@{result['k']}"):
        t.add_column(col, justify="left" if col == "family" else "right")
    rows = [*sorted(result["per_family"].items()), ("all", result)]
    for name, m in rows:
        t.add_row(name, str(m["n"]), *(f"{m.get(c, 0) or 0:.1%}" for c in
                                       ("accuracy", "clean_accuracy", "pass_at_k", "maj_at_k")))
    console.print(t)


# ------------------------------------------------------------------ init / pretrain
@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter config")] = Path(
        "thinkwheel.yaml"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file")] = False,
    defaults: Annotated[bool, typer.Option(
        "--defaults", help="The library defaults instead of the recipe `thinkwheel run` runs")] = False,
) -> None:
    """Write a commented starter config: the recipe `thinkwheel run` runs, every key spelled out."""
    from thinkwheel.starter import starter_yaml

    if path.is_dir():
        fail(f"{path} is a folder; give the config file, e.g. {path / 'thinkwheel.yaml'}")
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(starter_yaml(RunConfig() if defaults else None))
    console.print(f"wrote {path}; run it with: thinkwheel run --config {path}")


@app.command()
def pretrain(
    out: Annotated[Path | None, typer.Option(help="Model folder (default: the bundled asset)")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Regenerate the bundled model from scratch on CPU (the recipe in thinkwheel/pretrain.py)."""
    from thinkwheel import pretrain as pt

    kw = {"seed": seed}
    if out is not None:
        kw["out"] = out
    if steps is not None:
        kw["steps"] = steps
    console.print(pt.train(**kw))


def main() -> None:  # pragma: no cover - console entry for `python -m thinkwheel`
    app()
