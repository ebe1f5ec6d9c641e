"""Progress reporting for long stages, decoupled from any UI.

Stages never print; the flow reports through a `Reporter`. The CLI installs a rich one; tests
and library users get the silent default.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Protocol


class Reporter(Protocol):
    def start(self, label: str, total: int | None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...
    def message(self, text: str) -> None: ...


class Silent:
    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def message(self, text: str) -> None:
        pass


class RichReporter:
    """One rich progress bar per stage; messages print above the bars."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        self._task = None

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, label: str, total: int | None) -> None:
        self.finish()
        self._task = self.progress.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self.progress.advance(self._task, n)

    def finish(self) -> None:
        if self._task is not None:
            t = self.progress.tasks[-1]
            if t.total is None:
                self.progress.update(self._task, total=t.completed or 1, completed=t.completed or 1)
            else:
                self.progress.update(self._task, completed=t.total)
            self._task = None

    def message(self, text: str) -> None:
        self.progress.console.print(text)


_current: Reporter = Silent()


def reporter() -> Reporter:
    return _current


@contextmanager
def use_reporter(r: Reporter):
    global _current
    old, _current = _current, r
    try:
        yield r
    finally:
        _current = old
