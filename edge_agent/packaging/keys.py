"""Ed25519 key files and the agent's trust folder.

Key files are small text files a person can read (docs/PACKAGES.md):

    edge-agent-key v1 ed25519-public
    key-id: 1f0c9a3b5d7e2468
    key: <base64 of the 32-byte key>

A private key file has the header `edge-agent-key v1 ed25519-private` and holds the 32-byte
seed. The key id is the first 16 hex digits of the SHA-256 of the public key: the signature
file of a package names it, so the agent finds the one key to try.

The trust folder (`sagemaker_edge_core_root_certs_path`) holds `*.pub` files. Whoever can
write to it decides which models run, so a folder or key file that the group or others may
write, or that someone other than root or the agent's user owns, is refused, as the original
agent refused writable root certificates. So is a folder under a directory such a user could
change (they could rename the folder away and put their own in its place): every directory
above it, up to /, must be root's or the agent's and not writable by group or others unless
sticky (like /tmp, where only an entry's owner may rename it).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Mapping

from nacl.signing import SigningKey, VerifyKey

from edge_agent.errors import failed_precondition
from edge_agent.models.model_files import open_regular

PUBLIC_HEADER = "edge-agent-key v1 ed25519-public"
PRIVATE_HEADER = "edge-agent-key v1 ed25519-private"
PUBLIC_SUFFIX = ".pub"
KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4096
ROOT_CERTS_KEY = "sagemaker_edge_core_root_certs_path"


def key_id(key: VerifyKey) -> str:
    """A short, stable name of a public key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(bytes(key)).hexdigest()[:16]


def _key_text(header: str, ident: str, raw: bytes) -> str:
    return f"{header}\nkey-id: {ident}\nkey: {base64.b64encode(raw).decode('ascii')}\n"


def public_key_text(key: VerifyKey) -> str:
    return _key_text(PUBLIC_HEADER, key_id(key), bytes(key))


def private_key_text(key: SigningKey) -> str:
    return ("# Keep this file secret: whoever has it can sign models your agents will run.\n"
            + _key_text(PRIVATE_HEADER, key_id(key.verify_key), bytes(key)))


def _parse_key(text: str, header: str, path: str) -> tuple[bytes, str | None]:
    """(raw key, key id written in the file or None); FAILED_PRECONDITION if malformed."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines or lines[0] != header:
        raise failed_precondition(
            f"'{path}' is not an edge-agent key file: its first line must be '{header}'")
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise failed_precondition(f"'{path}': line {line!r} is not 'name: value'")
        fields[name.strip()] = value.strip()
    try:
        raw = base64.b64decode(fields.get("key", ""), validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != KEY_BYTES:
        raise failed_precondition(f"'{path}': 'key:' must hold {KEY_BYTES} bytes in base64")
    return raw, fields.get("key-id")


def _read_key_file(path: str) -> str:
    try:
        with open_regular(path) as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise failed_precondition(f"key file '{path}' does not exist") from None
    except OSError as e:
        raise failed_precondition(f"cannot read key file '{path}': {e.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise failed_precondition(f"'{path}' is too large to be a key file")
    return data.decode("utf-8", "replace")


def _check_id(path: str, written: str | None, actual: str) -> None:
    # The id line is for people; a wrong one means the file was edited by hand.
    if written is not None and written != actual:
        raise failed_precondition(
            f"'{path}': key-id {written} does not match the key (its id is {actual})")


def read_public_key(path: str) -> VerifyKey:
    raw, written = _parse_key(_read_key_file(path), PUBLIC_HEADER, path)
    key = VerifyKey(raw)
    _check_id(path, written, key_id(key))
    return key


def read_private_key(path: str) -> SigningKey:
    """The signing key in `path`, refused if anyone but its owner may read it (as ssh does)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise failed_precondition(f"cannot read private key '{path}': {e.strerror}") from None
    if mode & 0o077:
        raise failed_precondition(
            f"private key '{path}' may be read or written by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): run chmod 600 '{path}'")
    raw, written = _parse_key(_read_key_file(path), PRIVATE_HEADER, path)
    key = SigningKey(raw)
    _check_id(path, written, key_id(key.verify_key))
    return key


def _create_exclusive(path: str, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def generate_key(private_path: str, *, force: bool = False) -> tuple[str, str, str]:
    """Write a new key pair: `private_path` (0600) and `private_path`.pub (0644).

    Returns (private path, public path, key id). Refuses to replace existing files unless
    `force`, so a key that signed deployed models is not lost by a slip.
    """
    public_path = private_path + PUBLIC_SUFFIX
    if not force:
        for path in (private_path, public_path):
            if os.path.lexists(path):
                raise failed_precondition(f"'{path}' exists; remove it or pass --force")
    else:
        for path in (private_path, public_path):
            if os.path.lexists(path):
                os.unlink(path)
    key = SigningKey.generate()
    _create_exclusive(private_path, private_key_text(key), 0o600)
    _create_exclusive(public_path, public_key_text(key.verify_key), 0o644)
    return private_path, public_path, key_id(key.verify_key)


# --- the trust folder -----------------------------------------------------------------------

def _check_not_writable_by_others(path: str, st: os.stat_result, what: str) -> None:
    if st.st_mode & 0o022:
        raise failed_precondition(
            f"the trusted keys' {what} '{path}' may be written by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}), so anyone could add a key: run chmod go-w '{path}'")
    if st.st_uid not in (0, os.geteuid()):
        raise failed_precondition(
            f"the trusted keys' {what} '{path}' belongs to uid {st.st_uid}, who could add a "
            f"key: it must belong to root or to the agent's user (uid {os.geteuid()})")


def _ancestors(path: str):
    """'/a/b/c' → '/a/b', '/a', '/'."""
    while path != "/":
        path = os.path.dirname(path)
        yield path


def _check_directory_above(directory: str, trust_path: str,
                           setting: str = ROOT_CERTS_KEY) -> None:
    """One directory above the trust folder: whoever may rename entries in it can swap the
    folder for one of their own, so it must be root's or the agent's user's and not writable
    by group or others, unless sticky (/tmp): there only an entry's owner may rename or
    remove it, and the entry on the way down is checked to be root's or the agent's."""
    st = os.lstat(directory)
    if st.st_uid not in (0, os.geteuid()):
        raise failed_precondition(
            f"the trusted keys' {setting} '{trust_path}' lies under '{directory}', which "
            f"belongs to uid {st.st_uid}, who could swap it: every directory above the trusted "
            f"keys must belong to root or to the agent's user (uid {os.geteuid()})")
    if stat.S_ISLNK(st.st_mode):
        return  # a link's own mode means nothing; its owner (checked) decides where it points
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise failed_precondition(
            f"the trusted keys' {setting} '{trust_path}' lies under '{directory}', which "
            f"group or others may write (mode {stat.S_IMODE(st.st_mode):04o}), so anyone could "
            f"swap it: run chmod go-w '{directory}', or move the trusted keys elsewhere")


def _check_path_above(path: str, setting: str = ROOT_CERTS_KEY) -> None:
    """Every directory above the trust folder (or key file), up to /, on the path as written
    (which may go through links, each of which must be root's or the agent's) and on the path
    those links resolve to."""
    written = os.path.abspath(path)
    try:
        if os.path.islink(written):
            _check_directory_above(written, path, setting)  # the folder named through a link
        for chain in dict.fromkeys((written, os.path.realpath(written))):
            for directory in _ancestors(chain):
                _check_directory_above(directory, path, setting)
    except OSError as e:
        raise failed_precondition(
            f"{setting} '{path}': cannot check the directories above it: "
            f"{e.strerror}") from None


def load_trust(path: str, setting: str = ROOT_CERTS_KEY) -> dict[str, VerifyKey]:
    """The trusted public keys by key id: every *.pub in the folder `path`, or the one key file
    (`setting`: the configuration key that named it, for the messages).

    FAILED_PRECONDITION when the folder, a directory above it or a key file may be written
    by others, a key file does not parse, or there is no key at all.
    """
    if not path:
        raise failed_precondition(
            f"no trusted keys: set {setting} to the folder of public keys (*.pub) "
            "that " + ("model packages" if setting == ROOT_CERTS_KEY else "its documents")
            + " are signed with")
    try:
        st = os.stat(path)
    except OSError as e:
        raise failed_precondition(
            f"{setting} '{path}' cannot be read: {e.strerror}") from None
    _check_path_above(path, setting)
    if not stat.S_ISDIR(st.st_mode):
        _check_not_writable_by_others(path, st, "file")
        key = read_public_key(path)
        return {key_id(key): key}
    _check_not_writable_by_others(path, st, "folder")
    keys: dict[str, VerifyKey] = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.name.endswith(PUBLIC_SUFFIX):
            continue
        file_path = os.path.join(path, entry.name)
        try:
            _check_not_writable_by_others(file_path, os.stat(file_path), "file")
        except OSError as e:
            raise failed_precondition(f"cannot read trusted key '{file_path}': {e.strerror}") from None
        key = read_public_key(file_path)
        keys[key_id(key)] = key
    if not keys:
        raise failed_precondition(
            f"{setting} '{path}' holds no public keys (*{PUBLIC_SUFFIX} files)")
    return keys


def describe_trust(keys: Mapping[str, VerifyKey]) -> str:
    return ", ".join(sorted(keys))

