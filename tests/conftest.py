"""Every test sees the verifier registry as the one before it left it: plugins a test
registers (by @register, a module or a "module:callable" spec) go when it ends, so a test that
lists the known verifiers does not depend on which tests ran first."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _verifier_registry():
    from thinkwheel.verifiers import registry
    from thinkwheel.verifiers.base import _REGISTRY

    registry._load_builtins()
    saved, modules = dict(_REGISTRY), dict(registry._MODULES)
    yield
    _REGISTRY.clear()
    _REGISTRY.update(saved)
    registry._MODULES.clear()
    registry._MODULES.update(modules)
