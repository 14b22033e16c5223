"""The deployment document: the percentage hash, parsing, signatures, selection, refusals."""
from __future__ import annotations

import hashlib
import json

import pytest
from nacl.signing import SigningKey

from edge_agent.fleet import document as d
from edge_agent.packaging.keys import key_id

NAMES = [f"board-{i:05d}" for i in range(10_000)]
NOW = 1_800_000_000


def package(version: str, name: str = "add") -> d.Package:
    return d.Package(f"packages/{name}/{version}.tar.gz", hashlib.sha256(version.encode()).hexdigest(),
                     version, 1234)


def doc(sequence: int = 1, **changes) -> d.Document:
    values = dict(fleet="plant", sequence=sequence, expires=NOW + 3600,
                  baseline={"add": package("1.0.0")}, created_at=d.format_time(NOW))
    values.update(changes)
    return d.Document(**values)


@pytest.fixture(scope="module")
def key():
    return SigningKey.generate()


@pytest.fixture(scope="module")
def keys(key):
    return {key_id(key.verify_key): key.verify_key}


def test_percentage_is_the_formula_of_the_documentation():
    point = int.from_bytes(hashlib.sha256(b"plant/board-00001").digest()[:8], "big") % 10000
    assert d.in_percentage("plant", "board-00001", point / 100 + 0.01)
    assert not d.in_percentage("plant", "board-00001", point / 100)


@pytest.mark.parametrize("percent", [0, 1, 5, 10, 30, 50, 90, 100])
def test_percentage_is_within_one_percent_over_ten_thousand_names(percent):
    chosen = sum(d.in_percentage("plant", n, percent) for n in NAMES)
    assert abs(chosen / len(NAMES) * 100 - percent) <= 1


def test_percentage_is_stable_and_monotone():
    previous: set[str] = set()
    for percent in (0, 1, 10, 10.5, 30, 75, 100):
        chosen = {n for n in NAMES if d.in_percentage("plant", n, percent)}
        assert chosen == {n for n in NAMES if d.in_percentage("plant", n, percent)}
        assert previous <= chosen
        previous = chosen
    assert previous == set(NAMES)
    # another fleet's 10% are other boards
    assert {n for n in NAMES if d.in_percentage("plant", n, 10)} != \
        {n for n in NAMES if d.in_percentage("yard", n, 10)}


def test_signed_document_round_trips(key, keys):
    original = doc(3, stages=(d.Stage({"add": package("2.0.0")}, percent=12.5),
                              d.Stage({"mul": package("1.1.0", "mul")}, devices=("a", "b"))),
                   history={"add": (package("0.9.0"),)})
    signed = d.verify(d.sign(original, key), keys)
    assert signed.document == original
    assert signed.key_id == key_id(key.verify_key)
    assert signed.canonical == original.to_bytes()
    assert json.loads(original.to_bytes())["format"] == "edge-agent-deployment/1"


def test_wanted_takes_the_first_stage_naming_the_model():
    document = doc(stages=(d.Stage({"add": package("2.0.0")}, devices=("a",)),
                           d.Stage({"mul": package("3.0.0", "mul")}, name_contains="cam")))
    assert document.wanted("a") == {"add": package("2.0.0")}
    assert document.wanted("b") == {"add": package("1.0.0")}
    assert document.wanted("cam-2") == {"add": package("1.0.0"), "mul": package("3.0.0", "mul")}
    hundred = doc(stages=(d.Stage({"add": package("2.0.0")}, percent=100),))
    none = doc(stages=(d.Stage({"add": package("2.0.0")}, percent=0),))
    assert all(hundred.wanted(n)["add"].version == "2.0.0" for n in NAMES[:50])
    assert all(none.wanted(n)["add"].version == "1.0.0" for n in NAMES[:50])


def _tampered(data: bytes, change) -> bytes:
    envelope = json.loads(data)
    change(envelope)
    return json.dumps(envelope).encode()


def test_bad_signatures_and_malformed_documents_are_refused(key, keys):
    data = d.sign(doc(), key)

    def bump(e):
        e["document"]["baseline"]["add"]["version"] = "9.9.9"

    with pytest.raises(d.DocumentError, match="bad signature"):
        d.verify(_tampered(data, bump), keys)
    with pytest.raises(d.DocumentError, match="not in edge_agent_deployment_trust"):
        d.verify(data, {"0" * 16: SigningKey.generate().verify_key})
    other = SigningKey.generate()
    forged = _tampered(data, lambda e: e["signature"].update(key_id=key_id(other.verify_key)))
    with pytest.raises(d.DocumentError, match="not in"):
        d.verify(forged, keys)

    def package_format(e):
        e["document"]["format"] = "edge-agent-package/1"

    with pytest.raises(d.DocumentError, match="format"):
        d.verify(_tampered(data, package_format), keys)

    def unknown(e):
        e["document"]["extra"] = 1

    with pytest.raises(d.DocumentError, match="does not know"):
        d.verify(_tampered(data, unknown), keys)
    for bad in (b"", b"[]", b"{\"document\": {}}", b"\xff"):
        with pytest.raises(d.DocumentError):
            d.verify(bad, keys)

    def path_escape(e):
        e["document"]["baseline"]["add"]["package"] = "../other/x.tar.gz"

    with pytest.raises(d.DocumentError, match="not an object key"):
        d.verify(_tampered(data, path_escape), keys)


def test_a_model_in_two_stages_is_refused(key, keys):
    twice = doc(stages=(d.Stage({"add": package("2.0.0")}, devices=("a",)),
                        d.Stage({"add": package("3.0.0")}, percent=10)))
    with pytest.raises(d.DocumentError, match="two stages"):
        d.verify(d.sign(twice, key), keys)


def _signed(key, keys, document):
    return d.verify(d.sign(document, key), keys)


def test_refusal_rules(key, keys):
    applied = _signed(key, keys, doc(5))
    assert d.judge(_signed(key, keys, doc(6)), "plant", "a", applied, NOW).action == "apply"
    assert d.judge(_signed(key, keys, doc(5)), "plant", "a", applied, NOW).action == "same"
    lower = d.judge(_signed(key, keys, doc(4)), "plant", "a", applied, NOW)
    assert lower.action == "refuse" and "lower" in lower.reason
    other_bytes = d.judge(_signed(key, keys, doc(5, policy="do_nothing")), "plant", "a", applied, NOW)
    assert other_bytes.action == "refuse" and "other contents" in other_bytes.reason
    fleet = d.judge(_signed(key, keys, doc(9, fleet="yard")), "plant", "a", applied, NOW)
    assert fleet.action == "refuse" and "fleet 'yard'" in fleet.reason
    device = d.judge(_signed(key, keys, doc(9, device="b")), "plant", "a", applied, NOW)
    assert device.action == "refuse" and "device 'b'" in device.reason
    assert d.judge(_signed(key, keys, doc(9, device="a")), "plant", "a", applied, NOW).action == "apply"
    expired = d.judge(_signed(key, keys, doc(6, expires=NOW - 1)), "plant", "a", applied, NOW)
    assert expired.action == "stale"
    assert d.judge(applied, "plant", "a", applied, NOW + 7200).action == "stale"
    assert d.judge(applied, "plant", "a", None, NOW).action == "apply"


def test_newest_prefers_the_highest_sequence(key, keys):
    fleet_doc = _signed(key, keys, doc(7))
    device_doc = _signed(key, keys, doc(6, device="a"))
    assert d.newest([fleet_doc, device_doc]) is fleet_doc
    assert d.newest([device_doc]) is device_doc
    assert d.newest([]) is None


def test_hostile_unsigned_documents_are_refused_not_raised(key, keys):
    """Whoever may write the bucket must not stop a board's reads with an exception other
    than a refusal (the board's read would end there, every poll)."""
    data = d.sign(doc(), key)
    hostile = [
        _tampered(data, lambda e: e["document"].update(history=[])),
        _tampered(data, lambda e: e["document"].update(history="x")),
        b'{"document": ' + b"[" * 100_000 + b"]" * 100_000 + b', "signature": {}}',
        b'{"document": {"sequence": ' + b"9" * 5000 + b'}, "signature": {}}',
    ]
    for bad in hostile:
        with pytest.raises(d.DocumentError):
            d.verify(bad, keys)


def test_a_version_that_is_not_a_version_is_refused(key, keys):
    """The version names the file a board writes into its repository (board.package_file)."""
    data = d.sign(doc(), key)
    for version in ("../../../etc/x", "1.0/../../x", "", "v1"):
        def change(e, version=version):
            e["document"]["baseline"]["add"]["version"] = version
        with pytest.raises(d.DocumentError, match="version"):
            d.verify(_tampered(data, change), keys)


def test_percentage_compares_whole_hundredths():
    """percent_hundredths 7 takes the boards at points 0..6, never the one at 7 (the float
    7/100*100 is a hair above 7)."""
    def point(name):
        return int.from_bytes(hashlib.sha256(f"plant/{name}".encode()).digest()[:8],
                              "big") % 10000
    for hundredths in (7, 14, 28, 55, 109):
        name = next(f"b-{i}" for i in range(10**7) if point(f"b-{i}") == hundredths)
        stage = d.Stage({}, percent=hundredths / 100)
        assert not stage.selects("plant", name)
        assert d.Stage({}, percent=(hundredths + 1) / 100).selects("plant", name)


def test_a_package_without_its_size_is_refused(key, keys):
    """The size bounds the download: an object served endlessly cannot fill the disk."""
    data = d.sign(doc(), key)
    for size in (0, -1, None, "12", 1.5):
        def change(e, size=size):
            e["document"]["baseline"]["add"]["size"] = size
        with pytest.raises(d.DocumentError, match="size"):
            d.verify(_tampered(data, change), keys)
    with pytest.raises(d.DocumentError, match="size"):
        d.verify(_tampered(data, lambda e: e["document"]["baseline"]["add"].pop("size")), keys)
