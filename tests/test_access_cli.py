"""``edgefleet users|tokens|audit`` against a real HTTP controller, and ``admin create``
(no default password: a weak one is refused, none given generates one shown once)."""

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
import yaml
from typer.testing import CliRunner

from controller.cli.main import app as cli_app
from tests.access_world import AccessWorld, access_world
from tests.conftest import free_port, wait_for
from tests.controller_harness import console_login


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[AccessWorld, str]]:
    """The access world's app on a loopback port (no broker: lifespan off)."""
    with access_world(tmp_path) as world:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                world.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_for(lambda: server.started, 20, what="uvicorn to start")
            yield world, f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(20)


def run(args: list[str], stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, args, input=stdin)
    return result.exit_code, result.output


def test_users_commands(served: tuple[AccessWorld, str]) -> None:
    """users add (generated password shown once and working), list --json, set-role,
    disable and --enable; a viewer's token is refused with the controller's words."""
    world, url = served
    admin = ["--url", url, "--token", world.tokens["admin"]]
    code, out = run(["users", "add", "frank", "--role", "viewer", *admin])
    assert code == 0, out
    password = out.strip().splitlines()[-1]
    console_login(world.client(), "frank", password)
    code, out = run(["users", "list", "--json", *admin])
    assert code == 0 and "frank" in [u["username"] for u in json.loads(out)["data"]]
    code, out = run(["users", "set-role", "frank", "operator", "--json", *admin])
    assert code == 0 and json.loads(out)["role"] == "operator"
    code, out = run(["users", "disable", "frank", *admin])
    assert code == 0 and "disabled" in out
    code, out = run(["users", "disable", "frank", "--enable", "--json", *admin])
    assert code == 0 and json.loads(out)["disabled"] is False
    viewer = ["--url", url, "--token", world.tokens["viewer"]]
    code, out = run(["users", "list", *viewer])
    assert code == 1 and "needs admin" in out
    code, out = run(["users", "set-role", "nobody", "viewer", *admin])
    assert code == 2 and "no user 'nobody'" in out


def test_tokens_commands(served: tuple[AccessWorld, str]) -> None:
    """tokens create prints the value once, list --json shows it without the value,
    revoke stops it."""
    world, url = served
    viewer = ["--url", url, "--token", world.tokens["viewer"]]
    code, out = run(["tokens", "create", "--name", "dash", "--expires-in-days", "7", *viewer])
    assert code == 0, out
    minted = out.strip().splitlines()[-1]
    assert minted.startswith("eft_")
    code, out = run(["tokens", "list", "--json", *viewer])
    listed = json.loads(out)["data"]
    assert code == 0 and {t["name"] for t in listed} == {"tests", "dash"}
    assert minted not in out
    dash = next(t for t in listed if t["name"] == "dash")
    code, out = run(["tokens", "revoke", str(dash["id"]), *viewer])
    assert code == 0 and "revoked" in out
    code, out = run(["tokens", "list", "--url", url, "--token", minted])
    assert code == 1 and "401" in out


def test_audit_list_filters_and_json(served: tuple[AccessWorld, str]) -> None:
    """audit list --json with an action prefix returns just those entries; the table
    form prints them too."""
    world, url = served
    admin = ["--url", url, "--token", world.tokens["admin"]]
    run(["users", "add", "gina", *admin])
    run(["tokens", "create", "--name", "t1", *admin])
    code, out = run(["audit", "list", "--action", "user.", "--json", *admin])
    page = json.loads(out)
    assert code == 0 and [e["action"] for e in page["data"]] == ["user.create"]
    assert page["data"][0]["target"] == "user:gina"
    code, out = run(["audit", "list", "--actor", "user:admin", *admin])
    assert code == 0 and "token.create" in out and "user.create" in out


def test_admin_create_generates_or_refuses_weak(tmp_path: Path) -> None:
    """admin create with no password generates one and prints it once; a weak password from
    stdin is refused with exit 2 and creates nobody."""
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {"environment": "development", "database_url": f"sqlite:///{tmp_path / 'c.db'}"}
        )
    )
    assert run(["db", "init", "--config", str(config)])[0] == 0
    code, out = run(["admin", "create", "--username", "root-admin", "--config", str(config)])
    assert code == 0 and "created (admin)" in out
    generated = out.strip().splitlines()[-1]
    assert len(generated) >= 12
    code, out = run(
        ["admin", "create", "--username", "weak", "--password-stdin", "--config", str(config)],
        stdin="changeme\n",
    )
    assert code == 2 and "at least 12 characters" in out
    code, out = run(
        ["admin", "create", "--username", "weak", "--password-stdin", "--config", str(config)],
        stdin="passwordpassword\n",
    )
    assert code == 2 and "well-known" in out
    code, out = run(["token", "create", "--username", "weak", "--config", str(config)])
    assert code == 2 and "no user 'weak'" in out
