"""Sandbox fork server: runs candidate programs and their tests, one forked child per check.

Started once per sandbox worker by `code_sandbox` as `python -I [-S] code_harness.py` (inside
`unshare --user --map-root-user --net --pid --fork` when allowed) with a scrubbed environment.
It is stdlib-only, never imports thinkwheel and never runs candidate code itself: per request
(a length-prefixed JSON frame on stdin) it forks a child, which closes the request pipes,
redirects stdout/stderr to `<dir>/out`, chdirs to `<dir>/work`, sets rlimits, installs the
audit hook and runs the program and tests; the server waits with a wall-clock deadline,
kills the child's process group on overrun, and answers with a JSON frame on stdout. Each
check is a fresh fork of the same clean server, so nothing a candidate does survives it.

Trust model: the pass line `<nonce> <passed> <total> <violations>` is written only after
every test ran, with references captured in `run_check()`'s locals before any candidate code
runs, so `sys.exit`/`os._exit`, a replaced `print`/`type`/`len`/`AssertionError`, a patched
`json` or harness global, or an exception class named "ok" cannot forge it; no frame can be
had (`sys._getframe` always refuses), so neither the nonce nor the tests can be read. An
`assert a == b` (or `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, chained too) in a test compares
plain values only: a candidate's object with a rigged `__eq__` or `__lt__` never agrees with a
plain expected value, and subclasses of builtins are compared as their builtin base; `assert
f(x)` and `assert not f(x)` read a plain value's truth (or a C type's), never a `__bool__`
defined in Python. Each test runs
in its own namespace with the builtins as they were before the candidate ran and without the
candidate's names that shadow them, after the stdlib modules loaded before it (and those its
code and the tests import, loaded first) and their Python classes are put back as they were
(`math.isclose = lambda *a: True` or `Fraction.__eq__ = ...` does not outlive the line that
did it; a module imported by a computed name is not covered). An audit
hook (irremovable once added) refuses process creation, signals to other processes, sockets,
ctypes, frame/gc introspection and writes outside the temp dir; any refusal is recorded and
makes the verdict "unsafe".
"""

import ast
import gc
import io
import json
import operator
import os
import re
import resource
import select
import signal
import struct
import sys
import time

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_DENY_PREFIXES = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn",
                  "os.fork", "os.kill", "os.killpg", "signal.pthread_kill", "pty.", "mmap.")
# not sys._getframemodulename (3.12+): it gives a module's name, no frame, and namedtuple
# calls it catching only AttributeError
_DENY = {"os.system", "os.forkpty", "os.startfile", "sys._current_frames",
         "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
         "sys.setprofile", "resource.setrlimit",
         "resource.prlimit", "os.setuid", "os.setgid", "os.chroot", "socket.__new__"}
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
                "shutil.copyfile", "shutil.move", "os.chdir", "os.replace"}
_FRAME_ATTRS = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"}


class SandboxViolation(PermissionError):
    pass


def _make_guard(root, read_ok, violations, real_abspath, starts):
    def inside(path, allowed):
        try:
            p = real_abspath(path if not isinstance(path, bytes) else path.decode())
        except Exception:
            return False
        return any(starts(p, a) for a in allowed)

    def hook(event, args):
        bad = event in _DENY or event.startswith(_DENY_PREFIXES)
        if event == "open" and args and not isinstance(args[0], int):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
            bad = not inside(args[0], (root,) if writing else read_ok)
        elif event in _PATH_EVENTS and args:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes))]
            bad = not all(inside(p, (root,)) for p in paths)
        elif event == "object.__getattr__" and len(args) > 1 and args[1] in _FRAME_ATTRS:
            bad = True
        elif event == "sys._getframe":
            # Every frame leads (via the unaudited f_back) to run_check's locals: the nonce and
            # the tests. A frame of code compiled under another name (eval) got through a
            # filter on the frame's own file. Refuse with the ValueError stdlib callers
            # (namedtuple, enum, typing, logging) handle, without marking the candidate unsafe.
            raise ValueError("call stack is not deep enough")
        if bad:
            violations.append(event)
            raise SandboxViolation(f"sandbox: {event} is not allowed")

    return hook


def _limits(payload):
    mem = int(payload.get("memory_mb", 1024)) * 1024 * 1024
    cpu = int(payload.get("cpu_s", 10)) + 1
    for res, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu),
                     (resource.RLIMIT_FSIZE, int(payload.get("fsize_mb", 16)) * 1024 * 1024),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(res, (val, val))
        except (ValueError, OSError):
            pass


def _same_output(got, want):
    norm = lambda s: "\n".join(line.rstrip() for line in s.strip().splitlines())  # noqa: E731
    return norm(got) == norm(want)


_STRICT_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in",
               ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_TEST_WRAPPER = "def __tw_test__(__tw_cmp__):\n    pass\n"


def _cmp_call(op, left, right):
    return ast.Call(func=ast.Name(id="__tw_cmp__", ctx=ast.Load()),
                    args=[ast.Constant(op), left, right], keywords=[])


def _lambda(name, body):
    params = ast.arguments(posonlyargs=[], args=[ast.arg(arg=name)], kwonlyargs=[],
                           kw_defaults=[], defaults=[])
    return ast.Lambda(args=params, body=body)


class _StrictCompares(ast.NodeTransformer):
    """`x == y` -> `__tw_cmp__('==', x, y)` (also `!=`, `in`, `not in` and the orderings), at any
    depth; a chain `0 < f(x) < 1` is its links, each operand evaluated once, in order, and the
    rest skipped once a link fails. A chain's middle operand is held by `:=`, or where that is a
    syntax error (a comprehension's iterable: `range(3 if 0 < f(1) < 2 else 0)`) by a lambda's
    parameter."""

    def __init__(self):
        self.held, self.in_iter = 0, 0

    def _name(self):
        self.held += 1
        return f"__tw_held{self.held - 1}__"

    def _comprehension(self, node):
        for gen in node.generators:
            self.in_iter += 1
            gen.iter = self.visit(gen.iter)
            self.in_iter -= 1
            gen.ifs = [self.visit(cond) for cond in gen.ifs]
        for field in ("elt", "key", "value"):
            if hasattr(node, field):
                setattr(node, field, self.visit(getattr(node, field)))
        return node

    visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _comprehension

    def visit_Compare(self, node):
        self.generic_visit(node)
        if any(type(op) not in _STRICT_OPS for op in node.ops):
            return node
        ops = [_STRICT_OPS[type(op)] for op in node.ops]
        if len(ops) > 1 and self.in_iter:
            return ast.copy_location(self._lambda_chain(ops, [node.left, *node.comparators]), node)
        links, left = [], node.left
        for i, (op, right) in enumerate(zip(ops, node.comparators, strict=True)):
            if i < len(ops) - 1:  # the next link's left side: held, not called twice
                name = self._name()
                right = ast.NamedExpr(target=ast.Name(id=name, ctx=ast.Store()), value=right)
                links.append(_cmp_call(op, left, right))
                left = ast.Name(id=name, ctx=ast.Load())
            else:
                links.append(_cmp_call(op, left, right))
        out = links[0] if len(links) == 1 else ast.BoolOp(op=ast.And(), values=links)
        return ast.copy_location(out, node)

    def _lambda_chain(self, ops, operands):
        """`(lambda a: (lambda b: cmp(<, a, b) and cmp(<, b, C))(B))(A)` for `A < B < C`."""

        def link(i, left):
            right = operands[i + 1]
            if i == len(ops) - 1:
                return _cmp_call(ops[i], left, right)
            name = self._name()
            held = ast.Name(id=name, ctx=ast.Load())
            rest = ast.BoolOp(op=ast.And(), values=[_cmp_call(ops[i], left, held), link(i + 1, held)])
            return ast.Call(func=_lambda(name, rest), args=[right], keywords=[])

        first = self._name()
        return ast.Call(func=_lambda(first, link(0, ast.Name(id=first, ctx=ast.Load()))),
                        args=[operands[0]], keywords=[])


def _strict_truth(node):
    """An assert's condition read as plain truth: `assert f(x)` and `assert not f(x)` ask the
    value's truth through `__tw_cmp__`, so an object whose `__bool__` says what the test wants
    is no pass. `and`/`or` go on into their operands; comparisons are strict calls already."""
    if isinstance(node, ast.BoolOp):
        node.values = [_strict_truth(v) for v in node.values]
        return node
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = node.operand  # asked as it is: wrapped first, a rigged value read as False
        if isinstance(inner, ast.BoolOp) or (isinstance(inner, ast.UnaryOp)
                                             and isinstance(inner.op, ast.Not)):
            inner = _strict_truth(inner)
        return ast.copy_location(_cmp_call("falsy", inner, ast.Constant(None)), node)
    if isinstance(node, ast.Constant):
        return node
    return ast.copy_location(_cmp_call("truthy", node, ast.Constant(None)), node)


class _StrictAsserts(ast.NodeTransformer):
    """Inside an assert's condition (`assert f(1) == 2 and f(2) == 3` too), comparisons are
    strict; the rest of a test is untouched."""

    def visit_Assert(self, node):
        node.test = _strict_truth(_StrictCompares().visit(node.test))
        return node


def _compile_test(source, comp):
    """The test as the body of `__tw_test__(__tw_cmp__)`: the comparator is a local of the test's
    own frame, which candidate code (no frame access) cannot reach or replace."""
    body = _StrictAsserts().visit(comp(source, "<test>", "exec", ast.PyCF_ONLY_AST)).body
    wrapper = comp(_TEST_WRAPPER, "<test>", "exec", ast.PyCF_ONLY_AST)
    wrapper.body[0].body = body or [ast.Pass()]
    return comp(ast.fix_missing_locations(wrapper), "<test>", "exec")


def _strict_comparator():
    """Built before candidate code runs; everything it calls is captured in its closure."""
    type_, issub, isinst, opaque = type, issubclass, isinstance, object()
    atoms = frozenset({bool, int, float, complex, str, bytes, type(None)})
    scalars = ((int, int.__int__), (float, float.__float__), (str, str.__str__))
    seqs = ((list, list, list.__iter__), (tuple, tuple, tuple.__iter__),
            (frozenset, frozenset, frozenset.__iter__), (set, set, set.__iter__))
    dict_items, dict_, list_, tuple_, set_, frozenset_ = dict.items, dict, list, tuple, set, frozenset
    bool_, heap_type = bool, 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined in Python
    order = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
             ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}

    def plain(x, depth):
        """x as exact builtin values (subclasses read through their base), or `opaque`."""
        t = type_(x)
        if t in atoms:
            return x
        if depth > 64:
            return opaque
        for base, conv in scalars:
            if issub(t, base):
                return conv(x)
        if issub(t, dict_):
            out = []
            for k, v in dict_items(x):
                k, v = plain(k, depth + 1), plain(v, depth + 1)
                if k is opaque or v is opaque:
                    return opaque
                out.append((k, v))
            return dict_(out)
        for base, make, it in seqs:
            if issub(t, base):
                items = list_()
                for v in it(x):
                    v = plain(v, depth + 1)
                    if v is opaque:
                        return opaque
                    items.append(v)
                return make(items)
        return opaque

    def truth(a, want):
        """Whether a's truth is `want`: a plain value's, or a C type's own (range, a dict
        view, Decimal); a class defined in Python (a candidate's) answers neither way, since
        its `__bool__` is its to rig."""
        pa = plain(a, 0)
        if pa is opaque and type_(a).__flags__ & heap_type:
            return False
        return bool_(a if pa is opaque else pa) is want

    def cmp(op, a, b):
        if op in ("truthy", "falsy"):
            return truth(a, op == "truthy")
        pa, pb = plain(a, 0), plain(b, 0)
        if op in order:  # `abs(f(x) - y) < 1e-6` with a rigged `__sub__`/`__lt__` is not true
            if pa is opaque and pb is opaque:
                return order[op](a, b)
            return pa is not opaque and pb is not opaque and order[op](pa, pb)
        if op in ("==", "!="):
            if pa is opaque and pb is opaque:
                same = a == b  # objects on both sides: their own equality is the test's intent
            else:
                same = pa is not opaque and pb is not opaque and pa == pb
            return same if op == "==" else not same
        if pb is opaque:
            found = a in b
        else:
            found = pa is not opaque and isinst(pb, (str, bytes, dict_, list_, tuple_, set_, frozenset_)) and pa in pb
        return found if op == "in" else not found

    return cmp


_HEAP_TYPE, _IMMUTABLE_TYPE = 1 << 9, 1 << 8  # Py_TPFLAGS_*: a class whose attributes can be set


def _module_restorer(modules, skip):
    """Put back the attributes of the modules loaded now that code run later rebinds (and the
    modules themselves in `sys.modules`), and the attributes of their classes defined in Python
    (`UserList.__eq__ = ...`; C types refuse). A module's attributes added later stay: a lazy
    submodule import (`collections.abc`) adds one legitimately; a class's go (`Template.__eq__`
    added shadows object's). The check is an identity scan in C per module and class (~5k module
    and ~2k class attributes): a Python loop over them cost a quarter of a check's time."""
    saved = [(name, mod, mod.__dict__, dict(mod.__dict__), tuple(mod.__dict__.values()))
             for name, mod in list(modules.items())
             if name not in skip and isinstance(getattr(mod, "__dict__", None), dict)]
    classes = {id(v): v for *_, before, _ in saved for v in before.values()
               if isinstance(v, type) and v.__flags__ & _HEAP_TYPE
               and not v.__flags__ & _IMMUTABLE_TYPE}
    kept = [(cls, cls.__dict__, dict(cls.__dict__), tuple(cls.__dict__.values()))
            for cls in classes.values()]
    items, values, get, len_, any_, map_ = dict.items, dict.values, dict.get, len, any, map
    proxy = type(type.__dict__)
    proxy_values, proxy_get, list_ = proxy.values, proxy.get, list
    set_attr, del_attr = type.__setattr__, type.__delattr__
    is_not, missing = operator.is_not, object()

    def restore():
        for name, mod, now, before, order in saved:
            if get(modules, name) is not mod:
                modules[name] = mod
            if len_(now) == len_(order) and not any_(map_(is_not, values(now), order)):
                continue  # untouched (a rebinding keeps the order, so it shows here)
            for key, value in items(before):
                if get(now, key, missing) is not value:
                    now[key] = value
        for cls, now, before, order in kept:
            if len_(now) == len_(order) and not any_(map_(is_not, proxy_values(now), order)):
                continue
            for key in list_(now):
                if get(before, key, missing) is missing:
                    del_attr(cls, key)
            for key, value in items(before):
                if proxy_get(now, key, missing) is not value:
                    set_attr(cls, key, value)

    return restore


def _load_imports_first(sources, violations):
    """Import what `_imported_first` names, and return the restorer of the modules that added
    (a no-op when none): a module first loaded by the candidate was never snapshotted, so
    `fractions.Fraction = ...` outlived its line. An import the sandbox refuses part of is not
    held against the candidate here (the part did not run, and the candidate may never import
    it); its own import meets the refusal again."""
    before = set(sys.modules)
    for name in _imported_first(sources, sys.stdlib_module_names):
        seen = len(violations)
        try:
            __import__(name)
        except BaseException:
            pass
        del violations[seen:]
    if len(sys.modules) == len(before):
        return lambda: None
    return _module_restorer(sys.modules, before)


# what importing runs besides defining names: not loaded ahead of the candidate's own import
_NO_PRELOAD = frozenset({"antigravity", "this", "__hello__", "__phello__", "idlelib", "turtle",
                         "turtledemo", "tkinter", "ctypes", "socket", "subprocess", "pty", "mmap"})
_IMPORTS = re.compile(r"\bfrom\s+([\w.]+)\s+import\b"
                      r"|\bimport\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)"
                      r"|\b(?:__import__|import_module)\(\s*['\"]([\w.]+)['\"]")


def _imported_first(sources, stdlib):
    """The stdlib modules the candidate and tests import anywhere (in a function too, or by
    `importlib.import_module("name")`): loaded before the candidate runs, so their state can be
    put back before each test like the server's. Read off the text, not the syntax tree (the
    candidate then compiles from source, and no Python-level walk runs per check): a name in a
    string or comment loads one module more, and a module whose name is computed is missed."""
    names = []
    for source in sources:
        for frm, imp, call in _IMPORTS.findall(source):
            names += [frm, call] + [part.split()[0] for part in imp.split(",") if part.strip()]
    return [n for n in dict.fromkeys(names) if n
            if n.partition(".")[0] in stdlib and n.partition(".")[0] not in _NO_PRELOAD]


def run_check(payload, restore_modules):
    """Child side: run one candidate and its tests in this process, then `os._exit`.
    `restore_modules` comes from the server, which took the modules' snapshot once, in a local
    no candidate can reach (a module global it could rewrite)."""
    nonce = payload["nonce"]
    code, tests = payload["code"], payload["tests"]
    per_test = float(payload.get("test_timeout_s", 5.0))
    # everything used after candidate code runs is bound here first: it can rebind builtins,
    # module attributes and this module's globals, not these locals
    write, fmt_int, str_join, exit_now = os.write, int.__format__, str.join, os._exit
    base_exc, sys_exit_exc, timeout_exc = BaseException, SystemExit, TimeoutError
    run, comp, isinst, type_, str_, len_, zip_ = exec, compile, isinstance, type, str, len, zip
    pop, items, decode = dict.pop, dict.items, bytes.decode
    text_io, bytes_io, getvalue = io.TextIOWrapper, io.BytesIO, io.BytesIO.getvalue
    os_open, lseek, dup2, close = os.open, os.lseek, os.dup2, os.close
    rw_create, seek_set, real_timer = os.O_RDWR | os.O_CREAT | os.O_TRUNC, os.SEEK_SET, signal.ITIMER_REAL
    same_output, sys_ = _same_output, sys
    stdin_fd = os.dup(0)  # /dev/null, put back after each stdin test
    out_fd = 1
    _limits(payload)

    def on_alarm(signum, frame):
        raise timeout_exc("test timed out")

    signal.signal(signal.SIGALRM, on_alarm)
    arm = signal.setitimer
    root = os.path.realpath(os.getcwd())
    read_ok = tuple({root, sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr/lib",
                     "/usr/share", "/dev/null", "/dev/urandom", "/etc/localtime"})
    violations = []
    starts = lambda p, a: p == a or p.startswith(a.rstrip("/") + "/")  # noqa: E731
    sys.addaudithook(_make_guard(root, read_ok, violations, os.path.realpath, starts))

    results = []  # (passed, why): a flag set here, never a name the candidate can choose
    builtins_ = __builtins__ if isinstance(__builtins__, dict) else __builtins__.__dict__
    clean_builtins = dict(builtins_)
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    kinds, compiled = [], []
    strict = _strict_comparator()
    for t in tests:  # all before any candidate code runs, so it cannot patch the compiler
        spec = None
        if t.lstrip().startswith("{"):
            try:
                spec = json.loads(t)
            except ValueError:
                spec = None
        kinds.append(spec if isinstance(spec, dict) and "stdout" in spec else None)
        try:
            compiled.append(_compile_test(t, comp) if kinds[-1] is None else None)
        except base_exc as err:
            compiled.append(err)

    try:
        program = comp(code, "<candidate>", "exec")
    except base_exc as err:
        program, results = None, [(False, "syntax: " + type_(err).__name__)] * len_(tests)
    restore_new = _load_imports_first([code, *tests], violations)

    if program is not None and any(k is None for k in kinds):
        try:
            arm(real_timer, per_test)
            run(program, ns)
            arm(real_timer, 0)
        except base_exc as err:
            arm(real_timer, 0)
            program = None
            results = [(False, "load: " + type_(err).__name__)] * len_(tests)

    if program is not None:
        for test_code, spec in zip_(compiled, kinds, strict=True):
            saved = sys_.stdin, sys_.stdout
            try:
                restore_modules()
                restore_new()
                if spec is None:
                    if isinst(test_code, base_exc):
                        raise test_code
                    # the candidate's names, less those that shadow a builtin the test uses
                    # (`abs = lambda v: 0` passed `assert abs(f(x) - y) < 1e-6`)
                    test_ns = {k: v for k, v in items(ns) if k not in clean_builtins}
                    test_ns["__builtins__"] = clean_builtins
                    run(test_code, test_ns)
                    test_fn = pop(test_ns, "__tw_test__")
                    arm(real_timer, per_test)
                    test_fn(strict)
                    arm(real_timer, 0)
                    results.append((True, "ok"))
                else:
                    # real streams, as a judge gives them: `sys.stdin.buffer.read()`,
                    # `open(0).read()` and `sys.stdout.buffer.write` read and write what
                    # `input()` and `print` do (StringIO has no buffer and fd 0 was /dev/null)
                    data = str_(spec.get("stdin", "")).encode()
                    fd = os_open("stdin", rw_create, 0o600)
                    write(fd, data)
                    lseek(fd, 0, seek_set)
                    dup2(fd, 0)
                    close(fd)
                    captured = bytes_io()
                    sys_.stdin = text_io(bytes_io(data), encoding="utf-8")
                    sys_.stdout = text_io(captured, encoding="utf-8", write_through=True)
                    arm(real_timer, per_test)
                    try:
                        run(program, {"__name__": "__main__", "__builtins__": clean_builtins})
                    except sys_exit_exc:
                        pass
                    arm(real_timer, 0)
                    sys_.stdout.flush()
                    got = decode(getvalue(captured), "utf-8", "replace")
                    ok = same_output(got, str_(spec["stdout"])) is True
                    results.append((ok, "ok" if ok else "wrong output"))
            except base_exc as err:
                arm(real_timer, 0)
                results.append((False, type_(err).__name__))
            finally:
                sys_.stdin, sys_.stdout = saved
                dup2(stdin_fd, 0)

    passed, bits = 0, []
    for ok, _ in results:
        bits.append("1" if ok is True else "0")
        if ok is True:
            passed += 1
    line = str_join(" ", [nonce, fmt_int(passed, "d"), fmt_int(len_(tests), "d"),
                          fmt_int(len_(violations), "d"), str_join("", bits) or "-"])
    detail = str_join("|", [str_(why)[:40] for _, why in results])[:2000]
    if violations:
        detail = "unsafe: " + str_join(",", sorted(set(violations)))[:300] + " | " + detail
    try:
        write(out_fd, ("\n" + line + " " + detail + "\n").encode())
    finally:
        exit_now(0)


# Stdlib modules candidates commonly import, loaded once in the server so a check does not
# pay for them (each check still gets its own copy-on-write image of them).
_PRELOAD = ("typing", "math", "collections", "itertools", "functools", "re", "string")


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _recv(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def _send(fd, obj):
    data = json.dumps(obj).encode()
    os.write(fd, struct.pack(">I", len(data)) + data)


def _child(request, proto_fds, restore_modules):
    """In the forked child: cut the server's pipes, redirect output, enter the temp dir."""
    try:
        for fd in proto_fds:
            os.close(fd)
        os.setsid()  # own process group: the server kills the whole group on overrun
        root = request["dir"]
        out = os.open(os.path.join(root, "out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.chdir(os.path.join(root, "work"))
        run_check(request["payload"], restore_modules)
    finally:
        os._exit(70)


def _kill_group(pid):
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait(pid, timeout_s):
    """("ok", exit code) or ("timeout", None). The group is killed before the child is
    reaped: while it is a zombie its pid (= its group id) cannot be reused by anyone else."""
    deadline = time.monotonic() + timeout_s
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    status = "timeout"
    try:
        while True:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                status = "ok"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.002))
    finally:
        if pidfd is not None:
            os.close(pidfd)
    _kill_group(pid)
    _, raw = os.waitpid(pid, 0)
    return status, os.waitstatus_to_exitcode(raw) if status == "ok" else None


def _reap_strays():
    """As pid 1 of our own namespace, kill and reap anything a check left behind."""
    if os.getpid() == 1:  # never outside a pid namespace: kill(-1) would hit the host user
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve():
    """Server loop: one request frame in, one forked check, one response frame out."""
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    for name in _PRELOAD:
        try:
            __import__(name)
        except Exception:
            pass
    restore_modules = _module_restorer(sys.modules, {"sys", "builtins"})
    gc.freeze()  # a collection in a check's child would write to every object: all copied
    _send(wfd, {"ready": True})
    while True:
        request = _recv(rfd)
        if request is None:
            return
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, (rfd, wfd), restore_modules)
        timeout_s = float(request.get("timeout_s", 10.0))
        del request  # the next check's fork should not carry this one's code and tests
        status, code = _wait(pid, timeout_s)
        _reap_strays()
        _send(wfd, {"status": status, "exit": code})


if __name__ == "__main__":
    serve()
