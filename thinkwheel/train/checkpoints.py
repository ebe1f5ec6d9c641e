"""Training that survives a crash: checkpoints in the staging folder, resumed on a re-run.

SFT, DPO and GRPO train into `<out>.tmp` and swap it in as `<out>` when done. Every
`train.checkpoint_minutes` a callback has transformers save a checkpoint there (weights,
optimizer, scheduler, RNG state and trainer state; only the latest is kept). A re-run of the
same training (same trainer, model files, data and settings, recorded beside the
checkpoints) resumes from it, so a crash five hours into a six-hour SFT costs minutes, not
five hours. Anything else starts clean. A checkpoint is complete once its
`trainer_state.json` is written (transformers writes it last); a half-written one is ignored.
In the `thinkwheel` commands, a SIGTERM (a preempted spot machine, `kill PID`) that arrives
while a trainer runs is taken as "checkpoint now, then exit": the step finishes, the
checkpoint is saved, and the process leaves with the signal's exit code (`stoppable`), so the
re-run loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

FINGERPRINT = "resume.json"
_PREFIX = "checkpoint-"


def fingerprint(
    kind: str, model_path: str, dataset: Any, cfg: BaseModel, **extra: Any
) -> dict[str, Any]:
    """What a checkpoint was made from. `datasets` fingerprints a table by its content; a
    dataset without one gets a fresh id, so it never resumes rather than resuming wrongly.
    `extra` holds what the trainer takes besides its config (GRPO's reward functions)."""
    data = getattr(dataset, "_fingerprint", None) or uuid.uuid4().hex
    return _normal({"kind": kind, "model": model_identity(model_path), "data": data,
                    "config": cfg.model_dump(mode="json"), **extra})


def callable_name(fn: Any) -> str:
    """`module.qualname` of a function, partial or callable object: the same code under the
    same name in every process."""
    inner = getattr(fn, "func", fn)  # functools.partial
    name = (getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
            or type(inner).__qualname__)
    return f"{inner.__module__}.{name}"


def model_identity(model_path: str) -> Any:
    """A local model folder by its files' names, sizes and mtimes (a round's model is
    republished in place); anything else (a hub id) by its name."""
    from thinkwheel.store import file_stamps

    p = Path(model_path)
    return [str(p.resolve()), file_stamps(p)] if p.is_dir() else model_path


MODEL_FILES = ("config.json", "adapter_config.json")


def check_model_dir(out_dir: str | Path) -> None:
    """A trainer replaces its output folder whole, so it must be empty or a model's: `--out`
    naming a run or a data folder deleted it without a word. Checked before training starts,
    and again before the swap."""
    p = Path(out_dir)
    if not p.exists():
        return
    if not p.is_dir():
        raise ValueError(f"{p} is a file; a trainer writes a model folder")
    entries = sorted(e.name for e in p.iterdir())
    if entries and ("manifest.json" in entries or not any(f in entries for f in MODEL_FILES)):
        raise ValueError(
            f"{p} holds {', '.join(entries[:3])}{' ...' if len(entries) > 3 else ''} and is not a "
            "model folder: training replaces its output folder, so it will not write there; use "
            "another --out")


def staging(out_dir: str, fp: dict[str, Any]) -> tuple[str, str | None]:
    """(`<out>.tmp`, the checkpoint in it to resume from). The folder is kept only when it
    holds a complete checkpoint of this same training; otherwise it is emptied and stamped
    with `fp`. On resume the curves logged after the checkpoint are dropped: the trainer
    logs those steps again."""
    check_model_dir(out_dir)
    tmp = Path(out_dir.rstrip("/") + ".tmp")
    last = latest_checkpoint(tmp)
    if last is not None and _read(tmp / FINGERPRINT) == _normal(fp):
        for partial in _checkpoints(tmp):
            if partial != last and not (partial / "trainer_state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)
        _trim_log(tmp / "train_log.jsonl", checkpoint_step(last))
        return str(tmp), str(last)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / FINGERPRINT).write_text(json.dumps(_normal(fp)))
    return str(tmp), None


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder`, if any."""
    done = [c for c in _checkpoints(folder) if (c / "trainer_state.json").is_file()]
    return max(done, key=checkpoint_step, default=None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name[len(_PREFIX):])


def clear(folder: str) -> None:
    """Remove the checkpoints before the trained model is published, and the model card TRL
    writes with each checkpoint ("a fine-tuned version of [None]"). The fingerprint stays
    until the model is published (`publish`): with `train_metrics.json` it marks a finished
    training that a crash kept from being published (`finished`)."""
    for c in _checkpoints(Path(folder)):
        shutil.rmtree(c, ignore_errors=True)
    Path(folder, "README.md").unlink(missing_ok=True)


def publish(tmp: str, out_dir: str) -> None:
    """Swap `tmp` into place: rename is atomic; the old model is removed only after it moved."""
    check_model_dir(out_dir)
    old = out_dir.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    Path(out_dir, FINGERPRINT).unlink(missing_ok=True)


def finished(out_dir: str, fp: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics of a training of this fingerprint that ended, saved its model and was cut
    before the model was published (between the checkpoints' removal and the swap, or in the
    swap): it is published now. Such a crash used to cost the whole training: the staging
    folder held no checkpoint any more, so the re-run emptied it and started over. None when
    there is no such model."""
    want = _normal(fp)
    tmp = Path(out_dir.rstrip("/") + ".tmp")
    for folder in (tmp, Path(out_dir)):
        metrics = _read(folder / "train_metrics.json")
        if isinstance(metrics, dict) and _read(folder / FINGERPRINT) == want:
            if folder == tmp:
                clear(str(tmp))
                publish(str(tmp), out_dir)
            Path(out_dir, FINGERPRINT).unlink(missing_ok=True)
            log = Path(out_dir, "train_log.jsonl")
            rows = [_row(line) for line in log.read_text().splitlines()] if log.is_file() else []
            return {**metrics, "log_history": [r for r in rows if r is not None]}
    return None


_stop_code: int | None = None  # set by a SIGTERM while a trainer runs
_on_signals = False  # the process asked for it: `checkpoint_on_signals`


def checkpoint_on_signals() -> None:
    """Make SIGTERM and SIGHUP during training mean "save a checkpoint after this step, then
    exit". The `thinkwheel` commands ask for it; a library caller's process keeps its own
    signal handling."""
    global _on_signals
    _on_signals = True


@contextmanager
def stoppable(active: bool) -> Iterator[None]:
    """While a trainer with checkpoints runs (and the process asked for it), a SIGTERM or SIGHUP
    only takes note; the checkpoint callback then saves and raises SystemExit with the signal's
    exit code. Installed around the training rather than once by the CLI because Prefect swaps
    in its own SIGTERM handler for a flow's run. Main thread only (where Python delivers
    signals); the previous handlers come back afterwards."""
    global _stop_code
    main = threading.current_thread() is threading.main_thread()
    if not (active and _on_signals and main):
        yield
        return

    def take_note(signum: int, _frame: Any) -> None:
        global _stop_code
        _stop_code = 128 + signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: saving a training checkpoint after "
                         "this step, then stopping; re-run the same command to resume from it\n")

    signals = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, take_note) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_code = None


def every(minutes: float | None) -> list[Any]:
    """A callback that asks the trainer for a checkpoint once `minutes` have passed since the
    start or the last one (0: after every step; None: never), or at once after a SIGTERM
    (`stoppable`), and then exits. The final step is not saved on schedule: the finished model is."""
    if minutes is None:
        return []
    from transformers import TrainerCallback

    class CheckpointEvery(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.monotonic()

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.last = time.monotonic()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            due = time.monotonic() - self.last >= minutes * 60
            if (due and state.global_step < state.max_steps) or _stop_code is not None:
                control.should_save = True

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.last = time.monotonic()
            if _stop_code is not None:
                raise SystemExit(_stop_code)

    return [CheckpointEvery()]


def _checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [c for c in folder.iterdir()
            if c.is_dir() and c.name.startswith(_PREFIX) and c.name[len(_PREFIX):].isdigit()]


def _trim_log(path: Path, step: int) -> None:
    """Keep the curve up to the checkpoint's step. A line the crash tore is dropped: it made
    every resume raise until the file was deleted by hand."""
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines()
            if (row := _row(line)) is not None and row.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)


def _row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _normal(value: Any) -> Any:
    """As it reads back from JSON, so a stored fingerprint compares equal to a fresh one."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
