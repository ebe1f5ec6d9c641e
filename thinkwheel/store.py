"""The run directory: atomic parquet writes, the manifest, and resume.

Layout (DESIGN.md): runs/<name>/{config.yaml, manifest.json, report.html,
round-<k>/{tasks,candidates,verdicts,filtered}.parquet, curated/, model/, eval.json}.

Every write goes to a temp file in the same directory and is renamed into place, and the
manifest records a stage only after its data is on disk, so a SIGKILL at any instant leaves
either the old state or the new one. A stage is "done" when the manifest says so *with the
same input and config hashes* and its outputs exist; anything else re-runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from thinkwheel import __version__, records
from thinkwheel.config import RunConfig

TABLES = ("tasks", "candidates", "verdicts", "filtered")

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def shareable(path: str | Path) -> None:
    """Give a file (or folder) the permissions a plain write would have under the umask: temp
    files are made 0600 (and temp folders 0700), so a renamed-into-place report, manifest or
    model was unreadable to teammates and web servers."""
    mode = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, mode & ~_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_parquet(path: Path, df: pl.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.write_parquet(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: Path):
    """Yield a temp directory beside `path`; on success it replaces `path` whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    shareable(tmp)
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ids_hash(values: Iterable[Any]) -> str:
    """Order-free hash of a set of ids: the identity of a stage's input."""
    h = hashlib.sha256()
    for v in sorted(str(x) for x in values):
        h.update(v.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def frame_hash(df: pl.DataFrame) -> str:
    """Hash of a table's content, row order included: the identity of the data a trainer sees,
    which ids alone miss (the same samples under a new system prompt are new training data)."""
    return hashlib.sha256(df.write_ndjson().encode()).hexdigest()[:16]


def eval_paths(key: int | str) -> tuple[str, str]:
    """Where a round's (or, for "base", the base model's) eval.json and held-out answers live
    in a run directory."""
    stem = f"round-{key}/eval" if key != "base" else "eval-base"
    return f"{stem}.json", answers_path(f"{stem}.json")


def answers_path(eval_json: str | Path) -> str:
    """The held-out answers beside an eval.json: `eval.json` -> `eval-answers.parquet`."""
    p = Path(eval_json)
    return str(p.with_name(f"{p.stem}-answers.parquet"))


def jsonl_has_rows(path: str | Path) -> bool:
    with open(path, encoding="utf-8") as f:
        return any(line.strip() for line in f)


def read_jsonl(path: str | Path, **kw: Any) -> pl.DataFrame:
    """A JSONL file as a frame; an empty one is a ValueError saying so (polars cannot infer the
    columns of no rows, and said it as a ComputeError that reached users as a traceback)."""
    if not jsonl_has_rows(path):
        raise ValueError(f"{path}: no rows")
    return pl.read_ndjson(path, **kw)


def file_stamps(path: str | Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of a file, or of every file under a folder: what tells a changed
    model folder or task file from the one seen before, without reading it."""
    p = Path(path).expanduser()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [(str(f.relative_to(p)) if p.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in files]


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# what a trainer leaves in a model folder beside the model: records of the training, which
# differ between two runs that made the same weights
_NOT_MODEL = frozenset({"train_metrics.json", "trainer_state.json", "training_args.bin"})


def _whole(path: Path) -> bool:
    """Whether a stage output is whole: a parquet file ends in its footer's magic bytes. Ours
    are written atomically, but a copy cut short (a full disk, a sync) read as a done stage
    and failed later with a bare polars error naming no file; now the stage is redone."""
    if path.suffix != ".parquet" or not path.is_file():
        return True
    try:
        with path.open("rb") as f:
            f.seek(-4, os.SEEK_END)
            return f.read(4) == b"PAR1"
    except OSError:  # shorter than 4 bytes
        return False


def model_hash(model_dir: str | Path) -> str:
    """Identity of a model folder: every file that shapes what it generates (weights in any
    format, config, generation config with its stop ids, tokenizer, chat template), not its
    path. A name that is no local folder (a served model) is its own identity."""
    d = Path(model_dir)
    files = sorted(
        f for f in (d.iterdir() if d.is_dir() else ())
        if f.is_file() and not f.name.startswith(".") and f.name not in _NOT_MODEL
        and f.suffix not in (".md", ".jsonl")
    )
    if not files:
        return records.content_id("model", str(d))
    # a round reads the same weights in its train, eval and next round's sample keys: hashed
    # once per process while the files are unchanged (gigabytes for a large model). Files
    # written in the last seconds are not trusted by their stamps (git's "racy clean"): a
    # rewrite of the same size within one timestamp tick would look unchanged
    stats = [f.stat() for f in files]
    stamps = (str(d.resolve()), tuple((f.name, s.st_size, s.st_mtime_ns)
                                      for f, s in zip(files, stats, strict=True)))
    if stamps in _MODEL_HASHES:
        return _MODEL_HASHES[stamps]
    digest = records.content_id("model", [(f.name, file_hash(f)) for f in files])
    if time.time() - max(s.st_mtime for s in stats) > 2.0:
        _MODEL_HASHES[stamps] = digest
    return digest


_MODEL_HASHES: dict[tuple, str] = {}


def path_hash(path: str | Path) -> str:
    """Content hash of a file, or of every file under a folder: the identity of a benchmark or
    a template named by path (editing it in place, or a relative path read from another
    folder, is new input). A missing path hashes as its name; the stage that reads it fails."""
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return records.content_id([(str(f.relative_to(p)), file_hash(f)) for f in files])
    return file_hash(p) if p.is_file() else records.content_id("missing", str(path))


LOCK = "run.lock"


class RunInUse(RuntimeError):
    """Another process is running the flywheel in this directory."""


@contextmanager
def run_lock(root: str | Path) -> Iterator[None]:
    """Hold the run directory for one run at a time. Two runs of one directory (the same
    command in a second terminal) wrote the same shards and manifest under each other. The
    lock is the kernel's (flock): a killed run leaves none behind."""
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunInUse(f"{root} is being run by {holder}: wait for it to finish, or use another "
                       "--out") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, and says nothing once unlocked


def running(root: str | Path) -> str | None:
    """Who is running the flywheel in `root` ("pid 123 since 14:02"), or None: what `inspect`
    shows of a run in progress can be the previous run's."""
    import fcntl

    path = Path(root) / LOCK
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)
    return None


class RunStore:
    """One run directory. Thread-safe manifest updates; all writes atomic."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    # ------------------------------------------------------------ set-up
    @classmethod
    def create(cls, root: str | Path, cfg: RunConfig) -> RunStore:
        store = cls(root)
        store.root.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        cfg_path = store.root / "config.yaml"
        if not cfg_path.exists() or cfg_path.read_text() != text:
            atomic_write_text(cfg_path, text)
        if not store.manifest_path.exists():
            store._write_manifest({"name": cfg.name, "created": time.time(), "rounds": {}})
        return store

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def round_dir(self, k: int) -> Path:
        return self.root / f"round-{k}"

    def config(self) -> RunConfig:
        from thinkwheel.config import load_config

        return load_config(self.root / "config.yaml")

    # ------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"rounds": {}}
        return json.loads(self.manifest_path.read_text())

    def _write_manifest(self, m: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(m, indent=2, sort_keys=True))

    def _update(self, fn) -> None:
        with self._lock:
            m = self.manifest()
            fn(m)
            self._write_manifest(m)

    def stage_entry(self, k: int | str, stage: str) -> dict[str, Any] | None:
        return self.manifest()["rounds"].get(str(k), {}).get("stages", {}).get(stage)

    def stage_done(self, k: int | str, stage: str, input_hash: str, config_hash: str) -> bool:
        e = self.stage_entry(k, stage)
        return bool(
            e
            and e.get("status") == "done"
            and e.get("input_hash") == input_hash
            and e.get("config_hash") == config_hash
            and all(self._output_exists(p) for p in e.get("outputs", []))
        )

    def _relative(self, p: str | Path) -> str:
        """An output's path inside the run directory, however the directory was named
        (`--out runs/x` is relative to the working directory, the manifest must not be)."""
        try:
            return str(Path(p).resolve().relative_to(self.root.resolve()))
        except ValueError:  # outside the run directory: kept as given
            return str(p)

    def _output_exists(self, p: str) -> bool:
        if (self.root / p).exists():
            return _whole(self.root / p)
        # manifests written before outputs were made root-relative hold `runs/x/round-0/...`,
        # relative to the working directory the run was started from
        q = Path(p)
        return q.exists() and q.resolve().is_relative_to(self.root.resolve()) and _whole(q)

    def mark_stage(
        self,
        k: int,
        stage: str,
        *,
        status: str = "done",
        input_hash: str = "",
        config_hash: str = "",
        count: int | None = None,
        seconds: float | None = None,
        outputs: Iterable[str | Path] = (),
        **extra: Any,
    ) -> None:
        """Record a stage; call only after its outputs are on disk."""
        outs = [self._relative(p) for p in outputs]

        def fn(m: dict[str, Any]) -> None:
            r = m["rounds"].setdefault(str(k), {"stages": {}})
            r["stages"][stage] = {
                "status": status,
                "input_hash": input_hash,
                "config_hash": config_hash,
                "count": count,
                "seconds": None if seconds is None else round(seconds, 3),
                "outputs": outs,
                "finished_at": time.time(),
                "version": __version__,
                **extra,
            }

        self._update(fn)

    def forget_stages(self, k: int, stage: str) -> None:
        """Drop the record of `stage` and its sub-stages (`train`, `train.sft`, ...) in round k."""
        def fn(m: dict[str, Any]) -> None:
            stages = m["rounds"].get(str(k), {}).get("stages", {})
            for name in [n for n in stages if n == stage or n.startswith(stage + ".")]:
                del stages[name]

        self._update(fn)

    def stale_versions(self) -> dict[str, list[str]]:
        """{version: ["round-0/tasks", ...]} for finished stages made by another thinkwheel
        version ("unknown" before versions were recorded). Stage hashes see inputs and config,
        not code, so a resumed run reuses them as they are; the flow says so."""
        out: dict[str, list[str]] = {}
        for k, r in sorted(self.manifest().get("rounds", {}).items()):
            for stage, e in r.get("stages", {}).items():
                v = e.get("version", "unknown")
                if e.get("status") == "done" and v != __version__:
                    out.setdefault(v, []).append(f"{k if k == 'base' else f'round-{k}'}/{stage}")
        return out

    def set_run_info(self, **info: Any) -> None:
        self._update(lambda m: m.update(info))

    # ------------------------------------------------------------ tables
    def table_path(self, k: int, name: str) -> Path:
        return self.round_dir(k) / f"{name}.parquet"

    def write_table(self, k: int, name: str, df: pl.DataFrame) -> Path:
        p = self.table_path(k, name)
        atomic_write_parquet(p, df)
        return p

    def read_table(self, k: int, name: str) -> pl.DataFrame | None:
        p = self.table_path(k, name)
        return pl.read_parquet(p) if p.exists() else None

    def rounds(self) -> list[int]:
        """The rounds on disk that the run's config has: after a re-run with fewer `rounds`, the
        later rounds' folders are an earlier run's, and inspect and the report leave them out."""
        # a copy such as `round-0-backup` is no round (int() of its name raised in inspect)
        ks = sorted(int(m.group(1)) for p in self.root.glob("round-*")
                    if p.is_dir() and (m := re.fullmatch(r"round-(\d+)", p.name)))
        cfg_path = self.root / "config.yaml"
        n = (yaml.safe_load(cfg_path.read_text()) or {}).get("rounds") if cfg_path.is_file() else None
        return [k for k in ks if not isinstance(n, int) or k < n]

    def load_round(self, k: int) -> dict[str, pl.DataFrame]:
        out = {}
        for name in TABLES:
            df = self.read_table(k, name)
            if df is not None:
                out[name] = df
        return out

    def write_parquet(self, rel: str | Path, df: pl.DataFrame) -> Path:
        p = self.root / rel
        atomic_write_parquet(p, df)
        return p

    def read_parquet(self, rel: str | Path) -> pl.DataFrame | None:
        p = self.root / rel
        return pl.read_parquet(p) if p.exists() else None

    def eval_answers(self, rounds: Iterable[int], base_key: int) -> dict[int, pl.DataFrame]:
        """The held-out answers stored for the base model (under `base_key`) and `rounds`."""
        keys = {base_key: "base", **{k: k for k in rounds}}
        return {k: df for k, key in keys.items()
                if (df := self.read_parquet(eval_paths(key)[1])) is not None}

    def write_json(self, rel: str | Path, obj: Any) -> Path:
        p = self.root / rel
        atomic_write_text(p, json.dumps(obj, indent=2, sort_keys=True))
        return p

    def read_json(self, rel: str | Path) -> Any | None:
        p = self.root / rel
        return json.loads(p.read_text()) if p.exists() else None

    # ------------------------------------------------------------ shards
    def shard_dir(self, k: int, stage: str, key: str) -> Path:
        """Shards live under a key (input + config hash): a changed config never reuses them."""
        return self.round_dir(k) / "shards" / stage / key

    def write_shard(self, k: int, stage: str, key: str, index: int, df: pl.DataFrame) -> Path:
        p = self.shard_dir(k, stage, key) / f"shard-{index:05d}.parquet"
        atomic_write_parquet(p, df)
        return p

    def done_shards(self, k: int, stage: str, key: str) -> set[int]:
        d = self.shard_dir(k, stage, key)
        return {int(p.stem.split("-")[1]) for p in d.glob("shard-*.parquet")}

    def drop_shards(self, k: int, stage: str) -> None:
        """Once a stage's output is stored and recorded its shards are a second copy (several
        times the output's size, as many small files); shards under other keys are from
        settings this run has replaced."""
        shutil.rmtree(self.round_dir(k) / "shards" / stage, ignore_errors=True)
        with contextlib.suppress(OSError):  # the last stage's: no empty folder left behind
            (self.round_dir(k) / "shards").rmdir()

    def read_shards(self, k: int, stage: str, key: str) -> pl.DataFrame:
        files = sorted(self.shard_dir(k, stage, key).glob("shard-*.parquet"))
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()
