"""Which version of a name should serve: a pure decision over what the sources offer.

- A pin (a rollback's or `unpin`-able runtime pin first, then edge_agent_model_pins) chooses
  its version, pre-release or not, when a whole copy of it is held and it has not failed.
- Otherwise the highest version that is not a pre-release and has not failed.
- Versions compare as semantic versions with missing parts as zero (edge_agent.packaging.versions).
A version that failed is named by its bytes (the manifest's sha256): other bytes under the
same version are another candidate, the same bytes are never tried again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable

from edge_agent.models.lifecycle.store import StoredVersion
from edge_agent.packaging.versions import Version


@dataclass(frozen=True)
class Choice:
    """The version that should serve (None: nothing may), and why when it is not the
    default choice or there is none."""
    version: StoredVersion | None
    note: str = ""


def parse(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except ValueError:
        return None


def same_version(a: str, b: str) -> bool:
    parsed_a, parsed_b = parse(a), parse(b)
    return parsed_a is not None and parsed_a == parsed_b


def choose(candidates: Iterable[StoredVersion], pin: str | None,
           failed: Collection[str]) -> Choice:
    """The version to serve among `candidates` (whole copies of one name), given its pin
    (None: none) and the digests of versions that failed."""
    usable = [(v, parsed) for v in candidates if v.digest not in failed
              and (parsed := parse(v.version)) is not None]
    if pin is not None:
        wanted = parse(pin)
        pinned = [v for v, parsed in usable if parsed == wanted]
        if pinned:
            return Choice(pinned[0], f"pinned to {pin}")
        return Choice(None, f"pinned to {pin}, which is not held or has failed")
    releases = [(parsed, v) for v, parsed in usable if not parsed.is_prerelease]
    if not releases:
        return Choice(None, "no release version that has not failed (a pre-release serves "
                            "only when pinned)")
    return Choice(max(releases, key=lambda pair: pair[0])[1])


def newest_first(versions: Iterable[StoredVersion]) -> list[StoredVersion]:
    """Versions ordered highest first (those that do not parse last)."""
    def key(v: StoredVersion):
        parsed = parse(v.version)
        return (parsed is not None, parsed.sort_key() if parsed is not None else ())
    return sorted(versions, key=key, reverse=True)
