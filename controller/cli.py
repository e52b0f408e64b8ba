"""``edgefleet``: the operator's and the controller's command line."""

import getpass
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, get_json, request_json, resolve_target
from controller.cli_attest import app as attest_app
from controller.cli_audit import audit_app
from controller.cli_common import ConfigOpt, TokenOpt, UrlOpt, err, settings_or_exit
from controller.cli_common import fail as _fail
from controller.cli_drills import app as drill_app
from controller.cli_flash import flash as flash_command
from controller.cli_images import app as image_app
from controller.cli_rollouts import app as rollouts_app
from controller.cli_telemetry import alerts_app, drift_app, fleet_app
from controller.cli_updates import keys_app, models_app
from controller.cli_users import tokens_app, users_app
from shared.files import write_atomic
from shared.json_guard import JsonShapeError, loads_bounded

# A --set value is one shadow setting; the whole desired document must fit one message.
MAX_SET_VALUE_BYTES = 32 * 1024

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run and operate an edgefleet.",
)
devices_app = typer.Typer(no_args_is_help=True, help="Inspect the fleet.")
admin_app = typer.Typer(
    no_args_is_help=True, help="Bootstrap users on the controller host (the first admin)."
)
token_app = typer.Typer(
    no_args_is_help=True, help="Bootstrap API tokens on the controller host ('tokens' for more)."
)
broker_app = typer.Typer(no_args_is_help=True, help="Configure an external MQTT broker.")
app.add_typer(devices_app, name="devices")
app.add_typer(admin_app, name="admin")
app.add_typer(token_app, name="token")
app.add_typer(broker_app, name="broker")
app.add_typer(attest_app, name="attest")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(rollouts_app, name="rollouts")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")
app.add_typer(audit_app, name="audit")
app.add_typer(fleet_app, name="fleet")
app.add_typer(drift_app, name="drift")
app.add_typer(alerts_app, name="alerts")
app.add_typer(image_app, name="image")
app.add_typer(drill_app, name="drill")
app.command("flash")(flash_command)


def _settings(config: Path | None, **overrides: Any) -> Any:
    return settings_or_exit(config, **overrides)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # One line per job run at INFO would drown everything else.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.root.level))


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (overrides config).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (overrides config).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the controller: API, console, ingest and scheduler (and the embedded broker)."""
    import uvicorn

    from controller.app import create_app

    _logging(log_level)
    overrides: dict[str, Any] = {}
    if host:
        overrides["http_host"] = host
    if port:
        overrides["http_port"] = port
    settings = _settings(config, **overrides)
    from controller.updates.errors import KeyStoreError
    from controller.updates.keys import read_passphrase

    try:  # a wrong path should be one line at start, not a traceback from the lifespan
        read_passphrase(settings.updates.passphrase_file)
    except KeyStoreError as e:
        raise _fail(f"invalid controller configuration: updates.passphrase_file: {e}", 2) from e
    # uvicorn re-raises the stop signal after a graceful shutdown; no-op handlers turn that
    # into a normal exit (status 0) once the lifespan has stopped ingest and the broker.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
    )


@app.command()
def demo(
    devices: Annotated[int, typer.Option(min=1, max=16, help="Simulated devices.")] = 3,
    model: Annotated[Path, typer.Option(help="GGUF model the devices serve.")] = Path(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".edgefleet/demo"
    ),
    port: Annotated[int, typer.Option(help="Console port; 0 picks a free one.")] = 0,
    traffic: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds between synthetic chat requests to the devices; 0 turns it off."
        ),
    ] = 3.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Controller + embedded broker + SQLite + N simulated devices serving llama.cpp."""
    from controller.demo import DemoError, run_demo

    _logging(log_level)
    if not model.is_file():
        raise _fail(
            f"demo model {model} not found; fetch it with 'python scripts/fetch_demo_model.py'",
            2,
        )
    try:
        run_demo(
            devices=devices,
            model=model,
            data_dir=data_dir,
            port=port,
            traffic_interval_s=traffic,
        )
    except DemoError as e:
        raise _fail(str(e)) from e


@devices_app.command("list")
def devices_list(
    url: UrlOpt = None,
    token: TokenOpt = None,
    state: Annotated[str | None, typer.Option(help="online, offline or unknown.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List devices with their state, last contact, hardware class and runtime."""
    try:
        target = resolve_target(url, token)
        params: dict[str, Any] = {"limit": 1000}
        if state:
            params["state"] = state
        page = get_json(target, "/api/devices", params)
    except ApiError as e:
        raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    table = Table(
        title=f"{page['online']} online, {page['offline']} offline, {page['count']} total"
    )
    for column in ("device", "state", "last seen", "class", "runtime", "models"):
        table.add_column(column)
    for d in page["data"]:
        colour = {"online": "green", "offline": "red"}.get(d["state"], "white")
        table.add_row(
            d["id"],
            f"[{colour}]{d['state']}[/{colour}]",
            (d["last_seen"] or "-")[:19].replace("T", " "),
            d["device_class"] or "-",
            ", ".join(d["runtimes"]) or "-",
            ", ".join(m["name"] for m in d["models"]) or "-",
        )
    Console().print(table)


def _show_shadow(shadow: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(shadow, indent=2, default=str))
        return
    state = "[green]in sync[/green]" if shadow["in_sync"] else "[yellow]pending[/yellow]"
    table = Table(
        title=f"{shadow['device_id']}: desired v{shadow['desired_version']}, "
        f"applied v{shadow['applied_desired_version']} ({state})"
    )
    for column in ("key", "desired", "reported", "note"):
        table.add_column(column)
    keys = sorted(set(shadow["desired"]) | set(shadow["reported"]))
    for key in keys:
        note = shadow["rejected"].get(key) or ("pending" if key in shadow["delta"] else "")
        table.add_row(
            key,
            json.dumps(shadow["desired"][key]) if key in shadow["desired"] else "-",
            json.dumps(shadow["reported"][key]) if key in shadow["reported"] else "-",
            note,
        )
    Console().print(table)


@devices_app.command("shadow")
def devices_shadow(
    device_id: Annotated[str, typer.Argument(help="Device whose shadow to show.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show desired and reported state, and what the device has yet to apply."""
    try:
        shadow = get_json(resolve_target(url, token), f"/api/devices/{device_id}/shadow")
    except ApiError as e:
        raise _fail(str(e)) from e
    _show_shadow(shadow, as_json)


def _parse_assignments(assignments: list[str], deletions: list[str]) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise _fail(f"--set {item!r}: expected KEY=VALUE", 2)
        try:
            patch[key] = loads_bounded(raw, max_bytes=MAX_SET_VALUE_BYTES)
        except JsonShapeError as e:
            if e.reason != "bad_json":  # JSON, but nested too deep or too large
                raise _fail(f"--set {key}: {e.detail}", 2) from e
            patch[key] = raw  # a bare word is a string
    for key in deletions:
        patch[key] = None
    if not patch:
        raise _fail("nothing to change: give --set KEY=VALUE or --unset KEY", 2)
    return patch


@devices_app.command("desire")
def devices_desire(
    device_id: Annotated[str, typer.Argument(help="Device whose desired state to change.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE (VALUE as JSON, or a plain string); repeatable."),
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option("--unset", help="KEY to remove; repeatable.")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Change a device's desired state (a merge patch); the device applies it when it can."""
    patch = _parse_assignments(set_ or [], unset or [])
    try:
        shadow = request_json(
            resolve_target(url, token),
            "PATCH",
            f"/api/devices/{device_id}/shadow/desired",
            body=patch,
        )
    except ApiError as e:
        raise _fail(str(e)) from e
    _show_shadow(shadow, as_json)


def _read_password(password_stdin: bool, prompt: bool) -> str | None:
    """The password to set: from standard input, typed twice, or None (generate one)."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not prompt:
        return None
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise _fail("passwords differ", 2)
    return first


def _write_atomic(path: Path, text: str, mode: int) -> None:
    write_atomic(path, text.encode("utf-8"), mode)


@devices_app.command("provision")
def devices_provision(
    device_id: Annotated[str, typer.Argument(help="Device id; also its broker user name.")],
    password_file: Annotated[
        Path | None,
        typer.Option(help="Write the broker password here (mode 0600) instead of printing it."),
    ] = None,
    rotate: Annotated[
        bool, typer.Option(help="Replace an existing (or revoked) credential with a new one.")
    ] = False,
    identity_key: Annotated[
        str | None,
        typer.Option(
            help="The device's Ed25519 identity public key (raw, base64), enrolled for"
            " attestation; required before first contact under 'provisioned' enrollment."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Issue a device's broker credential; the password is shown once, only its hash kept."""
    from controller.broker.mosquitto_auth import generate_password, hash_password
    from controller.db import init_db, make_engine, session_scope
    from controller.models import BrokerCredential, Device, utcnow
    from shared.topics import is_valid_device_id

    if not is_valid_device_id(device_id):
        raise _fail(
            f"invalid device id {device_id!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit",
            2,
        )
    settings = _settings(config)
    if device_id == settings.broker.username:
        raise _fail(f"device id {device_id!r} is the controller's broker user name", 2)
    if password_file is not None and not password_file.parent.is_dir():
        raise _fail(f"folder {password_file.parent} does not exist", 2)
    if identity_key is not None:
        from shared.attestation import AttestationError, decode_public_key

        try:
            decode_public_key(identity_key)
        except AttestationError as e:
            raise _fail(f"--identity-key: {e}", 2) from e
    password = generate_password()
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(engine) as session:
        credential = session.get(BrokerCredential, device_id)
        if credential is not None and not rotate:
            raise _fail(
                f"device {device_id!r} already has a broker credential; pass --rotate to"
                " replace it",
                2,
            )
        if credential is None:
            credential = BrokerCredential(device_id=device_id, username=device_id, password_hash="")
        credential.password_hash = hash_password(password)
        credential.created_at = utcnow()
        credential.revoked_at = None
        session.add(credential)
        if session.get(Device, device_id) is None:
            session.add(Device(id=device_id, state="unknown"))
        if identity_key is not None:
            from controller.attestation.service import register_identity

            register_identity(
                session, device_id, identity_key, how="provisioned", actor="cli:provision"
            )
        session.flush()  # constraint errors surface before the password leaves the process
        if password_file is not None:
            try:
                _write_atomic(password_file, password + "\n", 0o600)
            except OSError as e:
                raise _fail(f"cannot write {password_file}: {e}", 2) from e
    if password_file is None:
        err.print(f"broker password for {device_id} (shown once):", highlight=False)
        typer.echo(password)
    else:
        typer.echo(f"broker credential for {device_id} written to {password_file}")


@devices_app.command("revoke")
def devices_revoke(
    device_id: Annotated[str, typer.Argument(help="Device whose broker credential to revoke.")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a device's broker credential (regenerate the broker config to apply it)."""
    from controller.db import init_db, make_engine, session_scope
    from controller.models import BrokerCredential, utcnow

    settings = _settings(config)
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(engine) as session:
        credential = session.get(BrokerCredential, device_id)
        if credential is None:
            raise _fail(f"device {device_id!r} has no broker credential", 2)
        if credential.revoked_at is not None:
            typer.echo(f"broker credential for {device_id} was already revoked")
            return
        credential.revoked_at = utcnow()
        session.add(credential)
    typer.echo(f"broker credential for {device_id} revoked")


@broker_app.command("mosquitto-config")
def broker_mosquitto_config(
    out: Annotated[Path, typer.Option(help="Folder for mosquitto.conf, passwd and acl.")],
    host: Annotated[str, typer.Option(help="Address devices connect to.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Device listener port.")] = 1883,
    controller_host: Annotated[
        str, typer.Option(help="Address of the controller-only listener (keep it internal).")
    ] = "127.0.0.1",
    controller_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Controller listener port.")
    ] = 1884,
    config: ConfigOpt = None,
) -> None:
    """Write a Mosquitto config, password files and ACL for all non-revoked devices."""
    from sqlmodel import col, select

    from controller.broker import mosquitto_auth as auth
    from controller.db import init_db, make_engine, session_scope
    from controller.models import BrokerCredential

    settings = _settings(config)
    username, secret = settings.broker.username, settings.broker.password
    if not username or secret is None or not secret.get_secret_value():
        raise _fail(
            "broker.username and broker.password must be set (the controller's own login)", 2
        )
    engine = make_engine(settings.database_url)
    init_db(engine)
    with session_scope(engine) as session:
        rows = session.exec(
            select(BrokerCredential).where(col(BrokerCredential.revoked_at).is_(None))
        ).all()
        entries = {row.username: row.password_hash for row in rows}
    if username in entries:
        raise _fail(f"controller user name {username!r} is also a device's user name", 2)
    controller_entry = {username: auth.hash_password(secret.get_secret_value())}
    out = out.resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        texts = {
            "passwd": (auth.render_password_file(entries), 0o600),
            "passwd-controller": (auth.render_password_file(controller_entry), 0o600),
            "acl": (auth.render_acl(username), 0o644),
            "mosquitto.conf": (
                auth.render_mosquitto_conf(
                    host=host,
                    port=port,
                    password_file=out / "passwd",
                    acl_file=out / "acl",
                    controller_host=controller_host,
                    controller_port=controller_port,
                    controller_password_file=out / "passwd-controller",
                ),
                0o644,
            ),
        }
        for name, (text, mode) in texts.items():
            _write_atomic(out / name, text, mode)
    except ValueError as e:
        raise _fail(str(e), 2) from e
    except OSError as e:
        raise _fail(f"cannot write to {out}: {e}", 2) from e
    typer.echo(
        f"wrote mosquitto.conf, passwd ({len(entries)} devices), passwd-controller and acl to {out}"
    )


@admin_app.command("create")
def admin_create(
    username: Annotated[str, typer.Option(help="Login name.")],
    role: Annotated[str, typer.Option(help="admin, operator or viewer.")] = "admin",
    password_stdin: Annotated[
        bool, typer.Option(help="Read the password from standard input.")
    ] = False,
    prompt: Annotated[bool, typer.Option(help="Type the password (twice).")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a console user directly in the database (the first admin is made this way;
    there is no default). Weak passwords are refused; without --password-stdin or --prompt
    a strong one is generated and printed once."""
    from controller.auth import create_user, generate_password
    from controller.db import init_db, make_engine, session_scope

    settings = _settings(config)
    given = _read_password(password_stdin, prompt)
    password = given if given is not None else generate_password()
    engine = make_engine(settings.database_url)
    init_db(engine)
    try:
        with session_scope(engine) as session:
            create_user(session, username=username, password=password, role=role)  # type: ignore[arg-type]
            from controller.audit import audit

            audit(
                session,
                actor="cli:admin-create",
                action="user.create",
                target=f"user:{username}",
                detail={"role": role, "generated_password": given is None},
            )
    except ValueError as e:
        raise _fail(str(e), 2) from e
    typer.echo(f"user {username} created ({role})")
    if given is None:
        err.print(f"password for {username} (shown once):", highlight=False)
        typer.echo(password)


@token_app.command("create")
def token_create(
    username: Annotated[str, typer.Option(help="The user the token acts as.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "cli",
    expires_in_days: Annotated[
        float | None, typer.Option(min=0.001, help="Expire after this many days.")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Issue an API token directly in the database; it is printed once and only its hash
    is stored (with a token, 'edgefleet tokens create' does the same through the API)."""
    from datetime import UTC, datetime, timedelta

    from sqlmodel import col, select

    from controller.audit import audit
    from controller.auth import issue_api_token
    from controller.db import init_db, make_engine, session_scope
    from controller.models import User

    settings = _settings(config)
    engine = make_engine(settings.database_url)
    init_db(engine)
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with session_scope(engine) as session:
        user = session.exec(select(User).where(col(User.username) == username)).first()
        if user is None:
            raise _fail(f"no user {username!r}", 2)
        if user.disabled:
            raise _fail(f"user {username!r} is disabled", 2)
        row, token = issue_api_token(session, user, name=name, expires_at=expires)
        audit(
            session,
            actor="cli:token-create",
            action="token.create",
            target=f"token:{row.id}",
            detail={"user": username, "name": name},
        )
    typer.echo(token)


def main() -> None:
    app()
