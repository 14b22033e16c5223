"""Each compiled module's seam takes the pure-Python twin only when the build is absent: a
build that is there but broken or stale (a module missing a name the seam imports) is an
import error naming it, not a silent switch to code several times slower."""
from __future__ import annotations

import sys
from types import ModuleType

import pytest
from seams import COMPILED, fresh_import

TWINNED = {compiled: seam for compiled, seam in COMPILED.items()
           if compiled != "edge_agent.shm._shm"}  # no twin (docs/DEVELOPMENT.md)


@pytest.mark.parametrize("compiled, seam", sorted(TWINNED.items()))
def test_a_missing_build_takes_the_twin(monkeypatch, compiled, seam):
    module = fresh_import(seam, monkeypatch, missing=(compiled,))
    assert module is not None  # imported, on the twin


@pytest.mark.parametrize("compiled, seam", sorted(TWINNED.items()))
def test_a_stale_build_is_an_error_not_the_twin(monkeypatch, compiled, seam):
    stale = ModuleType(compiled)  # there, but without the names the seam imports
    monkeypatch.setitem(sys.modules, compiled, stale)
    with pytest.raises(ImportError, match="cannot import name") as raised:
        fresh_import(seam, monkeypatch)
    assert not isinstance(raised.value, ModuleNotFoundError)
