"""The configuration reference stays true: docs/configuration.md lists every key of the
controller's ``Settings`` and the agent's ``AgentConfig`` (nested sections and list items
included) with its default written as YAML that loads to that default, and nothing else;
``controller.example.yaml`` and ``agent.example.yaml`` load with the real loaders and hold
only keys the models have.

The reference tables are the ones headed ``| key | default | meaning |`` under ``## Agent``
and ``## Controller``. A key cell holds one or more keys in backticks: ``a.b`` / ``c`` is
``a.b`` and ``a.c``; ``a.{b,c}`` is ``a.b`` and ``a.c``; ``X`` as a whole segment stands
for any name (``tiers.X.model``); ``name[].key`` is a key of each item of a list. The
default cell holds one YAML value in backticks per key (or one for all of them),
``required`` for a key without default, or words for a key whose default is unset
(``null``), whose meaning depends on other settings.
"""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from controller.settings import Settings, load_settings
from edge_agent.config import AgentConfig, load_config
from shared.yaml_guard import YamlShapeError, load_yaml_bounded, read_yaml_file
from tests.test_docs_examples import INLINE, _commands_in, check_example

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
CONTROLLER_EXAMPLE = ROOT / "controller.example.yaml"
AGENT_EXAMPLE = ROOT / "agent.example.yaml"
CODE = re.compile(r"`([^`]*)`")
HEADER = ["key", "default", "meaning"]


@dataclass(frozen=True)
class ModelKey:
    """A key of a settings model: dotted, ``[]`` after a list of models; a section is a
    nested model (documented or not, it has no default of its own to print)."""

    key: str
    field: FieldInfo
    section: bool


@dataclass(frozen=True)
class DocEntry:
    """One key as a reference table documents it: its pattern, its default cell's value for
    this key (a code span, or None where the cell says it in words), and the whole cell."""

    key: str
    value: str | None
    cell: str
    line: int

    def pattern(self) -> re.Pattern[str]:
        parts = [r"[^.\[\]]+" if part == "X" else re.escape(part) for part in self.key.split(".")]
        return re.compile(r"\.".join(parts))


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model class of ``Model`` or ``Model | None``; None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType):
        models = [a for a in get_args(annotation) if a is not type(None)]
        if len(models) == 1:
            return _nested_model(models[0])
    return None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    """The item model of ``list[Model]``; None for anything else."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        return _nested_model(item)
    return None


def model_keys(model: type[BaseModel], prefix: str = "") -> Iterator[ModelKey]:
    """Every key of ``model``, nested sections and list items recursively."""
    for name, field in model.model_fields.items():
        key = prefix + name
        nested = _nested_model(field.annotation)
        if nested is not None:
            yield ModelKey(key, field, section=True)
            yield from model_keys(nested, key + ".")
            continue
        yield ModelKey(key, field, section=False)
        item = _list_item_model(field.annotation)
        if item is not None:
            yield from model_keys(item, key + "[].")


def _cells(row: str) -> list[str]:
    """A Markdown table row's cells; a ``|`` inside a code span does not split."""
    cells: list[str] = []
    current, in_code = "", False
    for char in row.strip().removeprefix("|").removesuffix("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    return [*cells, current.strip()]


def _section_lines(text: str, title: str) -> list[tuple[int, str]]:
    """The numbered lines of the ``## <title>...`` section of ``text``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [(i + 1, lines[i]) for i in range(start, end)]


def _expand(cell: str) -> list[str]:
    """The keys a key cell names (see the module's docstring)."""
    spans = CODE.findall(cell)
    assert spans, f"no key in backticks in {cell!r}"
    parent = spans[0].rsplit(".", 1)[0] + "." if "." in spans[0] else ""
    keys = []
    for index, span in enumerate(spans):
        full = span if index == 0 or "." in span else parent + span
        braces = re.search(r"\{([^}]*)\}", full)
        if braces:
            keys += [
                full.replace(braces.group(0), alt.strip()) for alt in braces.group(1).split(",")
            ]
        else:
            keys.append(full)
    return keys


def doc_entries(text: str, title: str) -> list[DocEntry]:
    """Every key documented in the reference tables of one section of the document."""
    entries: list[DocEntry] = []
    in_table = False
    for number, line in _section_lines(text, title):
        if not line.lstrip().startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if [c.lower() for c in cells] == HEADER:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        assert len(cells) == 3, f"{REFERENCE.name}:{number}: expected 3 cells, got {cells}"
        keys = _expand(cells[0])
        values = CODE.findall(cells[1])
        if len(values) == 1:
            values *= len(keys)
        per_key: list[str | None] = [*values] if len(values) == len(keys) else [None] * len(keys)
        entries += [DocEntry(k, v, cells[1], number) for k, v in zip(keys, per_key, strict=True)]
    return entries


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def default_matches(default: Any, text: str) -> bool:
    """True if ``text``, read as YAML by the loader every config goes through, is
    ``default`` (a float may be printed rounded to 3 or more decimals when it has no short
    decimal form, like 1/3)."""
    try:
        value = load_yaml_bounded(text, source="default")
    except YamlShapeError:
        return False
    if isinstance(default, bool) or default is None:
        return value is default
    if isinstance(default, timedelta):
        try:
            return bool(TypeAdapter(timedelta).validate_python(value) == default)
        except ValidationError:
            return False
    if isinstance(default, Path):
        return isinstance(value, str) and Path(value) == default
    if isinstance(default, int):
        return type(value) is int and value == default
    if isinstance(default, float):
        if type(value) not in (int, float):
            return False
        rounded = len(repr(default)) > 12 and _decimals(text) >= 3
        return bool(value == default or (rounded and round(default, _decimals(text)) == value))
    return type(value) is type(default) and bool(value == default)


def _only_literals(cell: str) -> bool:
    """True if a default cell is nothing but code spans (and ``/`` between them)."""
    return not CODE.sub("", cell).replace("/", "").strip()


def reference_problems(model: type[BaseModel], text: str, title: str) -> list[str]:
    """What the ``title`` section of the reference gets wrong about ``model``."""
    keys = list(model_keys(model))
    entries = doc_entries(text, title)
    problems = []
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.key in seen:
            problems.append(
                f"line {entry.line}: {entry.key} documented again (line {seen[entry.key]})"
            )
        seen[entry.key] = entry.line
        if not any(entry.pattern().fullmatch(k.key) for k in keys):
            problems.append(f"line {entry.line}: {entry.key} is no key of {model.__name__}")
    for key in keys:
        matching = [e for e in entries if e.pattern().fullmatch(key.key)]
        if not matching:
            if not key.section:
                problems.append(f"{key.key} is not documented")
            continue
        entry = matching[0]
        where = f"line {entry.line}: {key.key}"
        if key.section:
            continue
        if key.field.is_required():
            if not entry.cell.lower().startswith("required"):
                problems.append(f"{where} has no default, the reference says {entry.cell!r}")
            continue
        default = key.field.get_default(call_default_factory=True)
        if default is None:
            if _only_literals(entry.cell) and entry.value not in ("null", "~"):
                problems.append(f"{where} is unset by default, the reference says {entry.cell!r}")
        elif entry.value is None or not default_matches(default, entry.value):
            problems.append(
                f"{where} defaults to {default!r}, the reference says {entry.cell!r}"
                " (write the default as YAML in backticks, one per key)"
            )
    return problems


@pytest.mark.parametrize(("model", "title"), [(AgentConfig, "Agent"), (Settings, "Controller")])
def test_reference_lists_every_key_with_its_default(model: type[BaseModel], title: str) -> None:
    """Every key of the settings model is in the reference with its default as YAML, and
    every key the reference lists exists in the model."""
    text = REFERENCE.read_text(encoding="utf-8")
    assert len(doc_entries(text, title)) > 50
    problems = reference_problems(model, text, title)
    assert not problems, f"docs/configuration.md, {title}:\n" + "\n".join(problems)


class _Inner(BaseModel):
    ratio: float = 1 / 3
    wait: timedelta = timedelta(days=7)
    names: list[str] = Field(default_factory=list)


class _Item(BaseModel):
    path: Path


class _Sample(BaseModel):
    size: int = 16 * 1024**3
    mode: str = "5"
    token: str | None = None
    inner: _Inner = Field(default_factory=_Inner)
    items: list[_Item] = Field(default_factory=list)


SAMPLE_REFERENCE = """\
## Sample

| key | default | meaning |
|---|---|---|
| `size` | 16 GiB | bytes |
| `mode` | `5` | a string, so `"5"` |
| `token` | `abc` | unset really |
| `inner.ratio` / `wait` | `0.333` (1/3) / `P7D` | ok |
| `inner.{names,gone}` | `[]` | one made-up key |
| `items[].path` | required | ok |
"""


def test_checker_catches_wrong_defaults_and_keys() -> None:
    """The checker reports a default written in words, a number where YAML would need a
    string, a value for an unset key, an undocumented key and a made-up one, and accepts
    the rest (rounded 1/3, an ISO 8601 duration, braces, ``/`` siblings, list items)."""
    problems = reference_problems(_Sample, SAMPLE_REFERENCE, "Sample")
    found = "\n".join(problems)
    assert "size defaults to 17179869184" in found
    assert "mode defaults to '5'" in found
    assert "token is unset by default" in found
    assert "items is not documented" in found
    assert "inner.gone is no key of _Sample" in found
    assert len(problems) == 5, found


def unknown_keys(raw: Any, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Keys in the YAML mapping ``raw`` that ``model`` does not have, recursively."""
    if not isinstance(raw, dict):
        return []
    found = []
    for name, value in raw.items():
        field = model.model_fields.get(name)
        if field is None:
            found.append(prefix + str(name))
            continue
        nested = _nested_model(field.annotation)
        item = _list_item_model(field.annotation)
        if nested is not None:
            found += unknown_keys(value, nested, f"{prefix}{name}.")
        elif item is not None and isinstance(value, list):
            for index, entry in enumerate(value):
                found += unknown_keys(entry, item, f"{prefix}{name}[{index}].")
    return found


def test_unknown_keys_are_found_in_nested_sections() -> None:
    """The example check finds a misspelt key inside a section and inside a list item."""
    raw = {"broker": {"usrname": "x"}, "environment": "demo"}
    assert unknown_keys(raw, Settings) == ["broker.usrname"]
    raw = {"device_id": "a", "models": [{"name": "m", "path": "p", "ctx": 1}]}
    assert unknown_keys(raw, AgentConfig) == ["models[0].ctx"]


@pytest.fixture
def no_edgefleet_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_edgefleet_environment")
def test_controller_example_loads_as_production() -> None:
    """controller.example.yaml loads with the controller's loader, every key in it is a key
    of the settings, and it is the production setup it says it is: provisioned identity
    keys, an external broker over mutual TLS, PostgreSQL, a passphrase file."""
    raw = read_yaml_file(CONTROLLER_EXAMPLE)
    assert unknown_keys(raw, Settings) == []
    settings = load_settings(CONTROLLER_EXAMPLE)
    assert settings.environment == "production"
    assert settings.attestation.effective_enrollment(settings.environment) == "provisioned"
    assert settings.broker.mode == "external" and settings.broker.tls() is not None
    assert settings.database_url.startswith("postgresql://")
    assert settings.updates.passphrase_file is not None
    assert settings.broker.password is None  # the example's secrets come from the environment


@pytest.mark.usefixtures("no_edgefleet_environment")
def test_controller_example_takes_its_secrets_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment variables the example's comments name for secrets are the ones the
    loader reads, and they win over the file."""
    text = CONTROLLER_EXAMPLE.read_text(encoding="utf-8")
    assert "EDGEFLEET_BROKER__PASSWORD" in text and "EDGEFLEET_DATABASE_URL" in text
    monkeypatch.setenv("EDGEFLEET_BROKER__PASSWORD", "a-long-real-broker-secret")
    url = "postgresql://edgefleet:a-long-real-db-secret@db.example.com/edgefleet"
    monkeypatch.setenv("EDGEFLEET_DATABASE_URL", url)
    settings = load_settings(CONTROLLER_EXAMPLE)
    assert settings.broker.password is not None
    assert settings.broker.password.get_secret_value() == "a-long-real-broker-secret"
    assert settings.database_url == url


def test_agent_example_loads_on_a_device_root(tmp_path: Path) -> None:
    """agent.example.yaml loads with the agent's loader, every key in it is a key of the
    agent config, and on a device root every file it names is taken under that root; it
    is the mutual-TLS device docs/production.md's broker expects, renewing its certificate."""
    raw = read_yaml_file(AGENT_EXAMPLE)
    assert unknown_keys(raw, AgentConfig) == []
    config = load_config(AGENT_EXAMPLE, root=tmp_path)
    mqtt = config.mqtt
    assert mqtt is not None and mqtt.tls() is not None and mqtt.renews_certificate
    named = [config.state_dir, config.updates.trusted_root, *(m.path for m in config.models)]
    named += [mqtt.ca_file, mqtt.cert_file, mqtt.key_file]
    assert all(p is not None and p.is_relative_to(tmp_path) for p in named), named
    assert config.state_dir == tmp_path / "var" / "lib" / "edgefleet-agent"
    assert config.updates.enabled


def _comment_commands(path: Path) -> Iterator[tuple[int, str]]:
    """Our command lines in a YAML file's comments: in backticks, or a whole comment line
    indented as a shell example (``#   edgefleet serve ...``)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        _, hash_, comment = line.partition("#")
        if not hash_:
            continue
        texts = [m.group(1) for m in INLINE.finditer(comment)]
        if comment.startswith("  "):
            texts.append(comment.strip())
        for text in texts:
            for command in _commands_in(" ".join(text.split())):
                yield number, command


@pytest.mark.parametrize("path", [CONTROLLER_EXAMPLE, AGENT_EXAMPLE], ids=lambda p: p.name)
def test_commands_in_the_examples_parse(path: Path) -> None:
    """Every edgefleet and edge-agent command the example's comments show names existing
    subcommands and options those accept."""
    commands = list(_comment_commands(path))
    assert commands
    problems = [f"{path.name}:{n}: {c}\n    -> {p}" for n, c in commands for p in check_example(c)]
    assert not problems, "\n".join(problems)
