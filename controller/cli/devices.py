"""``edgefleet devices``: the fleet's devices, their desired state and broker credentials.

``list``, ``shadow`` and ``desire`` go through the controller's API; ``provision`` and
``revoke`` write the device's broker credential straight in the database, on the
controller host.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, get_json, request_json, resolve_target
from controller.cli.common import ConfigOpt, TokenOpt, UrlOpt, err, settings_or_exit
from controller.cli.common import fail as _fail
from shared.files import write_atomic
from shared.json_guard import JsonShapeError, loads_bounded

# A --set value is one shadow setting; the whole desired document must fit one message.
MAX_SET_VALUE_BYTES = 32 * 1024

devices_app = typer.Typer(no_args_is_help=True, help="Inspect the fleet.")


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
    from controller.broker.tables import BrokerCredential
    from controller.db import make_engine, session_scope, utcnow
    from controller.devices.tables import Device
    from controller.migrations import init_db
    from shared.topics import is_valid_device_id

    if not is_valid_device_id(device_id):
        raise _fail(
            f"invalid device id {device_id!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit",
            2,
        )
    settings = settings_or_exit(config)
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
    from controller.broker.tables import BrokerCredential
    from controller.db import make_engine, session_scope, utcnow
    from controller.migrations import init_db

    settings = settings_or_exit(config)
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


__all__ = ["devices_app"]
