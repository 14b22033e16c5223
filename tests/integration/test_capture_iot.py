"""The AWS IoT credentials-provider flow against a local HTTPS server that requires the
device's client certificate (mutual TLS), and captures uploaded with what it hands out."""
from __future__ import annotations

import datetime
import http.server
import json
import socket
import ssl
import threading

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.capture.destinations import DeliveryError
from edge_agent.capture.iot_credentials import IotCredentials, credentials_url

from capture_helpers import delivered_ids, s3_manifests, wait_for
from s3server import ACCESS_KEY, SECRET_KEY

ALIAS = "edge-capture"


def _certificate(directory, name, issuer=None, server=False):
    """(cert path, key path) of a new EC certificate, self-signed or signed by issuer, with the
    extensions a current OpenSSL insists on under VERIFY_X509_STRICT (the default from Python
    3.13): key identifiers (the Authority's on every certificate, the Subject's too), basic
    constraints and key usage, as a real CA issues them."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    signer_cert, signer_key = issuer or (None, key)
    is_ca = issuer is None
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   signer_key.public_key()), critical=False)
               .add_extension(x509.KeyUsage(
                   digital_signature=not is_ca, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=is_ca,
                   crl_sign=is_ca, encipher_only=False, decipher_only=False), critical=True))
    if not is_ca:
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else \
            x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


class IotServer:
    """GET /role-aliases/<alias>/credentials over TLS that requires a client certificate
    signed by the device CA; records each request's thing name and client subject."""

    def __init__(self, directory, expiration: str):
        ca_cert, ca_key, self.ca_path, _ = _certificate(directory, "ca")
        _, _, self.server_cert, self.server_key = _certificate(directory, "server", (ca_cert, ca_key), server=True)
        _, _, self.device_cert, self.device_key = _certificate(directory, "device", (ca_cert, ca_key))
        rogue_ca = _certificate(directory, "rogue-ca")
        _, _, self.rogue_cert, self.rogue_key = _certificate(directory, "rogue", rogue_ca[:2])
        self.expiration = expiration
        self.session_token = "session-token"
        self.requests: list[tuple[str, str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                peer = self.connection.getpeercert()
                subject = dict(x[0] for x in peer["subject"])["commonName"]
                outer.requests.append((self.path, self.headers.get("x-amzn-iot-thingname"), subject))
                if self.path != f"/role-aliases/{ALIAS}/credentials":
                    self.send_error(404)
                    return
                body = json.dumps({"credentials": {
                    "accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY,
                    "sessionToken": outer.session_token, "expiration": outer.expiration}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.load_verify_locations(self.ca_path)
        context.verify_mode = ssl.CERT_REQUIRED
        # Strict on every Python (3.13's default for clients): the device certificates the
        # tests hand the agent are ones a current OpenSSL accepts.
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/role-aliases/{ALIAS}/credentials"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _in(seconds: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def iot(tmp_path):
    server = IotServer(tmp_path, _in(3600))
    yield server
    server.close()


def test_credentials_are_fetched_with_the_device_certificate_and_cached(iot):
    provider = IotCredentials(iot.url, "thing-1", str(iot.device_cert), str(iot.device_key),
                              str(iot.ca_path))
    first = provider.get()
    assert (first.access_key_id, first.secret_access_key, first.session_token) == \
        (ACCESS_KEY, SECRET_KEY, "session-token")
    assert provider.get() == first
    assert iot.requests == [(f"/role-aliases/{ALIAS}/credentials", "thing-1", "device")]


def test_credentials_near_expiry_are_fetched_again(iot):
    iot.expiration = _in(60)  # inside the refresh margin
    provider = IotCredentials(iot.url, "thing-1", str(iot.device_cert), str(iot.device_key),
                              str(iot.ca_path))
    provider.get()
    provider.get()
    assert len(iot.requests) == 2


def test_a_certificate_the_endpoint_refuses_is_a_lasting_failure(iot):
    provider = IotCredentials(iot.url, "thing-1", str(iot.rogue_cert), str(iot.rogue_key),
                              str(iot.ca_path))
    with pytest.raises(DeliveryError) as info:
        provider.get()
    assert not info.value.transient
    assert "IoT credentials provider" in info.value.reason and "cert" in info.value.reason
    assert iot.requests == []


def test_the_test_pki_passes_strict_verification_both_ways(iot):
    """The certificates are what a current OpenSSL accepts (Python 3.13 verifies strictly by
    default), checked on every Python: a strict client talks to the strict server."""
    context = ssl.create_default_context(cafile=str(iot.ca_path))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(iot.device_cert, iot.device_key)
    host, port = iot.httpd.server_address[:2]
    with socket.create_connection((host, port)) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET /elsewhere HTTP/1.0\r\nx-amzn-iot-thingname: t\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.0 404")
    assert iot.requests == [("/elsewhere", "t", "device")]


def test_url_from_host_and_role_alias():
    assert credentials_url("abc.credentials.iot.eu-west-1.amazonaws.com", "r") == \
        "https://abc.credentials.iot.eu-west-1.amazonaws.com/role-aliases/r/credentials"
    full = "https://h/role-aliases/x/credentials"
    assert credentials_url(full, "ignored") == full


def test_agent_uploads_with_iot_credentials(start_agent, iot, s3, s3_prefix):
    # SeaweedFS knows static keys only: it refuses any session token (AWS S3 requires one with
    # these credentials), so here the provider hands out none.
    iot.session_token = ""
    settings = s3.agent_settings(s3_prefix)
    del settings["edge_agent_s3_access_key_id"], settings["edge_agent_s3_secret_access_key"]
    host = iot.url.split("/role-aliases/")[0]
    agent = start_agent(**settings, sagemaker_edge_core_capture_data_push_period_seconds=0.1,
                        sagemaker_edge_core_device_name="pi-9",
                        sagemaker_edge_provider_aws_iot_cred_endpoint=host,
                        edge_agent_iot_role_alias=ALIAS,
                        sagemaker_edge_provider_aws_cert_file=str(iot.device_cert),
                        sagemaker_edge_provider_aws_cert_pk_file=str(iot.device_key),
                        sagemaker_edge_provider_aws_ca_cert_file=str(iot.ca_path))
    with agent.client() as client:
        ids = [client.capture_data("m", [np.zeros(4, np.uint8)], []) for _ in range(3)]
        for cid in ids:
            wait_for(lambda: client.get_capture_data_status(cid) != "IN_PROGRESS")
        assert {client.get_capture_data_status(c) for c in ids} == {"SUCCESS"}, agent.log()
    assert sorted(delivered_ids(s3_manifests(s3.client(), s3_prefix))) == sorted(ids)
    assert iot.requests == [(f"/role-aliases/{ALIAS}/credentials", "pi-9", "device")]
