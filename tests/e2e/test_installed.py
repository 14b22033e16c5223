"""The package as pip installs it from the sdist of a clean checkout (not the editable install
the suite runs on), used from that checkout's root, where a `python -m edge_agent` child would
find the source tree's edge_agent/ (which has no compiled modules) before the installed one."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

# The compiled modules, each in the package that owns it (setup.py's EXTENSIONS).
COMPILED = ("protocol/_framing", "shm/_shm", "observe/_metrics", "protocol/_predict",
            "models/_flatverify")


# What a fresh clone does not have: build products, compiled modules, local environments.
BUILD_PRODUCTS = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".hypothesis", "*.so", "_framing.c", "_shm.c", "demo-run", ".mypy_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository as a fresh clone has it."""
    copy = tmp_path_factory.mktemp("clone") / "edge-agent"
    shutil.copytree(ROOT, copy, ignore=BUILD_PRODUCTS)
    return copy


@pytest.fixture(scope="module")
def sdist_source(checkout, tmp_path_factory) -> Path:
    """The source tree of the sdist `setup.py sdist` makes from the checkout, unpacked."""
    if not (checkout / "setup.py").exists():
        pytest.skip("no source tree here (only the installed wheel is under test)")
    tmp = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp / "sdist")],
                   cwd=checkout, check=True, capture_output=True, timeout=600)
    (sdist,) = (tmp / "sdist").glob("edge_agent-*.tar.gz")
    # The "data" filter where this Python has it (3.11.4+), which later ones expect to be named.
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(sdist) as archive:
        archive.extractall(tmp / "unpacked", **safe)
    (source,) = (tmp / "unpacked").iterdir()
    return source


@pytest.fixture(scope="module")
def wheel(sdist_source, tmp_path_factory) -> Path:
    """The wheel pip builds from the sdist alone: the one build of the Cython modules this
    module makes (a build from the checkout itself compiles the same sources again)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp), "."],
                   cwd=sdist_source, check=True, capture_output=True, timeout=600)
    (built,) = tmp.glob("edge_agent-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel (not --editable). Offline: its dependencies
    are the suite's own (a .pth to this interpreter's site-packages, after the venv's own, so
    the venv's edge_agent comes first)."""
    tmp = tmp_path_factory.mktemp("installed")
    target = tmp / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "suite-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    return target / "bin"


@pytest.mark.slow
def test_demo_runs_from_the_repository_root(checkout, installed, tmp_path):
    env = {"PATH": f"{installed}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    where = subprocess.run([installed / "python", "-I", "-c",
                            "import edge_agent.protocol._framing as m; print(m.__file__)"],
                           cwd=checkout, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent), where.stdout
    assert not list((checkout / "edge_agent").glob("*.so")), "the checkout is not clean"
    demo = subprocess.run([installed / "edge-agent", "demo"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "NumPy reference agrees" in demo.stdout
    assert "round trip complete" in demo.stdout


@pytest.mark.slow
def test_cli_runs_from_the_repository_root(checkout, installed, tmp_path):
    result = subprocess.run([installed / "edge-agent", "--version"], cwd=checkout,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (checkout / "edge_agent" / "VERSION").read_text().strip() in result.stdout


@pytest.mark.slow
def test_the_wheel_ships_its_type_information(installed):
    package = subprocess.run([installed / "python", "-I", "-c",
                              "import edge_agent, os; print(os.path.dirname(edge_agent.__file__))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert Path(package).is_relative_to(installed.parent)
    assert Path(package, "py.typed").is_file()  # PEP 561: type checkers read the annotations
    assert Path(package, "agent_pb2.pyi").is_file()
    # Stubs of the compiled modules (`make lint` checks them), in the packages that own them.
    for compiled in COMPILED:
        assert Path(package, f"{compiled}.pyi").is_file()


@pytest.mark.slow
def test_the_sdist_builds_the_same_wheel(sdist_source, wheel):
    """An sdist carries what setup.py compiles from (the Cython sources, their .pxd
    declarations and C headers in cext/includes/, the board profiles), and pip builds the
    wheel from it alone (the wheel the other tests here install)."""
    for name in ("cext/_shm.pyx", "cext/includes/system.pxd", "cext/includes/sigbus_guard.h",
                 "firmware_configs/raspberry-pi-4b.json", "edge_agent/py.typed"):
        assert (sdist_source / name).is_file(), f"the sdist lacks {name}"
    names = zipfile.ZipFile(wheel).namelist()
    for module in COMPILED:
        assert [n for n in names if n.startswith(f"edge_agent/{module}.") and n.endswith(".so")]
    assert "edge_agent/tools/model_builder.py" in names
    assert "edge_agent/firmware_configs/raspberry-pi-4b.json" in names
