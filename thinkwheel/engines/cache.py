"""On-disk cache of finished samples, keyed by a content hash of the request.

Why: a paid API or a long `vllm serve` run must never pay twice for the same sample, and a
crash must lose nothing that had come back. Every finished sample is appended as one JSON line
with a single `write` on an O_APPEND descriptor, so concurrent writers interleave whole lines
and a crash can at worst leave one torn last line, which `load` skips. `compact` rewrites the
file atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from thinkwheel.engines.base import Completion, SamplingParams

FILE_NAME = "completions.jsonl"


def request_key(
    model: str,
    messages: Sequence[dict[str, str]],
    params: SamplingParams,
    extra: dict[str, Any] | None = None,
) -> str:
    """Hash of everything that decides a sample except `n`: asking for more samples later
    reuses the ones already paid for (samples are cached by index under this key). `extra` is
    the rest of the request body (`engine.extra_body`); left empty, old keys stay valid."""
    blob: dict[str, Any] = {
        "model": model,
        "messages": [dict(m) for m in messages],
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop),
        "seed": params.seed,
    }
    if extra:
        blob["extra"] = extra
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


class RequestCache:
    """Samples by (request key, sample index); loaded once, appended to as results arrive."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILE_NAME
        self._entries: dict[str, dict[int, Completion]] = {}
        self.torn_lines = 0
        self._load()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not _ends_with_newline(self.path):
            os.write(self._fd, b"\n")  # end a torn last line so the next append stays whole

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                    comp = Completion(**rec["completion"])
                    self._entries.setdefault(rec["key"], {})[int(rec["idx"])] = comp
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1  # a line cut short by a crash: that sample re-runs

    def get(self, key: str) -> dict[int, Completion]:
        return dict(self._entries.get(key, {}))

    def put(self, key: str, idx: int, completion: Completion) -> None:
        rec = {"key": key, "idx": idx, "completion": _as_dict(completion)}
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        os.write(self._fd, line)  # one write on O_APPEND: whole lines, never interleaved
        self._entries.setdefault(key, {})[idx] = completion

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def sync(self) -> None:
        os.fsync(self._fd)

    def clear(self) -> None:
        """Forget every sample: the caller has stored them elsewhere (a finished stage)."""
        os.ftruncate(self._fd, 0)
        self._entries.clear()

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

    def compact(self) -> None:
        """Rewrite without torn or superseded lines, atomically."""
        tmp = self.path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for rec in _records(self._entries):
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.torn_lines = 0

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_dict(c: Completion) -> dict[str, Any]:
    return {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "n_tokens": c.n_tokens,
        "meta": c.meta,
    }


def _records(entries: dict[str, dict[int, Completion]]) -> Iterable[dict[str, Any]]:
    for key, samples in entries.items():
        for idx, comp in sorted(samples.items()):
            yield {"key": key, "idx": idx, "completion": _as_dict(comp)}


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return True
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
