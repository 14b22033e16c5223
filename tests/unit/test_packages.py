"""Model packages as a library: keys, trust folder, manifest, build, verify, targets, archives."""
from __future__ import annotations

import gzip
import io
import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import package_cases as cases
from fifo_helpers import fifo, returns

from edge_agent.platform import accelerators
from edge_agent.packaging import archive
from edge_agent.packaging import keys
from edge_agent.models import model_files as modelfile
from edge_agent.packaging import packages
from edge_agent.platform import machine as machine_module
from edge_agent.packaging.archive import Limits
from edge_agent.errors import AgentError, StatusCode
from edge_agent.tools import model_builder

LIMITS = Limits(max_bytes=cases.BOMB_LIMIT, max_files=64)


@pytest.fixture
def signer(tmp_path) -> cases.Signer:
    return cases.Signer(tmp_path / "keys")


@contextmanager
def refused(code: StatusCode = StatusCode.FAILED_PRECONDITION):
    """pytest.raises(AgentError) that also checks the status code."""
    with pytest.raises(AgentError) as info:
        yield info
    assert info.value.code == code, info.value


def verify(path: Path, signer: cases.Signer, work_dir: Path, **kwargs) -> packages.VerifiedPackage:
    return packages.open_package(str(path), str(signer.trust), str(work_dir), LIMITS, **kwargs)


# --- keys -----------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_reads_and_a_readable_public_key(tmp_path):
    private, public, ident = keys.generate_key(str(tmp_path / "k"))
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    assert public == private + ".pub"
    signing, verify_key = keys.read_private_key(private), keys.read_public_key(public)
    assert bytes(signing.verify_key) == bytes(verify_key)
    assert keys.key_id(verify_key) == ident and len(ident) == 16
    text = Path(public).read_text()
    assert text.startswith(keys.PUBLIC_HEADER) and f"key-id: {ident}" in text


def test_keygen_refuses_to_overwrite_a_key_unless_forced(tmp_path):
    _, _, first = keys.generate_key(str(tmp_path / "k"))
    with refused() as e:
        keys.generate_key(str(tmp_path / "k"))
    assert "exists" in e.value.message
    assert keys.key_id(keys.read_public_key(str(tmp_path / "k.pub"))) == first
    _, _, second = keys.generate_key(str(tmp_path / "k"), force=True)
    assert second != first


def test_a_private_key_others_may_read_is_refused(tmp_path):
    private, _, _ = keys.generate_key(str(tmp_path / "k"))
    os.chmod(private, 0o640)
    with refused() as e:
        keys.read_private_key(private)
    assert "chmod 600" in e.value.message


@pytest.mark.parametrize("text, reason", [
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI", "first line must be"),
    (f"{keys.PUBLIC_HEADER}\nkey: c2hvcnQ=\n", "32 bytes"),
    (f"{keys.PUBLIC_HEADER}\nkey-id: 0000000000000000\n"
     "key: AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "does not match the key"),
])
def test_malformed_public_key_files_are_refused(tmp_path, text, reason):
    path = tmp_path / "bad.pub"
    path.write_text(text)
    with refused() as e:
        keys.read_public_key(str(path))
    assert reason in e.value.message


# --- the trust folder -----------------------------------------------------------------------

def test_trust_folder_yields_its_keys_by_id_and_accepts_a_single_key_file(signer):
    trusted = keys.load_trust(str(signer.trust))
    assert list(trusted) == [keys.key_id(signer.key.verify_key)]
    assert list(keys.load_trust(str(signer.trust / "signer.pub"))) == list(trusted)


@pytest.mark.parametrize("target, mode", [("folder", 0o775), ("folder", 0o757),
                                          ("file", 0o664), ("file", 0o646)])
def test_a_trust_folder_or_key_others_may_write_is_refused(signer, target, mode):
    path = signer.trust if target == "folder" else signer.trust / "signer.pub"
    os.chmod(path, mode)
    with refused() as e:
        keys.load_trust(str(signer.trust))
    assert "written by group or others" in e.value.message and str(path) in e.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_trust_folder_owned_by_another_user_is_refused(signer):
    os.chown(signer.trust, 12345, -1)
    with refused() as e:
        keys.load_trust(str(signer.trust))
    assert "uid 12345" in e.value.message


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757])
def test_a_trust_folder_under_a_directory_others_may_write_is_refused(tmp_path, mode):
    # Whoever may write the parent can rename the folder away and put their own in its place.
    signer = cases.Signer(tmp_path / "shared" / "keys")
    os.chmod(tmp_path / "shared", mode)
    for path in (signer.trust, signer.trust / "signer.pub"):
        with refused() as e:
            keys.load_trust(str(path))
        assert f"lies under '{tmp_path / 'shared'}'" in e.value.message, e.value.message
        assert "group or others may write" in e.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_trust_folder_under_a_directory_of_another_user_is_refused(tmp_path):
    signer = cases.Signer(tmp_path / "theirs" / "keys")
    os.chown(tmp_path / "theirs", 12345, -1)
    with refused() as e:
        keys.load_trust(str(signer.trust))
    assert "belongs to uid 12345" in e.value.message and "theirs" in e.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_trust_folder_in_a_sticky_directory_must_be_the_agents(tmp_path):
    # Sticky (like /tmp): others may add entries, but only an entry's owner may rename it.
    sticky = tmp_path / "sticky"
    signer = cases.Signer(sticky / "keys")
    os.chmod(sticky, 0o1777)
    assert list(keys.load_trust(str(signer.trust))) == [keys.key_id(signer.key.verify_key)]
    os.chown(signer.trust.parent, 12345, -1)  # a directory on the way that another user owns
    with refused() as e:
        keys.load_trust(str(signer.trust))
    assert "belongs to uid 12345" in e.value.message


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_trust_folder_reached_through_another_users_link_is_refused(signer, tmp_path):
    link = tmp_path / "trust-link"
    link.symlink_to(signer.trust)
    assert list(keys.load_trust(str(link))) == list(keys.load_trust(str(signer.trust)))
    os.chown(link, 12345, -1, follow_symlinks=False)  # its owner could point it elsewhere
    with refused() as e:
        keys.load_trust(str(link))
    assert "belongs to uid 12345" in e.value.message


def test_an_empty_or_unset_trust_folder_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    with refused() as e:
        keys.load_trust(str(empty))
    assert "no public keys" in e.value.message
    with refused() as e:
        keys.load_trust("")
    assert "sagemaker_edge_core_root_certs_path" in e.value.message


# --- targets --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, architecture, accelerator", [
    ("aarch64", "aarch64", "cpu"), ("arm64/edgetpu", "aarch64", "edgetpu"),
    ("armhf", "armv7l", "cpu"), ("armv7l/cpu", "armv7l", "cpu"), ("amd64", "x86_64", "cpu"),
])
def test_targets_are_normalised(text, architecture, accelerator):
    assert packages.Target.parse(text) == packages.Target(architecture, accelerator)


@pytest.mark.parametrize("text", ["mips", "aarch64/tpu9000", ""])
def test_unknown_targets_are_invalid(text):
    with refused(StatusCode.INVALID_ARGUMENT):
        packages.Target.parse(text)


@pytest.mark.parametrize("machine, canonical", [("aarch64", "aarch64"), ("arm64", "aarch64"),
                                                ("armv7l", "armv7l"), ("armv8l", "armv7l"),
                                                ("x86_64", "x86_64"), ("AMD64", "x86_64")])
def test_the_machine_architecture_is_normalised(monkeypatch, machine, canonical):
    monkeypatch.setattr(machine_module.platform, "machine", lambda: machine)
    assert machine_module.machine_architecture() == canonical


def _manifest(target: packages.Target) -> packages.Manifest:
    return packages.Manifest("demo", "1", target, "2025-01-01T00:00:00Z", "m.tflite",
                             {"m.tflite": packages.FileEntry("0" * 64, 1)})


def test_a_manifest_for_another_architecture_is_refused_naming_both(monkeypatch):
    monkeypatch.setattr(machine_module.platform, "machine", lambda: "arm64")
    packages.check_target(_manifest(packages.Target("aarch64")), "p")  # alias of this machine
    with refused() as e:
        packages.check_target(_manifest(packages.Target("x86_64")), "p")
    assert "built for x86_64/cpu" in e.value.message and "this machine is aarch64" in e.value.message


def test_an_edgetpu_target_needs_the_edgetpu_delegate(monkeypatch):
    target = packages.Target(machine_module.machine_architecture(), "edgetpu")
    assert "edgetpu" not in accelerators.available_accelerators()  # no Coral on the test machine
    with refused() as e:
        packages.check_target(_manifest(target), "p")
    assert "edgetpu" in e.value.message and "available: cpu" in e.value.message
    # The check asks the accelerator probe, so a machine with an Edge TPU accepts it.
    monkeypatch.setitem(accelerators.ACCELERATOR_PROBES, "edgetpu", lambda settings: True)
    packages.check_target(_manifest(target), "p")


# --- manifest -------------------------------------------------------------------------------

def test_manifest_bytes_are_canonical_and_parse_back(signer, tmp_path):
    out = signer.package(tmp_path / "pkg")
    data = (out / packages.MANIFEST_NAME).read_bytes()
    manifest = packages.Manifest.from_bytes(data)
    assert manifest.to_bytes() == data
    assert json.loads(data) == json.loads(json.dumps(json.loads(data), sort_keys=True))
    assert manifest.model == "demo.tflite" and set(manifest.files) == {"demo.tflite", "labels.txt"}
    assert manifest.target == packages.Target.host() and manifest.framework == "tflite"
    demo = model_builder.demo_model()
    assert [(t.name, t.type, t.shape) for t in manifest.inputs] == [("features", "FLOAT32", (1, 8))]
    assert [(t.name, t.shape) for t in manifest.outputs] == [("scores", (1, 3))]
    assert manifest.files["demo.tflite"].size == len(demo.content)


@pytest.mark.parametrize("change, reason", [
    ({"format": "edge-agent-package/9"}, "not supported"),
    ({"framework": "onnx"}, "not supported"),
    ({"model": "labels.txt"}, "'model' must name"),
    ({"files": {"../x.tflite": {"sha256": "0" * 64, "size": 1}}}, "not a valid package file name"),
    ({"files": {"manifest.sig": {"sha256": "0" * 64, "size": 1}}}, "not a valid package file name"),
    ({"files": {"demo.tflite": {"sha256": "XYZ", "size": 1}}}, "sha256"),
    ({"version": 3}, "'version' must be a string"),
    ({"inputs": [{"name": "x", "type": "FLOAT32", "shape": ["1"]}]}, "list of integers"),
])
def test_manifest_rule_breaks_are_reported(signer, tmp_path, change, reason):
    obj = json.loads((signer.package(tmp_path / "pkg") / packages.MANIFEST_NAME).read_bytes())
    obj.update(change)
    with pytest.raises(packages.ManifestError, match=reason):
        packages.Manifest.from_bytes(json.dumps(obj).encode())


# --- build and verify -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pkg", "pkg.tar.gz"])
def test_round_trip_returns_exactly_the_model_bytes(signer, tmp_path, name):
    out = signer.package(tmp_path / name)
    work = tmp_path / "work"
    package = verify(out, signer, work)
    assert package.model == model_builder.demo_model().content
    assert package.key_id == keys.key_id(signer.key.verify_key)
    assert package.manifest.name == "demo" and package.manifest.version == "1.0.0"
    assert not work.exists() or not any(work.iterdir())  # an unpacked archive is removed


def test_verification_checks_the_model_size_before_reading_it(signer, tmp_path):
    out = signer.package(tmp_path / "pkg")
    sizes = []
    verify(out, signer, tmp_path / "work", check_size=sizes.append)
    assert sizes == [len(model_builder.demo_model().content)]

    def too_big(size):
        raise AgentError(StatusCode.RESOURCE_EXHAUSTED, "no room")
    with refused(StatusCode.RESOURCE_EXHAUSTED):
        verify(out, signer, tmp_path / "work", check_size=too_big)


def test_build_refuses_an_existing_output_and_a_non_model(signer, tmp_path):
    out = signer.package(tmp_path / "pkg")
    with refused(StatusCode.INVALID_ARGUMENT) as e:
        signer.package(out)
    assert "exists" in e.value.message
    with refused(StatusCode.INVALID_ARGUMENT) as e:
        packages.build_package(b"not a model at all", "x", "1", "x86_64", signer.key_path,
                               str(tmp_path / "other"))
    assert "not a TensorFlow Lite model" in e.value.message


@pytest.mark.parametrize("tamper", sorted(cases.TAMPERING))
@pytest.mark.parametrize("form", ["directory", "archive"])
def test_every_tampering_is_refused(signer, tmp_path, tamper, form):
    directory = signer.package(tmp_path / "pkg")
    reason = cases.TAMPERING[tamper](directory, signer)
    path = directory if form == "directory" else cases.pack(directory, tmp_path / "pkg.tar.gz")
    with refused() as e:
        verify(path, signer, tmp_path / "work")
    assert reason in e.value.message and str(path) in e.value.message


def test_links_in_a_directory_package_are_refused(signer, tmp_path):
    directory = signer.package(tmp_path / "pkg")
    (directory / "labels.txt").unlink()
    (directory / "labels.txt").symlink_to("/etc/passwd")
    with refused() as e:
        verify(directory, signer, tmp_path / "work")
    assert "link or special file" in e.value.message


def test_a_file_that_is_neither_model_nor_package_is_refused(signer, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    assert not packages.is_bare_model(str(path))
    with refused() as e:
        verify(path, signer, tmp_path / "work")
    assert "not a TensorFlow Lite model, nor a model package" in e.value.message


def test_a_package_without_configured_trust_names_the_key_to_set(signer, tmp_path):
    out = signer.package(tmp_path / "pkg")
    with refused() as e:
        packages.open_package(str(out), "", str(tmp_path / "work"), LIMITS)
    assert "sagemaker_edge_core_root_certs_path" in e.value.message


# --- FIFOs and other files that are not regular ---------------------------------------------
# Opening a FIFO for reading waits for a writer: each of these would hang the loading thread
# for ever (and keep the model's name reserved) if it were opened as a plain file.

@pytest.mark.parametrize("follow_symlinks", [True, False])
def test_open_regular_refuses_what_is_not_a_regular_file(tmp_path, follow_symlinks):
    regular = tmp_path / "regular"
    regular.write_bytes(b"data")
    with modelfile.open_regular(str(regular), follow_symlinks=follow_symlinks) as f:
        assert f.read() == b"data"
    with fifo(tmp_path / "fifo") as path, refused() as e:
        returns(lambda: modelfile.open_regular(str(path), follow_symlinks=follow_symlinks))
    assert e.value.message == f"'{path}' is not a regular file (it is a FIFO)"
    with refused() as e:
        modelfile.open_regular(str(tmp_path), name="pkg", follow_symlinks=follow_symlinks)
    assert e.value.message == "'pkg' is not a regular file (it is a directory)"
    (tmp_path / "link").symlink_to(regular)
    if follow_symlinks:
        with modelfile.open_regular(str(tmp_path / "link")) as f:
            assert f.read() == b"data"
    else:
        with refused(StatusCode.INVALID_ARGUMENT) as e:
            modelfile.open_regular(str(tmp_path / "link"), follow_symlinks=False,
                                   refuse=packages.invalid_argument)
        assert "(it is a symbolic link)" in e.value.message


def test_a_fifo_is_neither_a_model_nor_a_package(signer, tmp_path):
    with fifo(tmp_path / "model.tflite") as path:
        for check in (lambda: packages.is_bare_model(str(path)),
                      lambda: verify(path, signer, tmp_path / "work")):
            with refused() as e:
                returns(check)
            assert f"'{path}' is not a regular file (it is a FIFO)" in e.value.message


@pytest.mark.parametrize("name", [packages.SIGNATURE_NAME, packages.MANIFEST_NAME])
def test_a_fifo_in_place_of_the_signature_or_manifest_is_refused(signer, tmp_path, name):
    directory = signer.package(tmp_path / "pkg")
    (directory / name).unlink()
    with fifo(directory / name), refused() as e:
        returns(lambda: verify(directory, signer, tmp_path / "work"))
    assert f"'{name}' is not a regular file (it is a FIFO)" in e.value.message
    assert str(directory) in e.value.message


def test_a_listed_file_swapped_for_a_fifo_after_the_walk_is_refused(signer, tmp_path,
                                                                      monkeypatch):
    directory = signer.package(tmp_path / "pkg")
    (directory / "labels.txt").unlink()
    # As if the FIFO came after the walk that lists the package's files had found a file.
    monkeypatch.setattr(packages, "_check_file_set", lambda directory, manifest, *rest: None)
    with fifo(directory / "labels.txt"), refused() as e:
        returns(lambda: verify(directory, signer, tmp_path / "work"))
    assert "'labels.txt' is not a regular file (it is a FIFO)" in e.value.message


def test_an_archive_swapped_for_a_fifo_after_the_gzip_check_is_refused(signer, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(packages, "is_gzip", lambda path: True)
    work = tmp_path / "work"
    with fifo(tmp_path / "demo.tar.gz") as path, refused() as e:
        returns(lambda: verify(path, signer, work))
    assert "refused" in e.value.message and "is not a regular file (it is a FIFO)" in e.value.message
    assert list(work.iterdir()) == []  # the unpack directory went too


def test_a_fifo_in_the_trust_folder_is_refused(signer, tmp_path):
    with fifo(signer.trust / "fifo.pub") as path, refused() as e:
        returns(lambda: keys.load_trust(str(signer.trust)))
    assert f"'{path}' is not a regular file (it is a FIFO)" in e.value.message


def test_building_from_a_fifo_is_refused(signer, tmp_path):
    with fifo(tmp_path / "labels.txt") as labels, refused(StatusCode.INVALID_ARGUMENT) as e:
        returns(lambda: packages.build_package(
            model_builder.demo_model().content, "demo", "1.0.0", packages.Target.host(),
            signer.key_path, str(tmp_path / "out"), extra_files=[str(labels)]))
    assert "is not a regular file (it is a FIFO)" in e.value.message


# --- hostile archives -----------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(cases.HOSTILE))
def test_hostile_archives_are_refused_and_leave_nothing_behind(signer, tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    members, reason = cases.HOSTILE[case](outside)
    path = cases.pack(signer.package(tmp_path / "pkg"), tmp_path / "hostile.tar.gz", members)
    work = tmp_path / "state" / "packages"
    with refused() as e:
        verify(path, signer, work)
    assert reason in e.value.message
    assert list(work.iterdir()) == []
    assert cases.escaped(tmp_path) == []


@pytest.mark.parametrize("content, reason", [
    (b"\x1f\x8b\x08\x00garbage", "not a valid .tar.gz"),
    (b"", "not a TensorFlow Lite model, nor a model package"),
])
def test_corrupt_archives_are_refused(signer, tmp_path, content, reason):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(content)
    with refused() as e:
        verify(path, signer, tmp_path / "work")
    assert reason in e.value.message


def test_a_truncated_archive_is_refused_and_cleaned_up(signer, tmp_path):
    whole = signer.package(tmp_path / "pkg.tar.gz").read_bytes()
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(whole[: len(whole) // 2])
    work = tmp_path / "work"
    with refused() as e:
        verify(path, signer, work)
    assert "not a valid .tar.gz" in e.value.message
    assert list(work.iterdir()) == []


def test_unpacking_removes_directories_left_by_dead_agents_only(tmp_path):
    work = tmp_path / "packages"
    work.mkdir()
    with open("/proc/sys/kernel/pid_max") as f:
        dead = int(f.read())  # pids stay below pid_max: no process has this one
    stale = work / f"{archive.UNPACK_PREFIX}{dead}-abc"
    live = work / f"{archive.UNPACK_PREFIX}{os.getpid()}-def"
    stale.mkdir()
    live.mkdir()
    archive.remove_stale(str(work))
    assert not stale.exists() and live.exists()


def test_safe_parts():
    assert archive.safe_parts("./a/b.tflite") == ("a", "b.tflite")
    assert archive.safe_parts("./") == ()
    for bad in ("../a", "a/../b", "/etc/passwd", "a//b", ".hidden", "a b", "a\\b"):
        assert archive.safe_parts(bad) is None, bad


def test_the_decompressed_stream_is_bounded_whatever_the_tar_headers_say(tmp_path):
    # Defence in depth under the per-file checks: 16 MiB of zeros is ~16 KiB of gzip.
    bomb = gzip.compress(bytes(16 * cases.BOMB_LIMIT))
    reader = archive._BoundedReader(gzip.GzipFile(fileobj=io.BytesIO(bomb)), cases.BOMB_LIMIT,
                                    lambda reason: AgentError(StatusCode.FAILED_PRECONDITION, reason))
    with refused() as e:
        while reader.read(64 * 1024):
            pass
    assert "edge_agent_max_package_bytes" in e.value.message


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_on_a_terminal_for_large_files_only():
    from edge_agent.packaging.cli import MIB, TerminalProgress

    terminal = _Terminal()
    progress = TerminalProgress(terminal, min_bytes=MIB, interval=0)
    progress("hashing big.tflite", MIB, 2 * MIB)
    progress("hashing big.tflite", 2 * MIB, 2 * MIB)
    progress("hashing small.txt", 10, 10)
    assert "hashing big.tflite:  50%" in terminal.getvalue()
    assert terminal.getvalue().endswith("100% (2.0 of 2.0 MiB)\x1b[K\n")
    assert "small" not in terminal.getvalue()
    piped = io.StringIO()
    TerminalProgress(piped, min_bytes=0)("hashing big.tflite", MIB, MIB)
    assert piped.getvalue() == ""


def test_building_a_large_package_reports_hashing_and_archiving(signer, tmp_path):
    seen = set()
    model = model_builder.fully_connected_model(in_features=64, out_features=64)
    packages.build_package(model.content, "fc", "1", packages.Target.host(), signer.key_path,
                           str(tmp_path / "fc.tar.gz"),
                           progress=lambda what, done, total: seen.add((what, done == total)))
    assert ("hashing fc.tflite", True) in seen and ("archiving fc.tflite", True) in seen


# --- test vectors -----------------------------------------------------------------------------

def _demo_vectors(tmp_path: Path, dtype=np.float32, shape=(1, 8)) -> tuple[str, str]:
    demo = model_builder.demo_model()
    inputs = demo.sample_inputs(seed=1)
    np.save(tmp_path / "x.npy", inputs["features"].astype(dtype).reshape(shape))
    np.save(tmp_path / "y.npy", demo.reference(inputs)["scores"])
    return str(tmp_path / "x.npy"), str(tmp_path / "y.npy")


@pytest.mark.parametrize("name", ["pkg", "pkg.tar.gz"])
def test_test_vectors_are_signed_into_a_format_2_package_and_verified(signer, tmp_path, name):
    x, y = _demo_vectors(tmp_path)
    manifest = packages.build_package(
        model_builder.demo_model().content, "demo", "1.0", packages.Target.host(),
        signer.key_path, str(tmp_path / name), test_inputs=[x], test_outputs=[y], atol=0.5)
    assert manifest.format == packages.FORMAT_VALIDATED == "edge-agent-package/2"
    assert manifest.validation == packages.Validation(("test/input-0.npy",),
                                                      ("test/output-0.npy",), 0.5, None)
    assert manifest.files["test/input-0.npy"].size == os.path.getsize(x)
    package = verify(tmp_path / name, signer, tmp_path / "work")
    assert package.manifest == manifest
    assert package.vectors is not None and package.vectors.atol == 0.5
    assert package.vectors.inputs == (Path(x).read_bytes(),)
    assert package.vectors.outputs == (Path(y).read_bytes(),)
    # Without vectors the format stays 1, which agents that cannot validate still read.
    plain = signer.package(tmp_path / "plain")
    assert verify(plain, signer, tmp_path / "work").vectors is None
    assert json.loads((plain / packages.MANIFEST_NAME).read_bytes())["format"] == packages.FORMAT


@pytest.mark.parametrize("change, reason", [
    (dict(test_outputs=[]), "the model has 1 output(s) (scores): give one --test-output"),
    (dict(dtype=np.float64), "holds float64, but the model's input 'features' is FLOAT32"),
    (dict(shape=(2, 4)), "has shape [2, 4], but the model's input 'features' has shape [1, 8]"),
    (dict(atol=-1.0), "--atol must be a finite number of 0 or more"),
    (dict(test_inputs=["labels"]), "is not a valid .npy file"),
])
def test_building_refuses_test_vectors_that_do_not_fit(signer, tmp_path, change, reason):
    x, y = _demo_vectors(tmp_path, change.pop("dtype", np.float32), change.pop("shape", (1, 8)))
    (tmp_path / "labels").write_bytes(cases.LABELS)
    options = dict(test_inputs=[x], test_outputs=[y])
    options.update(change)
    if options["test_inputs"] == ["labels"]:
        options["test_inputs"] = [str(tmp_path / "labels")]
    with refused(StatusCode.INVALID_ARGUMENT) as e:
        packages.build_package(model_builder.demo_model().content, "demo", "1",
                               packages.Target.host(), signer.key_path, str(tmp_path / "out"),
                               **options)
    assert reason in e.value.message
    assert not (tmp_path / "out").exists()


def test_building_refuses_a_tolerance_without_vectors_and_a_version_that_does_not_parse(
        signer, tmp_path):
    with refused(StatusCode.INVALID_ARGUMENT) as e:
        packages.build_package(model_builder.demo_model().content, "demo", "1",
                               packages.Target.host(), signer.key_path, str(tmp_path / "out"),
                               rtol=0.1)
    assert "needs test vectors" in e.value.message
    with refused(StatusCode.INVALID_ARGUMENT) as e:
        packages.build_package(model_builder.demo_model().content, "demo", "1.0-",
                               packages.Target.host(), signer.key_path, str(tmp_path / "out"))
    assert "the package version does not parse" in e.value.message


def test_a_package_with_a_free_form_version_still_verifies(signer, tmp_path):
    """Signed before versions were checked: an application may still load it (the model
    repository refuses it)."""
    path = signer.package(tmp_path / "pkg")
    cases.resign_manifest(path, signer.key, lambda m: m.update(version="2024-summer"))
    assert verify(path, signer, tmp_path / "work").manifest.version == "2024-summer"


@pytest.mark.parametrize("change, reason", [
    ({"validation": {"inputs": ["demo.tflite"], "outputs": []}}, "must be a .npy file"),
    ({"validation": {"inputs": [], "outputs": []}}, "validation lists 0 inputs; the model has 1"),
    ({"validation": {"inputs": ["labels.txt"], "outputs": []}}, "must be a .npy file"),
])
def test_validation_rule_breaks_are_reported(signer, tmp_path, change, reason):
    obj = json.loads((signer.package(tmp_path / "pkg") / packages.MANIFEST_NAME).read_bytes())
    obj.update(change, format=packages.FORMAT_VALIDATED)
    with pytest.raises(packages.ManifestError, match=reason):
        packages.Manifest.from_bytes(json.dumps(obj).encode())
