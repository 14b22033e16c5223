"""A minimal S3 client: PUT, GET and list objects with SigV4-signed requests.

Signed by requests-aws4auth, over a requests Session (connections are kept alive). Works with
AWS S3 and S3-compatible stores (an endpoint url, path-style addressing). Imported only when
a Cloud destination or the periodic upload is used: requests is not loaded otherwise.
"""
from __future__ import annotations

import html
import re
import urllib.parse
from typing import NamedTuple, Protocol

import requests
from requests_aws4auth import AWS4Auth

from edge_agent.capture.destinations import DeliveryError

# Codes of 4xx replies that go away by themselves or with fresh credentials.
_TRANSIENT_CODES = {"RequestTimeTooSkewed", "ExpiredToken", "TokenRefreshRequired",
                    "RequestTimeout", "SlowDown", "InternalError", "ServiceUnavailable"}
_XML_FIELD = re.compile(r"<(Code|Message)>(.*?)</\1>", re.S)


class Credentials(NamedTuple):
    access_key_id: str
    secret_access_key: str
    session_token: str = ""


class CredentialsProvider(Protocol):
    def get(self) -> Credentials: ...

    def invalidate(self) -> None: ...


class StaticCredentials:
    def __init__(self, credentials: Credentials):
        self.credentials = credentials

    def get(self) -> Credentials:
        return self.credentials

    def invalidate(self) -> None:
        pass


def default_endpoint(region: str) -> str:
    return f"https://s3.{region}.amazonaws.com"


class S3Client:
    def __init__(self, bucket: str, region: str, credentials: CredentialsProvider,
                 endpoint_url: str = "", addressing_style: str = "auto", timeout: float = 30.0):
        endpoint = (endpoint_url or default_endpoint(region)).rstrip("/")
        parts = urllib.parse.urlsplit(endpoint)
        if addressing_style == "auto":
            addressing_style = "path" if endpoint_url else "virtual"
        if addressing_style == "virtual":
            self._base = f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}"
        else:
            self._base = f"{endpoint}/{bucket}"
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.timeout = timeout
        self._session = requests.Session()
        self._auth: tuple[Credentials, AWS4Auth] | None = None

    def url_of(self, key: str) -> str:
        if not key:
            return self._base  # the bucket itself
        return f"{self._base}/{urllib.parse.quote(key, safe='/-_.~')}"

    def _signer(self) -> AWS4Auth:
        credentials = self.credentials.get()
        if self._auth is None or self._auth[0] != credentials:
            self._auth = (credentials, AWS4Auth(
                credentials.access_key_id, credentials.secret_access_key, self.region, "s3",
                session_token=credentials.session_token or None))
        return self._auth[1]

    def send(self, method: str, key: str, *, accept: tuple[int, ...] = (),
             **kwargs) -> requests.Response:
        """One request (headers=, data=, stream= as requests takes them); a reply whose
        status is in `accept` (304 Not Modified, 404, 412 Precondition Failed: answers to
        conditional requests) is returned, other replies of 300 or more raise DeliveryError."""
        return self._request(method, key, accept=accept, **kwargs)

    def _request(self, method: str, key: str, accept: tuple[int, ...] = (),
                 **kwargs) -> requests.Response:
        url = self.url_of(key)
        try:
            response = self._session.request(method, url, auth=self._signer(),
                                             timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            raise DeliveryError(f"cannot reach the object store at {url}: {e}", transient=True) from None
        if response.status_code < 300 or response.status_code in accept:
            return response
        fields = dict(_XML_FIELD.findall(response.text or ""))
        code = fields.get("Code", "")
        if code in ("ExpiredToken", "TokenRefreshRequired", "InvalidAccessKeyId"):
            self.credentials.invalidate()
        transient = response.status_code >= 500 or response.status_code in (408, 429) \
            or code in _TRANSIENT_CODES
        raise DeliveryError(
            f"{method} {url}: HTTP {response.status_code} {code or response.reason}: "
            f"{fields.get('Message', '').strip() or 'no message'}", transient=transient)

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._session.close()

    def create_bucket(self) -> None:
        self._request("PUT", "")

    def put_object(self, key: str, data: bytes) -> None:
        self._request("PUT", key, data=data)

    def get_object(self, key: str) -> bytes:
        return self._request("GET", key).content

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (ListObjectsV2, following continuation tokens)."""
        keys: list[str] = []
        token = None
        while True:
            params = {"list-type": "2", "prefix": prefix}
            if token:
                params["continuation-token"] = token
            text = self._request("GET", "", params=params).text
            keys.extend(html.unescape(k) for k in re.findall(r"<Key>(.*?)</Key>", text))
            match = re.search(r"<NextContinuationToken>(.*?)</NextContinuationToken>", text)
            if "<IsTruncated>true</IsTruncated>" not in text or not match:
                return keys
            token = match.group(1)
