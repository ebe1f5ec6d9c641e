"""Find verifiers by name: built-ins, the `thinkwheel.verifiers` entry-point group, and
`"module:callable"` strings. Plugins are wrapped so that one that raises gives a
`passed=None, reason="verifier_error"` verdict instead of crashing the run.

A plugin may be a Verifier class/factory, a Verifier instance, or a plain function
`(completion: str, task: dict) -> bool | float | Verdict | None`; a float is a score in
[0, 1] and counts as passed only at 1.0.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from importlib.metadata import entry_points
from typing import Any

from thinkwheel.verifiers.base import (
    _REGISTRY,
    Candidate,
    Task,
    Verdict,
    Verifier,
    completion_text,
    error_verdict,
)

GROUP = "thinkwheel.verifiers"
_BUILTINS = ("thinkwheel.verifiers.math", "thinkwheel.verifiers.code",
             "thinkwheel.verifiers.think_format")


def _load_builtins() -> None:
    for mod in _BUILTINS:
        importlib.import_module(mod)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def as_verdict(value: Any) -> Verdict:
    """Coerce a plugin's return value into a Verdict. A score outside [0, 1] (or NaN) is an
    error, not a verdict: it became a GRPO reward as it was, and NaN broke the summary's JSON."""
    if isinstance(value, Verdict):
        return _in_range(value)
    if value is None:
        return Verdict(None, 0.0, "verifier_error", "plugin returned None")
    if callable(getattr(value, "item", None)) and getattr(value, "shape", None) == ():
        value = value.item()  # a numpy / torch scalar (np.isclose gives np.bool_), as Python's
    if isinstance(value, bool):
        return Verdict(value, float(value), "ok" if value else "wrong_answer")
    if isinstance(value, (int, float)):
        score = float(value)
        return _in_range(Verdict(score >= 1.0, score, "ok" if score >= 1.0 else "wrong_answer"))
    raise TypeError(f"a verifier returned {type(value).__name__}, not bool/float/Verdict")


def _in_range(v: Verdict) -> Verdict:
    if not 0.0 <= v.score <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"a verifier returned score {v.score}; a score is in [0, 1]")
    return v


def _timed(v: Verdict, seconds: float) -> Verdict:
    """A plugin's verdict with the time it took, unless it says: every plugin verdict read 0 s."""
    return v if v.seconds else replace(v, seconds=seconds)


class FunctionVerifier:
    """Wraps a plain `(completion, task) -> bool | float | Verdict` function."""

    def __init__(self, fn: Callable[[str, Task], Any], name: str) -> None:
        self.fn, self.name = fn, name

    def verify(self, candidate: Candidate, task: Task) -> Verdict:
        return as_verdict(self.fn(completion_text(candidate), task))

    def verify_batch(self, candidates: Sequence[Candidate], tasks: Sequence[Task]) -> list[Verdict]:
        return [self.verify(c, t) for c, t in zip(candidates, tasks, strict=True)]


class SafeVerifier:
    """Never raises: an exception becomes a None verdict carrying the error."""

    def __init__(self, inner: Verifier) -> None:
        self.inner, self.name = inner, getattr(inner, "name", type(inner).__name__)

    def verify(self, candidate: Candidate, task: Task) -> Verdict:
        start = time.perf_counter()
        try:
            return _timed(as_verdict(self.inner.verify(candidate, task)), time.perf_counter() - start)
        except (Exception, SystemExit) as err:  # a plugin's sys.exit() ended `verify` silently
            return error_verdict(err, time.perf_counter() - start)

    def verify_batch(self, candidates: Sequence[Candidate], tasks: Sequence[Task]) -> list[Verdict]:
        start = time.perf_counter()
        try:
            batch = getattr(self.inner, "verify_batch", None)
            if batch is not None:
                out = [as_verdict(v) for v in batch(candidates, tasks)]
                if len(out) == len(candidates):
                    each = (time.perf_counter() - start) / max(len(out), 1)
                    return [_timed(v, each) for v in out]
        except (Exception, SystemExit):
            pass  # retry one by one so one bad item does not sink its neighbours
        return [self.verify(c, t) for c, t in zip(candidates, tasks, strict=True)]


def _required_positional(obj: Any) -> int:
    try:
        return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                   for p in inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return -1


def _is_plain_function(obj: Any) -> bool:
    if inspect.isclass(obj) or not callable(obj):
        return False
    return _required_positional(obj) == 2


def _build(obj: Any, name: str, opts: dict[str, Any]) -> Verifier:
    if hasattr(obj, "verify") and not inspect.isclass(obj):
        return obj  # already an instance
    if _is_plain_function(obj):
        return FunctionVerifier(obj, name)
    if inspect.isfunction(obj) and (n := _required_positional(obj)) > 2:
        # called as a factory, it failed on every row with "missing 3 required arguments"
        raise TypeError(f"{name}: a verifier function takes (completion, task) and reads extra "
                        f"fields from task['meta']; this one requires {n} arguments")
    try:
        sig = inspect.signature(obj)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            opts = {k: v for k, v in opts.items() if k in sig.parameters}
    except (TypeError, ValueError):
        pass
    made = obj(**opts)
    if not hasattr(made, "verify"):
        if callable(made):
            return FunctionVerifier(made, name)
        raise TypeError(f"{name}: factory returned {type(made).__name__}, which has no verify()")
    return made


class UnknownVerifierError(KeyError):
    """A verifier name or "module:callable" spec that resolves to nothing."""

    def __str__(self) -> str:  # KeyError's default repr-quotes the message
        return str(self.args[0]) if self.args else ""


def _import_user_module(mod: str) -> Any:
    """Import a plugin's module; one beside the user (`mychecks.py` in the working directory)
    is found too. The `thinkwheel` console script puts its own folder, not the working
    directory, on `sys.path`, so `verifier: "mychecks:fn"` failed unless run as `python -m`.
    The directory goes last, so it never shadows an installed package."""
    if mod.endswith(".py"):  # "./mychecks.py:fn": the file itself
        return _import_file(mod)
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        top = mod.split(".")[0]
        if err.name != top or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(mod)


def _import_file(path: str) -> Any:
    """A plugin given as a file path, imported under its stem (once: the path is the key)."""
    import importlib.util

    file = os.path.realpath(os.path.expanduser(path))
    if not os.path.isfile(file):
        raise ModuleNotFoundError(f"no such file: {path}", name=path)
    name = f"thinkwheel_plugin_{hashlib.sha256(file.encode()).hexdigest()[:8]}_" + \
        os.path.splitext(os.path.basename(file))[0]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # before running it: dataclasses and pickling look it up
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_error(spec: str, mod: str, err: BaseException) -> UnknownVerifierError:
    """One line for a plugin that cannot be imported: missing, or broken (a SyntaxError, an
    exception at import), which reached users as a traceback."""
    if isinstance(err, ModuleNotFoundError) and err.name in (mod, mod.split(".")[0]):
        where = "" if mod.endswith(".py") else " (looked in the working directory and on PYTHONPATH)"
        return UnknownVerifierError(f"{spec}: cannot import {mod!r} ({err}){where}")
    return UnknownVerifierError(f"{spec}: importing {mod!r} failed: {type(err).__name__}: {err}")


def _resolve_spec(spec: str) -> Any:
    mod, _, attr = spec.rpartition(":")
    if not mod or not attr:
        raise UnknownVerifierError(f"verifier {spec!r}: expected 'module:callable'")
    try:
        obj: Any = _import_user_module(mod)
    except (Exception, SystemExit) as err:
        raise _import_error(f"verifier {spec!r}", mod, err) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UnknownVerifierError(f"verifier {spec!r}: {mod!r} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


# plugin modules named without a callable ("mychecks"), imported for their @register calls
_MODULES: dict[str, Any] = {}


def _load_module(spec: str) -> None:
    if spec in _MODULES:
        return
    try:
        _MODULES[spec] = _import_user_module(spec)
    except (Exception, SystemExit) as err:
        raise _import_error(f"plugin module {spec!r}", spec, err) from err


def load_plugins(specs: Sequence[str]) -> list[str]:
    """Register each "module:callable" spec under its spec string, and import each bare
    "module" so the `@register("name")` calls in it run (a verifier a task file names by its
    registered name works in every command, not only after something imported its module);
    returns the specs."""
    names = []
    for spec in specs:
        if ":" not in spec:
            _load_module(spec)
        elif spec not in _REGISTRY:
            _REGISTRY[spec] = (_resolve_spec(spec), "module:callable")
        names.append(spec)
    return names


def resolve(name_or_spec: str) -> tuple[Any, str]:
    """(factory, origin) of a registry name, entry-point name or "module:callable" string,
    without building it; `UnknownVerifierError` names the known ones. Lets a run check every
    verifier its tasks name before it starts, not after sampling."""
    _load_builtins()
    if name_or_spec not in _REGISTRY:
        eps = _entry_points()
        if name_or_spec in eps:
            _REGISTRY[name_or_spec] = (eps[name_or_spec].load(), f"entry-point:{eps[name_or_spec].value}")
        elif ":" in name_or_spec:
            load_plugins([name_or_spec])
        else:
            known = ", ".join(n for n, _ in list_verifiers())
            raise UnknownVerifierError(f"unknown verifier {name_or_spec!r}; known: {known}")
    return _REGISTRY[name_or_spec]


def get_verifier(name_or_spec: str, **opts: Any) -> Verifier:
    """A verifier by registry name, entry-point name or "module:callable" string.

    `opts` go to the factory (unknown keys are dropped for factories that do not take them).
    Anything not built in is wrapped in SafeVerifier. `plugins` (from a run's
    `verify.options()`) are loaded first.
    """
    load_plugins(opts.pop("plugins", ()))
    factory, origin = resolve(name_or_spec)
    verifier = _build(factory, name_or_spec, dict(opts))
    return verifier if origin == "builtin" else SafeVerifier(verifier)


def list_verifiers() -> list[tuple[str, str]]:
    """(name, origin) of every verifier: builtin, entry-point:<target>, module:callable, or a
    custom origin given to `register`."""
    _load_builtins()
    rows = {name: origin for name, (_, origin) in _REGISTRY.items()}
    for name, ep in _entry_points().items():
        rows.setdefault(name, f"entry-point:{ep.value}")
    return sorted(rows.items())


def code_fingerprint(names: Iterable[str | None]) -> dict[str, str]:
    """{name: hash of the source its callable is defined in} for each verifier that is not
    built in (built-ins change with thinkwheel's version, which the manifest records). Stage
    keys hold it, so a fixed plugin re-verifies instead of leaving the old verdicts in place.
    The source is the plugin's file and the files of the user modules it imports (its helpers
    beside it: a fix there re-verifies too), not installed packages."""
    out: dict[str, str] = {}
    for name in sorted({n for n in names if n}):
        if ":" not in name and name in _MODULES:  # a plugin module: its own file
            target: Any = _MODULES[name]
            origin = f"module:{name}"
        else:
            obj, origin = resolve(name)
            if origin == "builtin":
                continue
            target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
        out[name] = _hash_files(_source_files(target)) or origin
    return out


def user_code_fingerprint(obj: Any) -> str | None:
    """Hash of the user's source a callable (or a verifier object's class) is defined in, with
    its helpers as `code_fingerprint` reads them; None for thinkwheel's own or installed code,
    which the version covers."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    target = obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)
    first = _file_of(target)
    if not first or first.startswith(_library_folders()):
        return None
    return _hash_files(_source_files(target))


def _hash_files(files: list[str]) -> str | None:
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def _library_folders() -> tuple[str, ...]:
    """Where code that is not the user's lives: the interpreter's prefixes and thinkwheel (as
    folders, not name prefixes: /work/venv is not /work/venv2, thinkwheel/ not thinkwheel_x)."""
    installed = [os.path.join(os.path.realpath(p), "")
                 for p in {sys.prefix, sys.base_prefix, sys.exec_prefix}]
    own = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")
    return (*installed, own)


def _file_of(obj: Any) -> str:
    try:
        source = inspect.getsourcefile(obj) or ""
    except TypeError:  # a builtin type or an object without a file
        return ""
    return os.path.realpath(source) if source and os.path.isfile(source) else ""


def _source_files(target: Any) -> list[str]:
    """The file `target` is defined in, then the files of the modules its module uses (imported
    as modules or through names) that are the user's own: not thinkwheel, not installed under
    the interpreter's prefixes."""
    first = _file_of(target)
    if not first:
        return []
    module = target if inspect.ismodule(target) else sys.modules.get(getattr(target, "__module__", ""))
    library = _library_folders()
    helpers = set()
    for value in vars(module).values() if module is not None else ():
        mod_name = getattr(value, "__module__", None)
        used = value if inspect.ismodule(value) else (
            sys.modules.get(mod_name) if isinstance(mod_name, str) else None)
        path = _file_of(used) if used is not None else ""
        if path and path != first and not path.startswith(library):
            helpers.add(path)
    return [first, *sorted(helpers)]
