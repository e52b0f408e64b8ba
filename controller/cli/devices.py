"""``edgefleet devices``: the fleet's devices, their desired state and broker credentials.

``list``, ``shadow`` and ``desire`` go through the controller's API; ``provision`` and
``revoke`` write straight in the database (and ``revoke`` re-signs the CRL with the CA key),
on the controller host.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, get_json, request_json, resolve_target
from controller.cli.common import ConfigOpt, TokenOpt, UrlOpt, err, settings_or_exit
from controller.cli.common import fail as _fail
from shared.files import write_atomic
from shared.json_guard import JsonShapeError, loads_bounded

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from controller.settings import Settings

if TYPE_CHECKING:
    from sqlmodel import Session

    from controller.pki.service import IssuedDeviceCertificate
    from controller.pki.store import PkiStore
    from controller.settings import Settings

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
        revoked = " [bold red]revoked[/bold red]" if d.get("decommissioned") else ""
        table.add_row(
            d["id"],
            f"[{colour}]{d['state']}[/{colour}]{revoked}",
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


class _TlsOut:
    """``provision --cert-out DIR``: a P-256 key and CSR made here, signed by the device CA
    in the provisioning transaction, written to DIR only once the database took it."""

    def __init__(self, store: "PkiStore", device_id: str, folder: Path) -> None:
        from shared.certificates import csr_for, new_private_key

        self.store, self.device_id, self.folder = store, device_id, folder
        self.key = new_private_key()
        self.csr = csr_for(device_id, self.key)
        self.issued: IssuedDeviceCertificate | None = None

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        d = self.folder
        return d / f"{self.device_id}.key", d / f"{self.device_id}.crt", d / "ca.crt"

    @classmethod
    def prepare(cls, settings: "Settings", device_id: str, folder: Path, rotate: bool) -> "_TlsOut":
        """Checks that come before any write: the CA and its passphrase, the folder."""
        from controller.pki.errors import PkiError
        from controller.pki.store import PkiStore

        try:
            store = PkiStore.from_settings(settings)
            store.ca_certificate()
        except PkiError as e:
            raise _fail(str(e), 2) from e
        tls = cls(store, device_id, folder)
        if folder.exists() and not folder.is_dir():
            raise _fail(f"--cert-out {folder} is not a folder", 2)
        if tls.paths[0].exists() and not rotate:
            raise _fail(f"{tls.paths[0]} already exists; pass --rotate to replace it", 2)
        return tls

    def issue(self, session: "Session", *, require_provisioned: bool) -> None:
        from datetime import UTC, datetime

        from controller.cli.common import operator_actor
        from controller.pki.errors import PkiError
        from controller.pki.service import issue_device_certificate

        try:
            self.issued = issue_device_certificate(
                session, self.store, self.device_id, self.csr, datetime.now(UTC),
                require_provisioned=require_provisioned, actor=operator_actor(),
            )  # fmt: skip
        except PkiError as e:
            raise _fail(str(e), 2) from e

    def write(self) -> None:
        from shared.certificates import private_key_pem

        key_file, cert_file, ca_file = self.paths
        assert self.issued is not None
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(key_file, private_key_pem(self.key), 0o600)
            write_atomic(cert_file, self.issued.certificate_pem, 0o644)
            write_atomic(ca_file, self.issued.ca_pem, 0o644)
        except OSError as e:
            raise _fail(f"cannot write {e.filename or self.folder}: {e.strerror or e}", 2) from e

    def summary(self) -> str:
        key_file, cert_file, ca_file = self.paths
        assert self.issued is not None
        return (
            f"{key_file} (0600), {cert_file} (until {self.issued.not_after:%Y-%m-%d}), CA {ca_file}"
        )


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
    cert_out: Annotated[
        Path | None,
        typer.Option(
            help="Also make the device's TLS key and certificate (device CA, 'edgefleet pki"
            " init'): writes DIR/ID.key (0600), DIR/ID.crt and DIR/ca.crt."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Issue a device's broker credential; the password is shown once, only its hash kept.
    With --cert-out, also a TLS key made here and a certificate signed by the device CA."""
    from controller.broker.mosquitto_auth import generate_password, hash_password
    from controller.broker.tables import BrokerCredential
    from controller.cli.common import operator_actor
    from controller.db import make_engine, session_scope, utcnow
    from controller.devices.tables import Device
    from controller.migrations import init_db
    from controller.pki.revocation import recommission
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
    tls = None if cert_out is None else _TlsOut.prepare(settings, device_id, cert_out, rotate)
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
        recommission(session, device_id, actor=operator_actor(), now=utcnow())
        if session.get(Device, device_id) is None:
            session.add(Device(id=device_id, state="unknown"))
        if identity_key is not None:
            from controller.attestation.service import register_identity

            register_identity(
                session, device_id, identity_key, how="provisioned", actor="cli:provision"
            )
        if tls is not None:
            tls.issue(session, require_provisioned=settings.require_provisioned_devices)
        session.flush()  # constraint errors surface before the password leaves the process
        if tls is not None:
            tls.write()
        if password_file is not None:
            try:
                _write_atomic(password_file, password + "\n", 0o600)
            except OSError as e:
                raise _fail(f"cannot write {password_file}: {e}", 2) from e
    if tls is not None:
        typer.echo(f"TLS key and certificate for {device_id}: {tls.summary()}")
    if password_file is None:
        err.print(f"broker password for {device_id} (shown once):", highlight=False)
        typer.echo(password)
    else:
        typer.echo(f"broker credential for {device_id} written to {password_file}")


def _publish_crl(settings: "Settings", engine: "Engine", passphrase_file: Path | None) -> str:
    """Re-sign the CRL after a revocation; one line saying what happened to it."""
    from datetime import UTC, datetime

    from sqlmodel import Session

    from controller.pki.crl import refresh_crl
    from controller.pki.errors import PkiError
    from controller.pki.store import PkiStore

    try:
        store = PkiStore.from_settings(settings, passphrase_file)
        if not store.exists():
            return f"no device CA in {settings.pki.dir}: no CRL to sign (password logins only)"
        with Session(engine) as session:
            why = refresh_crl(session, store, now=datetime.now(UTC))
    except PkiError as e:
        raise _fail(
            f"revocation recorded, but the CRL was not re-signed: {e}. The controller's"
            " crl-refresh job signs it once it can open the CA key, or run this command"
            " again with --passphrase-file",
            1,
        ) from e
    if why is None:
        return f"CRL {store.crl_file} already lists it"
    return (
        f"CRL {store.crl_file} re-signed; send the broker SIGHUP to load it"
        " (systemctl reload mosquitto, docs/tls.md)"
    )


@devices_app.command("revoke")
def devices_revoke(
    device_id: Annotated[str, typer.Argument(help="Device to revoke.")],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (audit log and the certificates' record).")
    ],
    passphrase_file: Annotated[
        Path | None,
        typer.Option(
            help="File holding the CA key's passphrase, to re-sign the CRL (default:"
            " updates.passphrase_file, else EDGEFLEET_KEY_PASSPHRASE)."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a device: its certificates into the CRL (re-signed here), its broker login
    dropped, the device decommissioned; ingest refuses its messages. Audited. Runs on the
    controller host (the database and the CA key); remote admins use the API."""
    from datetime import UTC, datetime

    from controller.cli.common import operator_actor
    from controller.db import make_engine, session_scope
    from controller.migrations import init_db
    from controller.pki.revocation import RevocationError, check_reason, revoke_device

    settings = settings_or_exit(config)
    try:
        reason = check_reason(reason)
    except RevocationError as e:
        raise _fail(str(e), 2) from e
    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        with session_scope(engine) as session:
            try:
                result = revoke_device(
                    session,
                    device_id,
                    reason=reason,
                    actor=operator_actor(),
                    now=datetime.now(UTC),
                )
            except RevocationError as e:
                raise _fail(str(e), 2) from e
        if result.already:
            typer.echo(f"device {device_id} was already revoked")
        else:
            what = [f"{len(result.serials)} certificate(s) revoked"]
            if result.credential_dropped:
                what.append("broker login dropped")
            typer.echo(f"device {device_id} revoked and decommissioned: {', '.join(what)}")
        typer.echo(_publish_crl(settings, engine, passphrase_file))
    finally:
        engine.dispose()


__all__ = ["devices_app"]
