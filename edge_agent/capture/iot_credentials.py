"""Temporary AWS credentials from the AWS IoT credentials provider.

The device proves who it is with its X.509 certificate and key over mutual TLS:

    GET https://<prefix>.credentials.iot.<region>.amazonaws.com/role-aliases/<alias>/credentials
    x-amzn-iot-thingname: <thing name>

and gets `{"credentials": {"accessKeyId", "secretAccessKey", "sessionToken", "expiration"}}`.
The credentials are cached until shortly before they expire.
"""
from __future__ import annotations

import datetime
import logging
import threading
import time

import requests

from edge_agent.capture.destinations import DeliveryError
from edge_agent.capture.s3 import Credentials

log = logging.getLogger(__name__)

# Fetch new credentials this long before the old ones expire (they last an hour by default).
REFRESH_MARGIN_SECONDS = 300.0


def credentials_url(endpoint: str, role_alias: str) -> str:
    """The full url: `endpoint` as the original agent took it (a full url with
    /role-aliases/<alias>/credentials), or a bare host / https url plus the role alias."""
    if "/role-aliases/" in endpoint:
        return endpoint if "://" in endpoint else f"https://{endpoint}"
    base = endpoint if "://" in endpoint else f"https://{endpoint}"
    return f"{base.rstrip('/')}/role-aliases/{role_alias}/credentials"


def _expiry(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 expiration like 2026-11-21T13:00:00Z."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class IotCredentials:
    def __init__(self, url: str, thing_name: str, cert_file: str, key_file: str,
                 ca_file: str = "", timeout: float = 30.0, clock=time.time):
        self.url = url
        self.thing_name = thing_name
        self.cert = (cert_file, key_file)
        self.verify = ca_file or True
        self.timeout = timeout
        self.clock = clock
        self._cached: tuple[Credentials, float] | None = None
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        with self._lock:
            if self._cached is None or self.clock() >= self._cached[1] - REFRESH_MARGIN_SECONDS:
                self._cached = self._fetch()
            return self._cached[0]

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _fetch(self) -> tuple[Credentials, float]:
        headers = {"x-amzn-iot-thingname": self.thing_name} if self.thing_name else {}
        try:
            response = requests.get(self.url, headers=headers, cert=self.cert,
                                    verify=self.verify, timeout=self.timeout)
        except requests.exceptions.SSLError as e:
            # A certificate the endpoint refuses, or an endpoint we do not trust: retrying
            # will not help until someone fixes the certificates.
            raise DeliveryError(f"IoT credentials provider {self.url}: TLS failed ({e}); check "
                                "sagemaker_edge_provider_aws_cert_file, ..._cert_pk_file and "
                                "..._ca_cert_file", transient=False) from None
        except (requests.RequestException, OSError) as e:
            raise DeliveryError(f"cannot reach the IoT credentials provider {self.url}: {e}",
                                transient=True) from None
        if response.status_code != 200:
            raise DeliveryError(
                f"IoT credentials provider {self.url}: HTTP {response.status_code}: "
                f"{response.text.strip()[:200]}",
                transient=response.status_code >= 500 or response.status_code == 429)
        try:
            body = response.json()["credentials"]
            credentials = Credentials(body["accessKeyId"], body["secretAccessKey"],
                                      body.get("sessionToken", ""))
            expires = _expiry(body["expiration"])
        except (ValueError, KeyError, TypeError) as e:
            raise DeliveryError(f"IoT credentials provider {self.url}: unexpected reply "
                                f"({type(e).__name__}: {e})", transient=False) from None
        log.info("got temporary credentials from %s, valid until %s", self.url,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)))
        return credentials, expires
