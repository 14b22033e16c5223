"""Writes the generated parts of the docs (`make docs`); tests check they are current."""
from __future__ import annotations

import re
from pathlib import Path

from edge_agent.config import markdown_table

DOCS = Path(__file__).resolve().parents[2] / "docs"
CONFIGURATION = DOCS / "CONFIGURATION.md"
_KEYS = re.compile(r"(<!-- keys:begin -->\n).*?(<!-- keys:end -->)", re.S)


def render(text: str) -> str:
    return _KEYS.sub(lambda m: m.group(1) + markdown_table() + m.group(2), text)


def main() -> None:
    CONFIGURATION.write_text(render(CONFIGURATION.read_text()))


if __name__ == "__main__":
    main()
