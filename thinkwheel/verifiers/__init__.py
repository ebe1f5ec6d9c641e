"""Verifiers: sympy math, sandboxed code, <think> format, and plugins.

Importing this package is cheap; sympy and the sandbox load when a verifier is built.
"""

from thinkwheel.verifiers.base import Candidate, Task, Verdict, Verifier, completion_text, register
from thinkwheel.verifiers.batch import verify_frame
from thinkwheel.verifiers.registry import (
    UnknownVerifierError,
    get_verifier,
    list_verifiers,
    load_plugins,
    resolve,
)

__all__ = [
    "Candidate",
    "Task",
    "UnknownVerifierError",
    "Verdict",
    "Verifier",
    "completion_text",
    "get_verifier",
    "list_verifiers",
    "load_plugins",
    "register",
    "resolve",
    "verify_frame",
]
