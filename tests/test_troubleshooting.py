"""docs/troubleshooting.md quotes messages the software really prints: every ``### `message```
heading is found in the Python source, so rewording a message without the page fails here."""

import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "troubleshooting.md"
SOURCE_DIRS = ("controller", "edge_agent", "shared")
HEADING = re.compile(r"^### `([^`]+)`", re.M)
# ``<host>`` and ``...`` stand for the varying parts of a message.
PLACEHOLDER = re.compile(r"<[^<>]*>|…|\.\.\.")
CODE = re.compile(r"[a-z][a-z0-9_]*")
MIN_FRAGMENT = 7


@cache
def sources() -> dict[Path, str]:
    """Every Python source file of the three packages, by path."""
    return {
        path: path.read_text(encoding="utf-8")
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def fragments(message: str) -> list[str]:
    """The literal parts of a quoted message, between its placeholders."""
    return [part.strip() for part in PLACEHOLDER.split(message) if part.strip()]


def found(message: str) -> bool:
    """A reason code (``silent``) must occur as a string literal; a sentence must have all
    its literal fragments in one source file, one of them at least MIN_FRAGMENT long."""
    if CODE.fullmatch(message):
        return any(f'"{message}"' in text for text in sources().values())
    parts = fragments(message)
    if not parts or max(len(p) for p in parts) < MIN_FRAGMENT:
        return False
    return any(all(p in text for p in parts) for text in sources().values())


def test_the_page_quotes_messages() -> None:
    """The page has quoted-message headings to check (the pattern did not silently miss)."""
    assert len(HEADING.findall(PAGE.read_text(encoding="utf-8"))) >= 20


def test_every_quoted_message_occurs_in_the_source() -> None:
    """Each message quoted at the start of a ### heading is printed by some source file."""
    missing = [m for m in HEADING.findall(PAGE.read_text(encoding="utf-8")) if not found(m)]
    assert not missing, f"quoted in docs/troubleshooting.md but not in the source: {missing}"


def test_a_reworded_message_is_not_found() -> None:
    """The check rejects text that is not in the source and too-short fragments."""
    assert found("broker refused connection: <reason>")
    assert not found("broker declined the connection: <reason>")
    assert not found("no <x> in")
    assert found("silent")
    assert not found("no_such_reason_code_anywhere")


def test_the_readme_links_the_page() -> None:
    """README.md points operators at the troubleshooting page."""
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text(encoding="utf-8")
