"""Every shell example in README.md and docs/*.md that runs one of our commands names a
subcommand that exists and only options that subcommand accepts.

Examples are the fenced ``bash``/``sh``/``shell``/``console`` blocks (and unlabelled ones),
with ``\\`` continuations joined, plus inline code spans that start with a command. Lines
that are not our commands (``curl``, ``export``, output) are skipped. ``edgefleet`` and
``edge-agent`` are checked with their own click parsers (unknown options, options missing
their value and extra arguments fail; values are not converted),
the benchmarks against the options their ``--help`` lists, ``scripts/dev`` against its usage.
Placeholders are allowed where documentation writes them: ``[--flag N]`` (optional parts),
``<ID>``/``ID`` (positional values), ``…``/``...`` (more follows) and ``a|b`` (alternatives).
"""

import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from controller.cli.main import app as edgefleet_app
from edge_agent.cli import app as edge_agent_app

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "shell-session"}
BENCHMARK = re.compile(r"^(?:\.venv/bin/)?python3? -m benchmarks\.(\w+)(?:\s|$)")
PROGRAMS = ("edgefleet", "edge-agent", "scripts/dev")
ELLIPSES = {"…", "...", ".."}
FENCE = re.compile(r"^( *)(```+|~~~+)[ \t]*([\w-]*)[^\n]*\n(.*?)^\1\2[ \t]*$", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)?)`(?!`)")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
REDIRECTIONS = {">", ">>", "<", "2>", "2>>", "&>"}


@dataclass(frozen=True)
class Example:
    """One command line found in a document: where, and its text (continuations joined)."""

    source: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.text}"


def _joined_lines(block: str, first_line: int) -> Iterator[tuple[int, str]]:
    """Lines of a shell block with ``\\`` continuations joined, numbered from ``first_line``."""
    pending: list[str] = []
    start = first_line
    for offset, raw in enumerate(block.splitlines()):
        line = raw.rstrip()
        if not pending:
            start = first_line + offset
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        yield start, " ".join([*pending, line]).strip()
        pending = []
    if pending:
        yield start, " ".join(pending).strip()


def _commands_in(line: str) -> Iterator[str]:
    """Our command lines in one shell line: after a ``$`` prompt, across ``|``/``&&``/``;``,
    past leading ``VAR=value`` assignments; everything else is not ours."""
    line = line.removeprefix("$ ").strip()
    for part in re.split(r"\s(?:\|\||&&|\|)\s|;\s", line):
        words = part.split()
        while words and ENV_ASSIGNMENT.match(words[0]):
            words.pop(0)
        text = " ".join(words).strip()
        if BENCHMARK.match(text) or any(
            text == program or text.startswith(program + " ") for program in PROGRAMS
        ):
            yield text


def extract_examples(text: str, source: str) -> list[Example]:
    """Our command lines in a Markdown document: shell code blocks and inline code spans."""
    examples = []
    outside = text
    for block in FENCE.finditer(text):
        # Blank the block out (keeping its newlines) so inline spans are not looked for in it.
        outside = outside.replace(block.group(0), "\n" * block.group(0).count("\n"), 1)
        if block.group(3).lower() not in SHELL_LANGUAGES:
            continue
        first = text.count("\n", 0, block.start(4)) + 1
        for number, line in _joined_lines(block.group(4), first):
            examples += [Example(source, number, c) for c in _commands_in(line)]
    for span in INLINE.finditer(outside):
        line = " ".join(span.group(1).split())
        number = outside.count("\n", 0, span.start()) + 1
        examples += [Example(source, number, c) for c in _commands_in(line)]
    return examples


def _words(text: str) -> list[str]:
    """Shell words without comments, redirections or the brackets of optional parts."""
    words = shlex.split(text, comments=True)
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in REDIRECTIONS:
            skip = True
            continue
        word = word.lstrip("[").rstrip("]") if word.startswith("[") or word.endswith("]") else word
        if word:
            kept.append(word)
    return kept


def _is_placeholder(word: str) -> bool:
    """``<ID>``, ``ID``, ``NAME``, ``…``: a value the reader fills in, not a subcommand name."""
    return (
        word in ELLIPSES
        or (word.startswith("<") and word.endswith(">"))
        or bool(re.fullmatch(r"[A-Z][A-Z0-9_.]*", word))
    )


def check_click(root: Any, path: list[str], args: list[str]) -> list[str]:
    """Problems of ``path args`` against click command ``root`` (a group walks subcommands)."""
    command = root
    while isinstance(command, TyperGroup) and args and not args[0].startswith("-"):
        word, args = args[0], args[1:]
        if _is_placeholder(word):
            return []  # "edgefleet rollouts …": nothing more to check
        if "|" in word:  # "attest golden add|list|remove": each alternative must exist
            return [
                p for name in word.split("|") for p in check_click(command, path, [name, *args])
            ]
        sub = command.commands.get(word)
        if sub is None:
            known = ", ".join(sorted(command.commands))
            return [f"'{' '.join(path)}' has no subcommand {word!r} (it has: {known})"]
        command, path = sub, [*path, word]
    name = " ".join(path)
    # Only click's parser runs: values are not converted (paths need not exist) and
    # required options may be left out, but unknown options and missing values fail.
    ctx = command.context_class(command, info_name=name, **command.context_settings)
    try:
        _, leftover, _ = command.make_parser(ctx).parse_args(args=list(args))
    except Exception as e:
        # click's UsageError (recent typer ships its own copy of click as typer._click).
        if not callable(getattr(e, "format_message", None)):
            raise
        return [f"'{name}': {e.format_message()}"]
    extra = [a for a in leftover if a not in ELLIPSES]
    if isinstance(command, TyperGroup) and extra:
        return [f"'{name}' needs a subcommand, got {extra}"]
    return [f"'{name}' takes no further arguments: {extra}"] if extra else []


@cache
def benchmark_options(module: str) -> dict[str, bool] | None:
    """The options of ``benchmarks.<module>``'s parser (option -> takes a value), read from
    the ``--help`` its ``main()`` prints; None when there is no such benchmark."""
    try:
        loaded = importlib.import_module(f"benchmarks.{module}")
    except ModuleNotFoundError as e:
        if e.name != f"benchmarks.{module}":
            raise  # a dependency of the benchmark is missing: that is no doc error
        return None
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [f"benchmarks.{module}", "--help"]
    try:
        with contextlib.redirect_stdout(out):
            loaded.main()
    except SystemExit:
        pass  # argparse exits after printing the help
    finally:
        sys.argv = argv
    options: dict[str, bool] = {}
    for line in out.getvalue().splitlines():
        # "  -h, --help   show this...", "  --runs RUNS   ...", "  --db {sqlite,both}"
        match = re.match(r"^\s{1,4}(-[^ ].*?)(?:\s{2,}|$)", line)
        if match:
            for spec in match.group(1).split(", "):
                flag, _, metavar = spec.partition(" ")
                options[flag] = bool(metavar)
    return options


def check_benchmark(module: str, args: list[str]) -> list[str]:
    """Problems of ``python -m benchmarks.<module> args`` against its argparse options."""
    options = benchmark_options(module)
    name = f"benchmarks.{module}"
    if options is None:
        return [f"there is no benchmark {name}"]
    problems = []
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if word in ELLIPSES:
            continue
        flag = word.partition("=")[0]
        if not flag.startswith("-"):
            problems.append(f"'{name}' takes no argument {word!r}")
        elif flag not in options:
            problems.append(f"'{name}' has no option {flag} (it has: {', '.join(options)})")
            if "=" not in word and index < len(args) and not args[index].startswith("-"):
                index += 1  # its value, presumably
        elif options[flag] and "=" not in word:
            if index >= len(args) or args[index].startswith("--"):
                problems.append(f"'{name}' option {flag} needs a value")
            index += 1
    return problems


@cache
def dev_subcommands() -> tuple[str, ...]:
    """The subcommands ``scripts/dev`` names in its usage (it prints it when given none)."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "dev")], capture_output=True, text=True, timeout=30
    )
    usage = re.search(r"usage: scripts/dev \{([\w|]+)\}", done.stderr)
    assert usage, f"scripts/dev printed no usage: {done.stderr!r}"
    return tuple(usage.group(1).split("|"))


def _dev(args: list[str]) -> list[str]:
    """``scripts/dev demo ARGS`` runs ``edgefleet demo ARGS``; ``test ARGS`` hands ARGS to
    pytest (not checked); ``setup`` takes none."""
    if not args:
        return []
    word, rest = args[0], args[1:]
    if word not in dev_subcommands():
        return [f"'scripts/dev' has no subcommand {word!r} (it has: {dev_subcommands()})"]
    if word == "demo":
        return check_click(CLICK_ROOTS["edgefleet"](), ["edgefleet"], ["demo", *rest])
    if word == "setup" and rest:
        return [f"'scripts/dev setup' takes no arguments: {rest}"]
    return []


CLICK_ROOTS: dict[str, Callable[[], Any]] = {
    "edgefleet": lambda: typer.main.get_command(edgefleet_app),
    "edge-agent": lambda: typer.main.get_command(edge_agent_app),
}


def check_example(text: str) -> list[str]:
    """What is wrong with one command line (empty: it parses)."""
    try:
        words = _words(text)
    except ValueError as e:
        return [f"cannot split it as a shell line: {e}"]
    benchmark = BENCHMARK.match(text)
    if benchmark:
        return check_benchmark(benchmark.group(1), words[3:])
    if words[0] == "scripts/dev":
        return _dev(words[1:])
    return check_click(CLICK_ROOTS[words[0]](), [words[0]], words[1:])


def check_markdown(text: str, source: str) -> list[str]:
    """Every problem of every example in one document, each naming its line."""
    return [
        f"{ex}\n    -> {p}" for ex in extract_examples(text, source) for p in check_example(ex.text)
    ]


def test_every_documented_command_parses() -> None:
    """Each example in README.md and docs/*.md names existing subcommands and options they
    accept, so a renamed or removed option breaks the build instead of the reader."""
    examples = [
        ex
        for doc in DOC_FILES
        for ex in extract_examples(doc.read_text(encoding="utf-8"), str(doc.relative_to(ROOT)))
    ]
    # The checker must see the examples at all: the README's quick start and the CLI tour.
    assert len(examples) > 100, examples
    assert any("scripts/dev demo" in ex.text for ex in examples)
    assert any(ex.text.startswith(".venv/bin/python -m benchmarks.") for ex in examples)
    problems = [f"{ex}\n    -> {p}" for ex in examples for p in check_example(ex.text)]
    assert not problems, "\n".join(problems)


SAMPLE = """\
Intro with `edgefleet devices list --jsn` inline.

```bash
edgefleet devices list [--json]
edgefleet devices frobnicate edge-17
edgefleet rollouts create --model m --version 1 \\
    --wave canary:1 --made-up-flag 3
curl -X POST https://controller/api --made-up
EDGEFLEET_TOKEN=x edgefleet tokens list [--all] [--nope]
echo "$PW" | edgefleet admin create --username alice --password-stdin
edgefleet rollouts …
edgefleet attest golden add|list|remove|explode
edgefleet flash IMAGE.tar --target <DIR> --url https://c --token T …
edge-agent run --config agent.yaml --verbose-please
.venv/bin/python -m benchmarks.bench_rollout [--devices 10] [--bogus N] [--runs]
.venv/bin/python -m benchmarks.bench_nothing
scripts/dev demo --devices 5 [--port 0] --wat
scripts/dev deploy
```

```yaml
command: edgefleet devices list --not-checked-in-yaml
```
"""


def test_made_up_flags_and_subcommands_are_caught() -> None:
    """The checker fails on a made-up option, subcommand, alternative or benchmark, and
    lets placeholders, optional brackets, pipes, env prefixes and continuations pass."""
    problems = check_markdown(SAMPLE, "sample.md")
    found = "\n".join(problems)
    for wrong in (
        "No such option: --jsn",
        "has no subcommand 'frobnicate'",
        "No such option: --made-up-flag",
        "No such option: --nope",
        "has no subcommand 'explode'",
        "No such option: --verbose-please",
        "has no option --bogus",
        "option --runs needs a value",
        "there is no benchmark benchmarks.bench_nothing",
        "No such option: --wat",
        "has no subcommand 'deploy'",
    ):
        assert wrong in found, f"{wrong!r} not caught in:\n{found}"
    # One problem per wrong thing: curl, YAML and the correct lines are not reported.
    assert len(problems) == 11, found
    assert "sample.md:6: edgefleet rollouts create --model m --version 1" in found
    assert "--made-up\n" not in found and "not-checked-in-yaml" not in found


def test_examples_extracted_from_blocks_and_spans() -> None:
    """Continuations are joined, prompts and env prefixes dropped, pipes split, and only our
    commands kept, each with the line it starts on."""
    text = (
        "Run `edge-agent run --root DIR` or `scripts/dev\ntest`.\n\n"
        "```console\n$ edgefleet serve \\\n    --config c.yaml\nserving on :8000\n```\n"
        "```\nX=1 edgefleet devices list && edgefleet audit list --json\n```\n"
    )
    assert [(e.line, e.text) for e in extract_examples(text, "t.md")] == [
        (5, "edgefleet serve --config c.yaml"),
        (10, "edgefleet devices list"),
        (10, "edgefleet audit list --json"),
        (1, "edge-agent run --root DIR"),
        (1, "scripts/dev test"),
    ]
