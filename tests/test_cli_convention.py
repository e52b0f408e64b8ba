"""One CLI convention for ``edgefleet``: every command that reads the controller's settings
(and so its database and files) takes ``-c/--config`` or ``EDGEFLEET_CONFIG``, none of them
creates a missing database by accident, every command that calls the API takes
``--url``/``--token``, and relative paths in the config are the config file's."""

import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from controller.cli.main import app

PASSPHRASE = "a long test passphrase for the cli"
# What marks code that reads the controller's settings (and may open its database), and code
# that calls the API.
SETTINGS_MARKERS = frozenset({"settings_or_exit", "load_settings", "make_engine"})
API_MARKERS = frozenset({"resolve_target"})


# Click's classes by their shape: typer 0.2x vendors its own click, whose classes are not
# the installed click package's.
Command = Any


def commands(group: Command, prefix: str = "") -> Iterator[tuple[str, Command]]:
    """Every leaf command of ``group`` with its full name (``devices provision``)."""
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if hasattr(command, "commands"):
            yield from commands(command, f"{full} ")
        else:
            yield full, command


def _names(code: CodeType) -> set[str]:
    """Names a code object uses, nested functions and lambdas included."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _names(const)
    return names


def reaches(function: Callable[..., Any], markers: frozenset[str]) -> bool:
    """Whether ``function``, or a function of the CLI package it calls, names a marker."""
    seen: set[Callable[..., Any]] = set()
    todo = [inspect.unwrap(function)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        names = _names(current.__code__)
        if names & markers:
            return True
        for name in names:
            target = current.__globals__.get(name)
            if inspect.isfunction(target) and target.__module__.startswith("controller.cli"):
                todo.append(target)
    return False


def all_commands() -> list[tuple[str, Command]]:
    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "edgefleet is a group of commands"
    return list(commands(group))


def option(command: Command, flag: str) -> Any:
    for param in command.params:
        if param.param_type_name == "option" and flag in param.opts + param.secondary_opts:
            return param
    return None


def test_every_command_that_reads_the_settings_takes_config_and_its_variable() -> None:
    """Every command whose code reads the controller's settings or opens its database takes
    -c/--config, also from EDGEFLEET_CONFIG; the walk finds the commands the issue named."""
    found = []
    for name, command in all_commands():
        assert command.callback is not None
        if not reaches(command.callback, SETTINGS_MARKERS):
            continue
        found.append(name)
        config = option(command, "--config")
        assert config is not None and "-c" in config.opts, f"'{name}' has no -c/--config"
        assert config.envvar == "EDGEFLEET_CONFIG", f"'{name}' ignores EDGEFLEET_CONFIG"
    expected = {"admin create", "token create", "devices provision", "devices revoke",
                "models add", "models list", "keys init", "pki show", "db init", "serve",
                "broker mosquitto-config", "image keygen"}  # fmt: skip
    assert expected <= set(found), expected - set(found)


def test_every_command_that_calls_the_api_takes_url_and_token() -> None:
    """Every command whose code resolves the controller's URL and token takes --url and
    --token (the environment and the CLI credentials file come after them)."""
    found = []
    for name, command in all_commands():
        assert command.callback is not None
        if not reaches(command.callback, API_MARKERS):
            continue
        found.append(name)
        assert option(command, "--url") is not None, f"'{name}' has no --url"
        assert option(command, "--token") is not None, f"'{name}' has no --token"
    assert {"devices list", "models list", "users add", "rollouts create", "image build"} <= set(
        found
    )


# --- refusing to create a database ------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty current folder and no EDGEFLEET_* setting from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("EDGEFLEET_"):
            monkeypatch.delenv(name)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), env=env, input=stdin)


@pytest.mark.parametrize(
    "args",
    [
        ["admin", "create", "--username", "alice"],
        ["token", "create", "--username", "alice"],
        ["devices", "provision", "edge-17"],
        ["devices", "revoke", "edge-17", "--reason", "lost"],
        ["broker", "mosquitto-config", "--out", "broker"],
        ["keys", "init"],
        ["pki", "show"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_no_config_refuses_to_create_the_default_database(clean_env: Path, args: list[str]) -> None:
    """Without -c or EDGEFLEET_CONFIG a database command exits 2 naming the file it would
    have created and how to go on, and creates nothing."""
    result = run(*args, env={"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE})
    assert result.exit_code == 2, result.output
    assert f"no database at {clean_env / 'edgefleet.db'}" in result.output
    assert "EDGEFLEET_CONFIG" in result.output and "edgefleet db init" in result.output
    assert "Traceback" not in result.output
    assert list(clean_env.iterdir()) == []


def write_config(folder: Path, **values: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "controller.yaml"
    config.write_text(yaml.safe_dump({"environment": "development", **values}))
    return config


def test_a_config_naming_a_missing_database_is_refused_until_db_init(clean_env: Path) -> None:
    """With a config whose database does not exist, admin create exits 2 naming the file
    and 'edgefleet db init -c FILE'; db init creates it, says so, and then admin create and
    token create work; a second db init finds it up to date."""
    config = write_config(clean_env.parent / "etc", database_url="sqlite:///ctl.db")
    database = config.parent / "ctl.db"
    refused = run("admin", "create", "--username", "alice", "-c", str(config))
    assert refused.exit_code == 2, refused.output
    assert f"no database at {database}" in refused.output
    assert f"edgefleet db init -c {config}" in refused.output
    assert not database.exists()
    made = run("db", "init", "-c", str(config))
    assert made.exit_code == 0 and f"database {database} created" in made.output
    created = run("admin", "create", "--username", "alice", "-c", str(config))
    assert created.exit_code == 0, created.output
    token = run("token", "create", "--username", "alice", "-c", str(config))
    assert token.exit_code == 0 and token.output.strip().startswith("eft_"), token.output
    again = run("db", "init", "-c", str(config))
    assert again.exit_code == 0 and "is up to date" in again.output
    assert list(clean_env.iterdir()) == []


def test_db_init_names_a_missing_folder(clean_env: Path) -> None:
    """db init for a SQLite file in a folder that does not exist exits 2 naming the folder."""
    config = write_config(clean_env.parent / "etc", database_url="sqlite:///nowhere/ctl.db")
    result = run("db", "init", "-c", str(config))
    assert result.exit_code == 2
    assert f"folder {config.parent / 'nowhere'} for the database does not exist" in result.output


def test_edgefleet_config_stands_for_c(clean_env: Path) -> None:
    """EDGEFLEET_CONFIG names the config when -c is absent: admin create and token create
    use its database, and nothing appears in the current folder."""
    config = write_config(clean_env.parent / "etc", database_url="sqlite:///ctl.db")
    env = {"EDGEFLEET_CONFIG": str(config)}
    assert run("db", "init", env=env).exit_code == 0
    assert (config.parent / "ctl.db").is_file()
    assert run("admin", "create", "--username", "alice", env=env).exit_code == 0
    token = run("token", "create", "--username", "alice", env=env)
    assert token.exit_code == 0, token.output
    assert list(clean_env.iterdir()) == []


def test_relative_paths_are_the_config_files_from_any_folder(clean_env: Path) -> None:
    """Run from another folder with a relative -c, a config's relative database and TUF
    folders land beside the config file, not in the current folder."""
    etc = clean_env.parent / "etc"
    write_config(
        etc,
        database_url="sqlite:///data/ctl.db",
        updates={"repo_dir": "tuf", "keys_dir": "keys"},
    )
    (etc / "data").mkdir()
    relative = os.path.relpath(etc / "controller.yaml", clean_env)
    env = {"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
    assert run("db", "init", "-c", relative).exit_code == 0
    result = run("keys", "init", "-c", relative, env=env)
    assert result.exit_code == 0, result.output
    assert (etc / "data" / "ctl.db").is_file()
    assert (etc / "tuf" / "metadata" / "1.root.json").is_file()
    assert any((etc / "keys").glob("timestamp.*.pem"))
    assert list(clean_env.iterdir()) == []


def test_models_list_takes_config_and_reads_the_registry(clean_env: Path) -> None:
    """models list -c lists what models add -c published, from the database and without a
    token (JSON and table), filters like the API, and -c with --url is refused."""
    config = write_config(clean_env.parent / "etc", database_url="sqlite:///ctl.db")
    env = {"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE}
    assert run("db", "init", "-c", str(config)).exit_code == 0
    assert run("keys", "init", "-c", str(config), env=env).exit_code == 0
    artifact = clean_env.parent / "tiny.gguf"
    artifact.write_bytes(os.urandom(4096))
    added = run("models", "add", str(artifact), "--name", "tiny", "--version", "1.0",
                "--runtime", "llama.cpp", "--device-class", "jetson-orin", "-c", str(config),
                env=env)  # fmt: skip
    assert added.exit_code == 0, added.output
    listed = run("models", "list", "-c", str(config), "--json")
    assert listed.exit_code == 0, listed.output
    page = json.loads(listed.output)
    assert page["count"] == 1
    row = page["data"][0]
    assert (row["name"], row["version"], row["runtime"]) == ("tiny", "1.0", "llama.cpp")
    assert row["target_path"] == "tiny/1.0/tiny.gguf" and row["length"] == 4096
    other = run("models", "list", "-c", str(config), "--device-class", "raspberry-pi", "--json")
    assert json.loads(other.output)["count"] == 0
    table = run("models", "list", "-c", str(config))
    assert table.exit_code == 0 and "tiny" in table.output
    both = run("models", "list", "-c", str(config), "--url", "http://127.0.0.1:9")
    assert both.exit_code == 2 and "not both" in both.output
