"""Controller settings: file, environment and overrides, and clear refusals."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from controller.settings import Settings, anchor_paths, load_settings, sqlite_file
from tests.procs import run_cli


def test_file_then_environment_then_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """YAML sets values, EDGEFLEET_* env (nested with __) beats it, explicit overrides beat both."""
    config = tmp_path / "c.yaml"
    config.write_text("http_port: 9001\nbroker:\n  mode: external\n  url: mqtt://broker:1884\n")
    assert load_settings(config).broker.port == 1884
    monkeypatch.setenv("EDGEFLEET_BROKER__URL", "mqtt://other:1999")
    monkeypatch.setenv("EDGEFLEET_HTTP_PORT", "9002")
    settings = load_settings(config, http_port=9003)
    assert (settings.broker.host, settings.broker.port, settings.http_port) == ("other", 1999, 9003)
    assert settings.broker.mode == "external"


def test_broker_tls_settings_and_a_numeric_protocol(tmp_path: Path) -> None:
    """An external mqtts:// broker with CA and client certificate gives ingest its TLS
    settings (port 8883 by default); ``protocol: 5`` as a YAML number is MQTT 5."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "broker:\n  mode: external\n  url: mqtts://broker.example.net\n  protocol: 5\n"
        "  ca_file: /etc/edgefleet/ca.crt\n  cert_file: /etc/edgefleet/ctl.crt\n"
        "  key_file: /etc/edgefleet/ctl.key\n"
    )
    broker = load_settings(config).broker
    assert (broker.port, broker.effective_protocol) == (8883, "5")
    tls = broker.tls()
    assert tls is not None and tls.cert_file == Path("/etc/edgefleet/ctl.crt")
    assert load_settings(None).broker.tls() is None


def test_placeholder_broker_password_refused_outside_the_demo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tutorial password such as 'changeme' is refused in production and development; only
    the demo (which generates its own secrets) lets it through."""
    monkeypatch.setenv("EDGEFLEET_BROKER__PASSWORD", "changeme")
    for environment in ("production", "development"):
        with pytest.raises(ValidationError, match="placeholder"):
            load_settings(None, environment=environment)
    assert load_settings(None, environment="demo").broker.password is not None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"database_url": "postgresql://edgefleet:changeme@db/edgefleet"}, "database_url"),
        ({"database_url": "postgresql://edgefleet:Password@db/edgefleet"}, "database_url"),
    ],
    ids=["database-changeme", "database-password-any-case"],
)
def test_placeholder_database_password_refused(overrides: dict[str, str], field: str) -> None:
    """A database URL whose password is a placeholder is refused outside the demo."""
    with pytest.raises(ValidationError, match=field):
        load_settings(None, **overrides)
    assert load_settings(None, environment="demo", **overrides).database_url


def test_placeholder_key_passphrase_file_refused(tmp_path: Path) -> None:
    """An update key passphrase file holding a placeholder is refused at configuration time;
    a real passphrase passes."""
    secret = tmp_path / "passphrase"
    secret.write_text("changeme\n")
    with pytest.raises(ValidationError, match=r"updates\.passphrase_file"):
        load_settings(None, updates={"passphrase_file": secret})
    secret.write_text("a-real-long-passphrase-41\n")
    assert load_settings(None, updates={"passphrase_file": secret}).updates.passphrase_file


def test_secret_never_printed_in_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker password stays masked when settings are logged or printed."""
    monkeypatch.setenv("EDGEFLEET_BROKER__PASSWORD", "s3cr3t-real-value")
    assert "s3cr3t-real-value" not in repr(load_settings(None))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("htp_port: 1\n", "htp_port"),
        ("broker:\n  url: http://x\n", "mqtt://HOST:PORT"),
        ("broker:\n  mode: external\n  cert_file: c.pem\n", "cert_file set, but the URL"),
        ("broker:\n  url: mqtts://127.0.0.1:0\n", "needs broker.server_cert_file"),
        (
            "broker:\n  mode: external\n  url: mqtts://h\n  server_cert_file: c\n"
            "  server_key_file: k\n",
            "are for an embedded broker",
        ),
        ("environment: staging\n", "environment"),
        ("updates:\n  passphrase_file: /nonexistent/pw\n", "updates.passphrase_file"),
    ],
)
def test_serve_refuses_bad_config_with_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    """`edgefleet serve` with a wrong key or value exits 2 and names the problem."""
    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = run_cli(["-m", "controller", "serve", "--config", str(config)])
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist is an error, not silently the defaults."""
    result = run_cli(["-m", "controller", "serve", "--config", str(tmp_path / "nope.yaml")])
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_cli_without_credentials_says_how_to_get_them(tmp_path: Path) -> None:
    """`edgefleet devices list` with no URL or token explains what to set."""
    env = {"PATH": "/usr/bin:/bin", "EDGEFLEET_CLI_CONFIG": str(tmp_path / "none.json")}
    result = run_cli(["-m", "controller", "devices", "list"], env=env)
    assert result.returncode == 1
    assert "EDGEFLEET_URL" in result.stderr


# --- relative paths ---------------------------------------------------------------------------
def path_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The key path of every ``Path`` setting, at any depth."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if annotation is Path or set(get_args(annotation)) == {Path, type(None)}:
            yield (*prefix, name)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from path_fields(annotation, (*prefix, name))


def test_every_path_setting_is_taken_from_the_config_files_folder(tmp_path: Path) -> None:
    """anchor_paths joins every relative Path setting written in a file (the settings
    models are walked, so a new one is covered) to the file's folder and leaves absolute
    ones and values of the wrong type alone."""
    keys = list(path_fields(Settings))
    assert ("updates", "keys_dir") in keys and ("http_tls", "cert_file") in keys
    assert ("broker", "server_key_file") in keys and ("pki", "dir") in keys
    values: dict[str, Any] = {}
    for key in keys:
        node = values
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = f"rel/{'.'.join(key)}"
    anchored = anchor_paths(values, tmp_path)
    for key in keys:
        node = anchored
        for part in key:
            node = node[part]
        assert node == str(tmp_path / "rel" / ".".join(key)), key
    assert anchor_paths({"pki": {"dir": "/srv/pki"}}, tmp_path)["pki"]["dir"] == "/srv/pki"
    assert anchor_paths({"pki": {"dir": 7}}, tmp_path)["pki"]["dir"] == 7
    assert anchor_paths({"pki": "not a mapping"}, tmp_path)["pki"] == "not a mapping"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///ctl.db", "sqlite:///{base}/ctl.db"),
        ("sqlite:///./data/ctl.db", "sqlite:///{base}/data/ctl.db"),
        ("sqlite:////var/lib/edgefleet/ctl.db", "sqlite:////var/lib/edgefleet/ctl.db"),
        ("sqlite://", "sqlite://"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("postgresql+psycopg://ef:s3cret-pw@db/ef", "postgresql+psycopg://ef:s3cret-pw@db/ef"),
    ],
)
def test_a_relative_sqlite_file_is_the_config_files(
    tmp_path: Path, url: str, expected: str
) -> None:
    """A relative SQLite file in database_url is taken from the config file's folder; an
    absolute one, an in-memory one and another database are kept as written."""
    assert anchor_paths({"database_url": url}, tmp_path)["database_url"] == expected.format(
        base=tmp_path
    )


def test_file_paths_and_defaults_follow_the_file_but_the_environment_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From another folder, a file's relative paths and (with a file) the defaults resolve
    against the file's folder; an EDGEFLEET_* override stays relative to the current folder;
    without a file the defaults stay relative to the current folder."""
    etc, work = tmp_path / "etc", tmp_path / "work"
    etc.mkdir()
    work.mkdir()
    config = etc / "controller.yaml"
    config.write_text(
        "database_url: sqlite:///ctl.db\nupdates:\n  repo_dir: tuf\n"
        "broker:\n  mode: external\n  url: mqtts://broker.example\n  ca_file: ca.crt\n"
    )
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDGEFLEET_UPDATES__KEYS_DIR", "my-keys")
    settings = load_settings(Path("../etc/controller.yaml"))
    assert settings.database_url == f"sqlite:///{etc / 'ctl.db'}"
    assert settings.updates.repo_dir == etc / "tuf"
    assert settings.broker.ca_file == etc / "ca.crt"
    assert settings.pki.dir == etc / ".edgefleet" / "pki"  # a default, with a file
    assert settings.updates.keys_dir == Path("my-keys")  # the environment: the cwd's
    monkeypatch.delenv("EDGEFLEET_UPDATES__KEYS_DIR")
    assert load_settings(None).pki.dir == Path(".edgefleet/pki")


def test_sqlite_file_names_only_a_file() -> None:
    """sqlite_file gives the file of a SQLite URL and None for memory, URIs and servers."""
    assert sqlite_file("sqlite:///./edgefleet.db") == Path("edgefleet.db")
    assert sqlite_file("sqlite:////srv/ctl.db") == Path("/srv/ctl.db")
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=ro&uri=true",
                "postgresql://db/ef", "not a url"):  # fmt: skip
        assert sqlite_file(url) is None, url
