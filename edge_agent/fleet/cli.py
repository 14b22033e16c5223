"""`edge-agent fleet publish|status|promote|reconcile|rollback`: the operator's side of a
fleet rollout (docs/FLEET.md), with no service of our own: the bucket holds the packages,
the signed documents and the boards' status.

Every new document takes the next sequence by writing PREFIX/fleets/<fleet>/sequences/
<sequence>.json with If-None-Match: * (a conditional write: two operators cannot take the
same number; the second is told to run again), then replaces PREFIX/fleets/<fleet>/
deployment.json, which the boards read. Credentials as the AWS CLI reads them: the
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), else AWS_PROFILE's
(or the default) section of ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE).

Only argparse at import time (register runs for every `edge-agent` command); the commands
import requests and PyNaCl, never NumPy or a TFLite runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_EXPIRES_DAYS = 30.0
DEFAULT_SILENT_SECONDS = 3 * (600 + 120)  # three poll periods of the boards' defaults


def register(sub) -> None:
    fleet = sub.add_parser("fleet", help="stage model versions across a fleet of boards "
                           "through S3-compatible storage (docs/FLEET.md)")
    actions = fleet.add_subparsers(dest="action", required=True)

    def common(parser, key: bool = True):
        parser.add_argument("--url", required=True, help="s3://BUCKET/PREFIX of the fleet")
        parser.add_argument("--fleet", required=True, help="the fleet's name")
        parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL", ""),
                            help="an S3-compatible store (default: AWS S3; $AWS_ENDPOINT_URL)")
        parser.add_argument("--region", default=os.environ.get(
            "AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")))
        if key:
            parser.add_argument("--key", required=True, help="the deployment signing key "
                                "(edge-agent keygen), not the packaging key")
            parser.add_argument("--trust", default="",
                                help="a folder of other operators' deployment keys (*.pub) "
                                     "whose documents may be built on (default: only --key's)")
            parser.add_argument("--expires-days", type=float, default=DEFAULT_EXPIRES_DAYS,
                                help="boards report the document stale after this long "
                                     "(default %(default)g)")

    def selector(parser):
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--percent", type=float, help="the boards of this stable percentage")
        group.add_argument("--devices", help="these boards (comma-separated names)")
        group.add_argument("--name-contains", help="boards whose name contains this")

    publish = actions.add_parser("publish", help="upload packages and publish a document: "
                                 "without a stage option the baseline, with one a stage")
    common(publish)
    publish.add_argument("--model", action="append", required=True, metavar="NAME=PACKAGE",
                         help="a model and its signed package (.tar.gz; repeatable)")
    selector(publish)
    publish.add_argument("--policy", choices=("rollback_on_failure", "do_nothing"),
                         help="what reconcile does with a failed stage (default: unchanged, "
                              "first rollback_on_failure)")
    publish.set_defaults(func=cmd_publish)

    status = actions.add_parser("status", help="one line per board and model")
    common(status, key=False)
    status.add_argument("--json", action="store_true")
    status.add_argument("--mqtt-url", default="", help="read the boards' retained status "
                        "messages from this broker (mqtt[s]://HOST[:PORT]) instead of the "
                        "status objects (needs paho-mqtt)")
    status.add_argument("--mqtt-ca", default="", help="CA certificate of an mqtts:// broker")
    status.add_argument("--mqtt-cert", default="", help="client certificate for the broker")
    status.add_argument("--mqtt-key", default="", help="its private key")
    status.add_argument("--silent-seconds", type=float, default=DEFAULT_SILENT_SECONDS,
                        help="boards not heard of for this long are flagged (default "
                             "%(default)g: three of the boards' default poll periods)")
    status.set_defaults(func=cmd_status)

    promote = actions.add_parser("promote", help="widen a model's stage (no stage option: "
                                 "to every board, as the baseline); refused while it has failures")
    common(promote)
    promote.add_argument("name")
    selector(promote)
    promote.set_defaults(func=cmd_promote)

    reconcile = actions.add_parser("reconcile", help="apply the failure policy: "
                                   "rollback_on_failure returns failed stages to the baseline")
    common(reconcile)
    reconcile.set_defaults(func=cmd_reconcile)

    rollback = actions.add_parser("rollback", help="the previous baseline version of NAME "
                                  "everywhere, and no stage for it")
    common(rollback)
    rollback.add_argument("name")
    rollback.set_defaults(func=cmd_rollback)


# --- the bucket -------------------------------------------------------------------------------

class FleetError(Exception):
    pass


def credentials(environ=os.environ):
    from edge_agent.capture.s3 import Credentials

    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"],
                           environ.get("AWS_SESSION_TOKEN", ""))
    import configparser

    path = environ.get("AWS_SHARED_CREDENTIALS_FILE",
                       os.path.join(os.path.expanduser("~"), ".aws", "credentials"))
    profile = environ.get("AWS_PROFILE", "default")
    parser = configparser.RawConfigParser()
    parser.read(path)
    if parser.has_section(profile) and parser.has_option(profile, "aws_access_key_id"):
        section = parser[profile]
        return Credentials(section["aws_access_key_id"], section.get("aws_secret_access_key", ""),
                           section.get("aws_session_token", ""))
    raise FleetError(f"no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                     f"AWS_PROFILE to a section of {path}")


class Bucket:
    """The fleet's objects under s3://BUCKET/PREFIX."""

    def __init__(self, args):
        from edge_agent.capture.s3 import S3Client, StaticCredentials
        from edge_agent.fleet.board import split_url

        if not args.url.startswith("s3://"):
            raise FleetError(f"--url: expected s3://BUCKET/PREFIX, got {args.url!r}")
        bucket, self.prefix = split_url(args.url)
        self.fleet = args.fleet
        self.client = S3Client(bucket, args.region, StaticCredentials(credentials()),
                               endpoint_url=args.endpoint_url, timeout=60)

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def read(self, key: str) -> bytes | None:
        response = self.client.send("GET", self.key(key), accept=(404,))
        return None if response.status_code == 404 else response.content

    def current(self, keys) -> tuple[object, int]:
        """(the fleet's current document or None, the highest sequence taken)."""
        from edge_agent.fleet import document as d

        taken = [int(k.rsplit("/", 1)[1].split(".")[0]) for k in
                 self.client.list_keys(self.key("fleets", self.fleet, "sequences") + "/")
                 if k.rsplit("/", 1)[1].split(".")[0].isdigit()]
        data = self.read(f"fleets/{self.fleet}/deployment.json")
        document = d.verify(data, keys).document if data is not None else None
        highest = max(taken + [document.sequence if document else 0])
        # Another publisher may have claimed a sequence and not replaced deployment.json yet
        # (or lost the race to replace it): build on its document, not the one before, or its
        # change would be undone without anyone noticing. A claim that does not verify is
        # not built on.
        for sequence in sorted(set(taken), reverse=True):
            if document is not None and sequence <= document.sequence:
                break
            claimed = self.read(f"fleets/{self.fleet}/sequences/{sequence:010d}.json")
            try:
                newer = d.verify(claimed, keys).document if claimed is not None else None
            except d.DocumentError:
                continue
            if newer is not None and newer.fleet == self.fleet and newer.sequence == sequence:
                document = newer
                break
        return document, highest

    def write(self, document, key) -> None:
        from edge_agent.fleet import document as d
        from edge_agent.fleet import transfer

        data = d.sign(document, key)
        claim = self.key("fleets", self.fleet, "sequences", f"{document.sequence:010d}.json")
        if not transfer.put_if_absent(self.client, claim, data):
            raise FleetError(f"sequence {document.sequence} was taken by another publisher "
                             "meanwhile: run the command again")
        self.client.put_object(self.key("fleets", self.fleet, "deployment.json"), data)

    def statuses(self) -> list[dict]:
        found = []
        for key in self.client.list_keys(self.key("status", self.fleet) + "/"):
            if key.endswith(".json"):
                try:
                    found.append(json.loads(self.client.get_object(key)))
                except ValueError:
                    continue
        return found


def _package_info(path: str) -> tuple[str, str]:
    """(name, version) of a signed package archive, from its manifest (the boards verify its
    signature; here it names the object)."""
    import tarfile

    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                if member.name.lstrip("./") == "manifest.json" and member.isfile():
                    handle = archive.extractfile(member)
                    manifest = json.loads(handle.read(1 << 20)) if handle else {}
                    return str(manifest["name"]), str(manifest["version"])
    except (OSError, tarfile.TarError, ValueError, KeyError) as e:
        raise FleetError(f"'{path}' is not a package archive: {e}") from None
    raise FleetError(f"'{path}' holds no manifest.json: build it with `edge-agent package "
                     "--output NAME.tar.gz`")


def _upload(bucket: Bucket, name: str, path: str):
    import hashlib

    from edge_agent.fleet import document as d
    from edge_agent.fleet import transfer

    named, version = _package_info(path)
    if named != name:
        raise FleetError(f"'{path}' is a package of model '{named}', not '{name}'")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    size = os.path.getsize(path)
    key = f"packages/{name}/{version}-{digest.hexdigest()[:16]}.tar.gz"
    if transfer.exists(bucket.client, bucket.key(key)):
        print(f"{name} {version}: already in the bucket ({key})", file=sys.stderr)
    else:
        if sys.stderr.isatty():
            print(f"{name} {version}: uploading {size / 1048576:.1f} MiB...", file=sys.stderr)
        transfer.upload_file(bucket.client, bucket.key(key), path)
        print(f"{name} {version}: uploaded ({key})", file=sys.stderr)
    return d.Package(key, digest.hexdigest(), version, size)


def _selector(args) -> dict | None:
    if args.percent is not None:
        if not 0 <= args.percent <= 100:
            raise FleetError("--percent must be 0 to 100")
        return {"percent": args.percent}
    if args.devices:
        return {"devices": tuple(n.strip() for n in args.devices.split(",") if n.strip())}
    if args.name_contains:
        return {"name_contains": args.name_contains}
    return None


def _next(args, bucket: Bucket, change) -> object:
    """Read the current document, change it, sign and write it with the next sequence."""
    import dataclasses

    from edge_agent.fleet import document as d
    from edge_agent.packaging.keys import read_private_key

    key = read_private_key(args.key)
    current, highest = bucket.current(_keys(args, key))
    if current is None:
        current = d.Document(fleet=args.fleet, sequence=0, expires=0, baseline={})
    document = change(current)
    document = dataclasses.replace(
        document, sequence=highest + 1, expires=int(time.time() + args.expires_days * 86400),
        created_at=d.format_time(time.time()))
    bucket.write(document, key)
    print(f"fleet {args.fleet}: published sequence {document.sequence}")
    return document


def _keys(args, key) -> dict:
    """The keys the current document may be signed with: --key's, and --trust's."""
    from edge_agent.fleet.document import TRUST_KEY
    from edge_agent.packaging.keys import key_id, load_trust

    keys = {key_id(key.verify_key): key.verify_key}
    if args.trust:
        keys.update(load_trust(args.trust, setting=f"--trust (like {TRUST_KEY})"))
    return keys


def _without(stages, name: str):
    from edge_agent.fleet import document as d

    kept = []
    for stage in stages:
        models = {n: p for n, p in stage.models.items() if n != name}
        if models:
            kept.append(d.Stage(models, stage.devices, stage.name_contains, stage.percent))
    return tuple(kept)


def _with_history(document, name: str, package):
    history = dict(document.history)
    old = document.baseline.get(name)
    if old is not None and old != package:
        history[name] = ((old,) + tuple(history.get(name, ())))[:5]
    return history


# --- the commands -----------------------------------------------------------------------------

def _run(func):
    from edge_agent.capture.destinations import DeliveryError
    from edge_agent.errors import AgentError
    from edge_agent.fleet.document import DocumentError

    try:
        return func()
    except (FleetError, DocumentError) as e:
        print(f"edge-agent fleet: {e}", file=sys.stderr)
    except DeliveryError as e:
        print(f"edge-agent fleet: the store: {e}", file=sys.stderr)
    except AgentError as e:
        print(f"edge-agent fleet: {e.message}", file=sys.stderr)
    return 1


def cmd_publish(args) -> int:
    def run():
        import dataclasses

        from edge_agent.fleet import document as d

        bucket = Bucket(args)
        models = {}
        for item in args.model:
            name, sep, path = item.partition("=")
            if not sep:
                raise FleetError(f"--model {item!r}: expected NAME=PACKAGE")
            models[d.check_name(name, "model name")] = _upload(bucket, name, path)
        selector = _selector(args)

        def change(current):
            baseline, stages, history = dict(current.baseline), current.stages, current.history
            for name, package in models.items():
                stages = _without(stages, name)
                if selector is None:
                    history = _with_history(dataclasses.replace(current, history=history,
                                                                baseline=baseline), name, package)
                    baseline[name] = package
            if selector is not None:
                missing = [n for n in models if n not in baseline]
                if missing:
                    raise FleetError(f"{', '.join(missing)}: no baseline yet; publish one "
                                     "without a stage option first")
                stages = stages + (d.Stage(models, **selector),)
            return dataclasses.replace(current, baseline=baseline, stages=stages,
                                       history=history, policy=args.policy or current.policy)
        _next(args, bucket, change)
        return 0
    return _run(run)


def _failures(statuses, document, name: str) -> list[str]:
    """Boards that report the staged version of `name` failed."""
    stage = document.stage_of(name) if document else None
    if stage is None:
        return []
    version = stage.models[name].version
    return sorted(s["device"] for s in statuses
                  if s.get("models", {}).get(name, {}).get("version") == version
                  and s["models"][name].get("state") == "failed")


def cmd_promote(args) -> int:
    def run():
        import dataclasses

        from edge_agent.fleet import document as d

        bucket = Bucket(args)
        statuses = bucket.statuses()
        selector = _selector(args)

        def change(current):
            stage = current.stage_of(args.name)
            if stage is None:
                raise FleetError(f"model '{args.name}' is in no stage: nothing to promote")
            failed = _failures(statuses, current, args.name)
            if failed:
                raise FleetError(f"model '{args.name}' {stage.models[args.name].version} failed "
                                 f"on {', '.join(failed)}: not promoted (fleet reconcile "
                                 "applies the failure policy)")
            package = stage.models[args.name]
            stages = _without(current.stages, args.name)
            if selector is None:
                baseline = dict(current.baseline)
                history = _with_history(current, args.name, package)
                baseline[args.name] = package
                return dataclasses.replace(current, baseline=baseline, stages=stages,
                                           history=history)
            return dataclasses.replace(
                current, stages=stages + (d.Stage({args.name: package}, **selector),))
        _next(args, bucket, change)
        return 0
    return _run(run)


def cmd_reconcile(args) -> int:
    def run():
        import dataclasses

        from edge_agent.packaging.keys import read_private_key

        bucket = Bucket(args)
        current, _ = bucket.current(_keys(args, read_private_key(args.key)))
        if current is None:
            print(f"fleet {args.fleet}: no deployment published")
            return 0
        statuses = bucket.statuses()
        failed = {name: _failures(statuses, current, name)
                  for stage in current.stages for name in stage.models}
        failed = {n: devices for n, devices in failed.items() if devices}
        if not failed:
            print(f"fleet {args.fleet}: sequence {current.sequence}: no failures")
            return 0
        for name, devices in sorted(failed.items()):
            print(f"model {name}: failed on {', '.join(devices)}")
        if current.policy == "do_nothing":
            print("failure policy do_nothing: nothing changed")
            return 0

        def change(doc):
            stages = doc.stages
            for name in failed:
                stages = _without(stages, name)
            return dataclasses.replace(doc, stages=stages)
        _next(args, bucket, change)
        print(f"rollback_on_failure: {', '.join(sorted(failed))} back to the baseline")
        return 0
    return _run(run)


def cmd_rollback(args) -> int:
    def run():
        import dataclasses

        bucket = Bucket(args)

        def change(current):
            previous = current.history.get(args.name, ())
            if not previous:
                raise FleetError(f"model '{args.name}' has no earlier baseline to roll back to")
            baseline = dict(current.baseline)
            baseline[args.name] = previous[0]
            history = dict(current.history)
            history[args.name] = previous[1:]
            print(f"model {args.name}: baseline back to {previous[0].version}")
            return dataclasses.replace(current, baseline=baseline, history=history,
                                       stages=_without(current.stages, args.name))
        _next(args, bucket, change)
        return 0
    return _run(run)


def retained_statuses(args, quiet_seconds: float = 1.0, limit_seconds: float = 15.0) -> list[dict]:
    """The retained messages on edge-agent/<fleet>/+/deployment: the broker sends them all
    at subscription; collected until none came for `quiet_seconds`."""
    import ssl
    import threading
    from urllib.parse import urlsplit

    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise FleetError("--mqtt-url needs paho-mqtt (pip install paho-mqtt)") from None

    parts = urlsplit(args.mqtt_url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise FleetError(f"--mqtt-url: expected mqtt[s]://HOST[:PORT], got {args.mqtt_url!r}")
    found: dict[str, dict] = {}
    subscribed = threading.Event()
    last = [time.monotonic()]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                         client_id=f"edge-agent-fleet-status-{os.getpid()}")
    if parts.username:
        client.username_pw_set(parts.username, parts.password)
    if parts.scheme == "mqtts":
        client.tls_set(ca_certs=args.mqtt_ca or None, certfile=args.mqtt_cert or None,
                       keyfile=args.mqtt_key or None, cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(c, userdata, flags, reason_code, properties):
        c.subscribe(f"edge-agent/{args.fleet}/+/deployment", qos=1)

    def on_message(c, userdata, message):
        last[0] = time.monotonic()
        try:
            found[message.topic] = json.loads(message.payload)
        except ValueError:
            pass

    def on_subscribe(c, userdata, mid, reason_codes, properties):
        last[0] = time.monotonic()
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883))
    except (OSError, ValueError) as e:  # refused, unreachable, a TLS handshake that failed
        raise FleetError(f"cannot reach the broker {args.mqtt_url}: {e}") from None
    client.loop_start()
    try:
        if not subscribed.wait(limit_seconds):
            raise FleetError(f"the broker {args.mqtt_url} did not answer the subscription")
        deadline = time.monotonic() + limit_seconds
        while time.monotonic() - last[0] < quiet_seconds and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return list(found.values())


def cmd_status(args) -> int:
    def run():
        from edge_agent.fleet import document as d

        statuses = retained_statuses(args) if args.mqtt_url else Bucket(args).statuses()
        now = time.time()
        rows = []
        for status in sorted(statuses, key=lambda s: s.get("device", "")):
            heard = d.parse_time(status["time"]) if status.get("time") else 0
            silent = now - heard > args.silent_seconds
            for name, model in sorted(status.get("models", {}).items()) or [("", {})]:
                rows.append({"device": status.get("device", ""), "sequence": status.get("sequence", 0),
                             "model": name, "version": model.get("version", ""),
                             "serving": model.get("serving", ""),
                             "state": model.get("state", ""), "reason": model.get("reason", ""),
                             "stale": bool(status.get("stale")), "silent": silent,
                             "failed": model.get("state") == "failed",
                             "refused": [r.get("reason", "") for r in status.get("refused", [])],
                             "unreadable": [u.get("reason", "")
                                            for u in status.get("unreadable", [])],
                             "time": status.get("time", "")})
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        for row in rows:
            flags = [f for f in ("silent", "stale", "failed") if row[f]]
            if row["refused"]:
                flags.append("refused: " + "; ".join(row["refused"]))
            if row["unreadable"]:
                flags.append("unreadable: " + "; ".join(row["unreadable"]))
            print(f"{row['device']:<24} seq {row['sequence']:<5} {row['model']:<16} "
                  f"{row['version']:<10} serving {row['serving'] or '-':<10} {row['state']:<11} "
                  f"{' '.join(('!' + f) for f in flags)} {row['reason']}".rstrip())
        return 0
    return _run(run)


def parser() -> argparse.ArgumentParser:
    """`edge-agent fleet ...` alone: the agent's full parser imports the client (and NumPy
    with it), which an operator's laptop need not have."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    register(parser.add_subparsers(dest="command", required=True))
    return parser
