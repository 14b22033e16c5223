"""The model lifecycle's parts in process: the policy's choice, the store's records and
copies, the repository's view of complete entries (the agent's behaviour is tested with a
real agent in tests/integration/test_model_lifecycle*.py)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from edge_agent.packaging.archive import Limits
from edge_agent.models.lifecycle import policy
from edge_agent.models.lifecycle.repository import Repository, check_repository, complete
from edge_agent.models.lifecycle.store import Store, StoredVersion, read_json, write_json_atomic
from edge_agent.errors import AgentError


def v(version: str, digest: str | None = None) -> StoredVersion:
    return StoredVersion("m", version, digest or f"{version}-digest", f"/store/m/{version}")


def test_the_highest_release_serves():
    choice = policy.choose([v("1.0"), v("1.10"), v("1.9.9"), v("2.0.0-rc1")], None, set())
    assert choice.version.version == "1.10"


def test_missing_parts_are_zero_and_a_prerelease_serves_only_pinned():
    assert policy.same_version("1.0", "1.0.0")
    assert policy.choose([v("2.0.0-rc1")], None, set()).version is None
    assert policy.choose([v("1.0"), v("2.0.0-rc1")], "2.0.0-rc1", set()).version.version == "2.0.0-rc1"
    assert policy.choose([v("1.0"), v("2.0")], "1", set()).version.version == "1.0"


def test_failed_versions_are_passed_over_and_a_pin_on_one_serves_nothing():
    versions = [v("1.0"), v("2.0")]
    assert policy.choose(versions, None, {"2.0-digest"}).version.version == "1.0"
    choice = policy.choose(versions, "2.0", {"2.0-digest"})
    assert choice.version is None and "pinned to 2.0" in choice.note


def test_newest_first_puts_what_does_not_parse_last():
    ordered = policy.newest_first([v("1.0"), v("not a version"), v("1.2"), v("1.2.0-rc1")])
    assert [x.version for x in ordered] == ["1.2", "1.2.0-rc1", "1.0", "not a version"]


def test_records_are_replaced_whole_and_a_corrupt_one_is_set_aside(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(str(path), {"a": 1})
    assert read_json(str(path)) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left
    path.write_text('{"a": ')  # a torn write (not one this code makes)
    assert read_json(str(path)) == {}
    assert (tmp_path / "state.json.corrupt").exists()
    assert read_json(str(tmp_path / "missing.json")) == {}


def test_a_copy_gets_its_final_name_only_whole(tmp_path):
    store = Store(str(tmp_path / "models"), Limits(1 << 20, 8))
    store.prepare()
    source = tmp_path / "package"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps({"name": "m"}))
    (source / "manifest.sig").write_text(json.dumps({"key_id": "abc"}))
    (source / "m.tflite").write_bytes(b"x" * 100)
    staged = store.stage(str(source), "m/package")
    assert store.versions() == {}  # staged is not held
    kept = store.keep(staged, "m", "1.0", "abc")
    [held] = store.versions()["m"]
    assert held.digest == kept.digest and held.key_id == "abc"
    assert os.listdir(store.staging) == []
    store.remove(held)
    assert store.versions() == {}


def test_a_copy_beyond_the_package_limits_is_refused(tmp_path):
    store = Store(str(tmp_path / "models"), Limits(1024, 8))
    store.prepare()
    source = tmp_path / "package"
    source.mkdir()
    (source / "big.tflite").write_bytes(b"x" * 4096)
    with pytest.raises(AgentError) as refused:
        store.stage(str(source), "m/package")
    assert "edge_agent_max_package_bytes" in refused.value.message
    assert os.listdir(store.staging) == []


def test_prepare_removes_what_an_interruption_left(tmp_path):
    store = Store(str(tmp_path / "models"), Limits(1 << 20, 8))
    store.prepare()
    (tmp_path / "models" / ".staging" / "copy-1").mkdir()
    (tmp_path / "models" / "m").mkdir()
    (tmp_path / "models" / "m" / ".deleting-1.0~abc").mkdir()
    (tmp_path / "models" / ".tmp-k3j2h1").write_text('{"serving": ')  # a record half written
    write_json_atomic(str(tmp_path / "models" / "state.json"), {"serving": {}})
    store.prepare()
    assert os.listdir(store.staging) == []
    assert os.listdir(tmp_path / "models" / "m") == []
    assert sorted(os.listdir(tmp_path / "models")) == [".staging", "m", "state.json"]


@pytest.mark.parametrize("name, whole", [
    ("m-1.0.tar.gz", True), ("package", True), (".m-1.0.tar.gz", False),
    ("m.tar.gz.partial-123", False), ("m.tar.gz.tmp", False), ("m.tar.gz~", False),
    ("m.tar.gz.part", False)])
def test_only_complete_entries_are_read(name, whole):
    assert complete(name) is whole


def test_an_entrys_identity_follows_its_bytes(tmp_path):
    root = tmp_path / "repository"
    (root / "m").mkdir(parents=True)
    archive = root / "m" / "m.tar.gz"
    archive.write_bytes(b"one")
    repository = Repository(str(root))
    [first] = repository.scan()
    assert repository.scan()[0].identity == first.identity
    archive.write_bytes(b"two")
    assert repository.scan()[0].identity != first.identity
    os.chmod(root / "m", 0o777)
    assert repository.scan() == [] and "group or others" in repository.problems["m"]


def test_a_repository_under_a_directory_others_may_write_is_refused(tmp_path):
    parent = tmp_path / "shared"
    (parent / "repository").mkdir(parents=True)
    os.chmod(parent / "repository", 0o755)
    os.chmod(parent, 0o777)
    with pytest.raises(AgentError) as refused:
        check_repository(str(parent / "repository"))
    assert f"lies under '{parent}'" in refused.value.message
    os.chmod(parent, 0o1777)  # sticky, as /tmp: only an entry's owner may rename it
    check_repository(str(parent / "repository"))


def test_a_repository_others_may_write_is_refused(tmp_path):
    os.chmod(tmp_path, 0o775)
    with pytest.raises(AgentError) as refused:
        check_repository(str(tmp_path))
    assert "chmod go-w" in refused.value.message
    with pytest.raises(AgentError):
        check_repository(str(tmp_path / "missing"))


def test_the_waker_wakes_on_request_and_on_a_folder_change(tmp_path):
    import threading

    from edge_agent.models.lifecycle.watch import Waker

    waker = Waker()
    try:
        waker.wake()
        waker.wait(60)  # returns at once: a wake-up was pending (the bound is for a bug)
        if waker.notified:
            waker.watch([str(tmp_path)])
            done = threading.Event()
            thread = threading.Thread(target=lambda: (waker.wait(60), done.set()))
            thread.start()
            (tmp_path / ".incoming").write_bytes(b"x")
            os.rename(tmp_path / ".incoming", tmp_path / "package.tar.gz")
            thread.join(60)
            assert done.is_set()
    finally:
        waker.close()
    waker.wake()  # after close: nothing, no error


@pytest.mark.parametrize("fifo", ["manifest.json", "manifest.sig"])
def test_a_package_holding_a_fifo_does_not_hang_the_scan(tmp_path, fifo):
    """A package directory whose manifest is a FIFO (or a link to one) is listed (its copy
    then lacks the file and is refused), never opened: a read would wait for a writer
    for ever, and the agent's start with it."""
    import threading

    package = tmp_path / "repository" / "m" / "package"
    package.mkdir(parents=True)
    os.mkfifo(package / fifo)
    os.symlink(fifo, package / "linked")
    (package / "other").write_bytes(b"x")
    repository = Repository(str(tmp_path / "repository"))
    found: list = []
    thread = threading.Thread(target=lambda: found.extend(repository.scan()), daemon=True)
    thread.start()
    thread.join(20)  # a bound for the bug, not a timing
    hung = thread.is_alive()
    if hung:  # unblock the hung scan before failing
        os.close(os.open(package / fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
    assert not hung
    assert [e.name for e in found] == ["m"]


def test_an_archive_replaced_by_a_fifo_is_not_opened(tmp_path):
    """Between the scan's lstat and its read an archive may become a FIFO: the read
    refuses it at once (OSError: the entry is passed over) rather than waiting."""
    import threading

    from edge_agent.models.lifecycle import repository as module

    os.mkfifo(tmp_path / "fifo")
    outcome: list = []

    def identify():
        try:
            outcome.append(module._file_identity(str(tmp_path / "fifo")))
        except OSError as e:
            outcome.append(e)
    thread = threading.Thread(target=identify, daemon=True)
    thread.start()
    thread.join(20)  # a bound for the bug, not a timing
    hung = thread.is_alive()
    if hung:
        os.close(os.open(tmp_path / "fifo", os.O_WRONLY | os.O_NONBLOCK))
        thread.join()
    assert not hung and isinstance(outcome[0], OSError)


def test_a_repository_reached_through_a_link_others_may_swap_is_refused(tmp_path):
    """The link's own folder counts too: whoever may write it can point the link elsewhere."""
    real = tmp_path / "real" / "repository"
    real.mkdir(parents=True)
    os.chmod(real, 0o755)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    os.symlink(real, shared / "repository")
    with pytest.raises(AgentError) as refused:
        check_repository(str(shared / "repository"))
    assert f"lies under '{shared}'" in refused.value.message
    check_repository(str(real))


def _nested(root, depth: int):
    """`depth` folders one in another under `root` (made relative: paths stay short)."""
    here = os.getcwd()
    os.chdir(root)
    try:
        for _ in range(depth):
            os.mkdir("d")
            os.chdir("d")
    finally:
        os.chdir(here)


def _remove_nested(root) -> None:
    """Removes what _nested made under `root`, then `root`: as it was made, one level at a
    time (shutil.rmtree recurses, and would fail on it)."""
    here = os.getcwd()
    os.chdir(root)
    try:
        depth = 0
        while os.path.isdir("d"):
            os.chdir("d")
            depth += 1
        for _ in range(depth):
            os.chdir("..")
            os.rmdir("d")
    finally:
        os.chdir(here)
    shutil.rmtree(root)


def test_a_package_nested_thousands_deep_is_refused_and_the_scan_goes_on(tmp_path):
    """os.walk recursed: such a folder ended every scan (and the start) with RecursionError."""
    package = tmp_path / "repository" / "m" / "package"
    package.mkdir(parents=True)
    (package / "manifest.json").write_text("{}")
    _nested(package, 1500)
    try:
        (tmp_path / "repository" / "n").mkdir()
        (tmp_path / "repository" / "n" / "n.tar.gz").write_bytes(b"x")
        repository = Repository(str(tmp_path / "repository"))
        assert [e.name for e in repository.scan()] == ["m", "n"]
        store = Store(str(tmp_path / "models"), Limits(1 << 20, 10000))
        store.prepare()
        with pytest.raises(AgentError) as refused:
            store.stage(str(package), "m/package")
        assert "nest deeper than" in refused.value.message
        assert os.listdir(store.staging) == []
    finally:  # pytest's own clean-up (shutil.rmtree) recurses, and would fail on it
        _remove_nested(package)


def test_a_package_of_many_empty_folders_is_refused(tmp_path):
    package = tmp_path / "package"
    package.mkdir()
    for i in range(20):
        (package / f"d{i}").mkdir()
    store = Store(str(tmp_path / "models"), Limits(1 << 20, 8))
    store.prepare()
    with pytest.raises(AgentError) as refused:
        store.stage(str(package), "m/package")
    assert "more than 8 files" in refused.value.message
