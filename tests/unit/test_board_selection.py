"""The emulated boards' selection (the Makefile's QEMU_*_TESTS) names test files that exist: a
test file moved or renamed without its entry would make the board's pytest stop on a missing
path, after the long build of its root file system."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[2] / "Makefile"


def selection(name: str) -> list[str]:
    """The words of one `NAME := ...` assignment, over its continued lines."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    match = re.search(rf"^{name} :=(.*)$", text, re.M)
    assert match, f"the Makefile has no {name}"
    return match.group(1).split()


@pytest.mark.skipif(not MAKEFILE.is_file(), reason="no source tree here (a board runs tests/ only)")
@pytest.mark.parametrize("name, directory", [("QEMU_UNIT_TESTS", "unit"),
                                             ("QEMU_INTEGRATION_TESTS", "integration"),
                                             ("QEMU_E2E_TESTS", "e2e")])
def test_every_test_the_boards_run_exists(name, directory):
    tests = MAKEFILE.parent / "tests" / directory
    missing = [stem for stem in selection(name) if not (tests / f"test_{stem}.py").is_file()]
    assert not missing, f"{name} names tests/{directory}/test_<name>.py files that do not exist: {missing}"


@pytest.mark.skipif(not MAKEFILE.is_file(), reason="no source tree here (a board runs tests/ only)")
def test_every_test_the_boards_skip_or_deselect_exists():
    """The emulated boards' skips (cross/qemu_plugin.py) and deselections (the Makefile) name
    tests by node id; a moved test would quietly run where it is known to fail."""
    root = MAKEFILE.parent
    text = (root / "cross" / "qemu_plugin.py").read_text() + MAKEFILE.read_text()
    # Node ids may be split over two adjacent string literals: join them first.
    text = re.sub(r'"\s*\n\s*"', "", text)
    nodeids = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", text))
    assert nodeids
    missing = [f"{path}::{name}" for path, name in sorted(nodeids)
               if not (root / path).is_file()
               or not re.search(rf"def {name}\b", (root / path).read_text())]
    assert not missing, f"skipped or deselected on the boards, but not found: {missing}"
