"""Objects of the deployment bucket: conditional reads of documents and resumable downloads
of packages, over the S3 client capture uploads use (edge_agent.capture.s3: requests, SigV4).

A document is read with If-None-Match and its last ETag: an unchanged document costs one
small request and no body. A package downloads to a hidden partial file beside its final
name, with its ETag beside it; after an outage or a restart the download asks for the rest
(Range, with If-Range so that a replaced object starts over; the reply's ETag is compared
too, as not every store honours If-Range), and only a whole file whose size and SHA-256 are
those the signed document names is renamed to its final name.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from edge_agent.capture.destinations import DeliveryError

CHUNK = 1024 * 1024
FREE_MARGIN_BYTES = 16 * 1024 * 1024  # left free besides a package (the store copies it too)


class TransferError(Exception):
    """A package that cannot be taken: no room, or bytes that are not the document's."""


class Stopped(Exception):
    """Raised by a download's progress callback: stop now, keeping the partial file."""


class BytesMismatch(TransferError):
    """The object's bytes are not those the signed document names (size or SHA-256)."""


@dataclass(frozen=True)
class Fetched:
    state: str  # "new", "unchanged" or "missing"
    data: bytes = b""
    etag: str = ""


def fetch(client, key: str, etag: str = "") -> Fetched:
    """A document by conditional GET (DeliveryError when the store cannot be reached)."""
    headers = {"If-None-Match": etag} if etag else {}
    response = client.send("GET", key, headers=headers, accept=(304, 404))
    if response.status_code == 304:
        return Fetched("unchanged", etag=etag)
    if response.status_code == 404:
        return Fetched("missing")
    return Fetched("new", response.content, response.headers.get("ETag", ""))


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_room(directory: str, needed: int) -> None:
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if free < needed + FREE_MARGIN_BYTES:
        raise TransferError(f"not enough free disk in '{directory}': {needed} bytes needed "
                            f"(+{FREE_MARGIN_BYTES} margin), {free} free")


def download(client, key: str, final: str, sha256: str, size: int = 0,
             progress=None) -> int:
    """Download `key` to the path `final` (atomically: whole and checked, or not there);
    returns the offset it resumed from (0: from the start).
    DeliveryError: the store failed (the partial file stays for the next try);
    TransferError: no room, or the bytes are not those named (the partial file is removed)."""
    directory, base = os.path.split(final)
    partial = os.path.join(directory, f".{base}.partial")
    tag_path = partial + ".etag"
    have = os.path.getsize(partial) if os.path.exists(partial) else 0
    try:
        with open(tag_path) as f:
            etag = f.read().strip()
    except OSError:
        etag, have = "", 0
    if size:
        if have > size:
            have = 0
        check_room(directory, size - have)
    headers = {"Range": f"bytes={have}-", "If-Range": etag} if have and etag else {}
    response = client.send("GET", key, headers=headers, stream=True, accept=(416,))
    reply_tag = response.headers.get("ETag", "")
    if response.status_code == 206 and reply_tag != etag:
        # A store that ignored If-Range sent the rest of another object: from the start.
        response.close()
        response = client.send("GET", key, stream=True)
        reply_tag = response.headers.get("ETag", "")
    start = 0
    try:
        resumed = (response.status_code == 206 and reply_tag == etag
                   and response.headers.get("Content-Range", "").startswith(f"bytes {have}-"))
        if response.status_code == 416 and have and have == size:
            resumed = True  # everything was there already
        elif not resumed:
            have = 0
            if response.status_code == 416:  # the partial file is longer than the object
                _remove(partial, tag_path)
            if response.status_code not in (200,):
                raise DeliveryError(f"GET {key}: unexpected HTTP {response.status_code}",
                                    transient=True)
            length = int(response.headers.get("Content-Length") or 0)
            check_room(directory, size or length)
        start = have if resumed else 0
        with open(tag_path, "w") as f:
            f.write(reply_tag or etag)
        with open(partial, "r+b" if resumed and have else "wb") as out:
            out.seek(have)
            out.truncate()
            if response.status_code != 416:
                try:
                    for chunk in response.iter_content(CHUNK):
                        out.write(chunk)
                        have += len(chunk)
                        if progress is not None:
                            progress(have)
                        if size and have > size:
                            break
                except Exception as e:  # the connection dropped mid-body (requests' errors)
                    out.flush()
                    os.fsync(out.fileno())
                    raise DeliveryError(f"GET {key}: interrupted after {have} bytes: {e}",
                                        transient=True) from None
            out.flush()
            os.fsync(out.fileno())
    finally:
        response.close()
    digest = hashlib.sha256()
    with open(partial, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if (size and have != size) or digest.hexdigest() != sha256:
        _remove(partial, tag_path)
        raise BytesMismatch(f"package '{key}' is not the one the document names: "
                            f"{have} bytes with SHA-256 {digest.hexdigest()[:16]}..., expected "
                            f"{size or '?'} bytes with SHA-256 {sha256[:16]}...")
    os.rename(partial, final)
    _remove(tag_path)
    _fsync_directory(directory)
    return start


def _remove(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def upload_file(client, key: str, path: str) -> None:
    with open(path, "rb") as f:
        client.send("PUT", key, data=f)


def exists(client, key: str) -> bool:
    return client.send("HEAD", key, accept=(404,)).status_code != 404


def put_if_absent(client, key: str, data: bytes) -> bool:
    """Write `key` unless it exists (If-None-Match: *): False when another writer was first."""
    response = client.send("PUT", key, data=data, headers={"If-None-Match": "*"}, accept=(412,))
    return response.status_code != 412
