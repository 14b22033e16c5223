"""Package versions: semantic versions (semver.org 2.0.0) with missing parts as zero.

`1`, `1.0` and `1.0.0` are the same version (Edge Manager packages were numbered `1.0`); a
pre-release (`1.2.0-rc1`) comes before its release and is ordered by SemVer's pre-release
precedence (identifiers left to right; numeric ones numerically and below alphanumeric ones;
a longer list above its prefix); build metadata (`1.2.0+build.7`) is kept and shown but, as
SemVer says, takes no part in precedence: `1.2.0+a` and `1.2.0+b` are the same version (the
model repository treats two packages that differ only there as one version, and different
bytes under one version as a conflict). docs/PACKAGES.md, "Versions", is the reference.

What is refused, with the reason: an empty text, more than three numeric parts, a part that is
not a number, a number with a leading zero (`1.02`: is it 2?), a leading `v`, an empty or
malformed pre-release or build identifier, and texts longer than MAX_LENGTH.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import total_ordering

MAX_LENGTH = 128
_IDENTIFIER = re.compile(r"[0-9A-Za-z-]+")
_NUMBER = re.compile(r"0|[1-9][0-9]*")


def _numeric(identifier: str) -> bool:
    return identifier.isascii() and identifier.isdigit()


@total_ordering
@dataclass(frozen=True, eq=False)
class Version:
    """A parsed version. Compare, sort and hash by precedence (build metadata ignored)."""
    major: int
    minor: int = 0
    patch: int = 0
    prerelease: tuple[str, ...] = ()
    build: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> "Version":
        """The version `text` names; ValueError saying what is wrong with it."""
        if not isinstance(text, str):
            raise ValueError(f"a version is a string, not {type(text).__name__}")
        if not text:
            raise ValueError("the version is empty: use MAJOR[.MINOR[.PATCH]][-PRERELEASE]"
                             "[+BUILD], e.g. 1.2.0")
        if len(text) > MAX_LENGTH:
            raise ValueError(f"the version is {len(text)} characters long, more than "
                             f"{MAX_LENGTH}")
        core, plus, build_text = text.partition("+")
        core, dash, pre_text = core.partition("-")
        if core[:1] in ("v", "V"):
            raise ValueError(f"version {text!r}: write it without the leading {core[0]!r} "
                             f"({text[1:]!r})")
        parts = core.split(".")
        if len(parts) > 3:
            raise ValueError(f"version {text!r} has {len(parts)} numeric parts; a version has "
                             "at most three (MAJOR.MINOR.PATCH)")
        numbers = []
        for part in parts:
            if not part.isascii() or not part.isdigit():
                raise ValueError(f"version {text!r}: {part!r} is not a number (a version is "
                                 "MAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD], e.g. 1.2.0-rc1)")
            if not _NUMBER.fullmatch(part):
                raise ValueError(f"version {text!r}: {part!r} has a leading zero, which makes "
                                 "it ambiguous; write it without")
            numbers.append(int(part))
        numbers += [0] * (3 - len(numbers))
        prerelease = _identifiers(text, "pre-release", pre_text, numbers_strict=True) \
            if dash else ()
        build = _identifiers(text, "build metadata", build_text, numbers_strict=False) \
            if plus else ()
        return cls(numbers[0], numbers[1], numbers[2], prerelease, build)

    @property
    def is_prerelease(self) -> bool:
        return bool(self.prerelease)

    @property
    def release(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def sort_key(self) -> tuple:
        """What orders versions: the release numbers, then a release above its pre-releases,
        which compare identifier by identifier (numbers below words)."""
        if not self.prerelease:
            return (*self.release, (1,))
        return (*self.release, (0, *((0, int(i), "") if _numeric(i) else (1, 0, i)
                                     for i in self.prerelease)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() == other.sort_key()

    def __lt__(self, other: "Version") -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def __hash__(self) -> int:
        return hash(self.sort_key())

    def __str__(self) -> str:
        """The full form: missing parts written out (`1.0` is shown as `1.0.0`)."""
        text = ".".join(map(str, self.release))
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + ".".join(self.build)
        return text


def _identifiers(text: str, what: str, value: str, numbers_strict: bool) -> tuple[str, ...]:
    identifiers = tuple(value.split("."))
    for identifier in identifiers:
        if not _IDENTIFIER.fullmatch(identifier) or not identifier.isascii():
            raise ValueError(f"version {text!r}: the {what} must be dot-separated identifiers "
                             f"of letters, digits and '-', none empty; {identifier!r} is not")
        if numbers_strict and _numeric(identifier) and not _NUMBER.fullmatch(identifier):
            raise ValueError(f"version {text!r}: the numeric {what} identifier {identifier!r} "
                             "has a leading zero")
    return identifiers


def parse_or_none(text: str) -> Version | None:
    """The version, or None for a text that does not parse (a package made before versions
    were checked may carry a free-form one)."""
    try:
        return Version.parse(text)
    except ValueError:
        return None
