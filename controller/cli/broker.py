"""``edgefleet broker``: configure an external MQTT broker (Mosquitto) for the fleet.

Without ``--tls``: a device listener with password logins and a controller-only listener
(``broker.username``/``broker.password``). With ``--tls``: one mutual-TLS listener (8883)
whose CA, server certificate, key and CRL come from the device CA (``edgefleet pki init``),
an ACL keyed on the certificates' CNs, and, with ``--password-port``, a TLS listener with
password logins for devices that cannot hold a certificate (docs/tls.md).
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from controller.cli.common import ConfigOpt, settings_or_exit
from controller.cli.common import fail as _fail
from shared.files import write_atomic

if TYPE_CHECKING:
    from controller.pki.store import PkiStore
    from controller.settings import Settings

broker_app = typer.Typer(no_args_is_help=True, help="Configure an external MQTT broker.")


def _device_logins(settings: "Settings") -> tuple[dict[str, str], set[str]]:
    """The live devices' password hashes by user name, and the device ids holding an
    unrevoked certificate."""
    from sqlmodel import col, select

    from controller.broker.tables import BrokerCredential
    from controller.db import make_engine, session_scope
    from controller.migrations import init_db
    from controller.pki.tables import IssuedCertificate

    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        with session_scope(engine) as session:
            rows = session.exec(
                select(BrokerCredential).where(col(BrokerCredential.revoked_at).is_(None))
            ).all()
            certified = session.exec(
                select(IssuedCertificate.device_id).where(
                    col(IssuedCertificate.revoked_at).is_(None)
                )
            ).all()
            return {row.username: row.password_hash for row in rows}, set(certified)
    finally:
        engine.dispose()


def _write_files(out: Path, texts: dict[str, tuple[str, int]]) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, (text, mode) in texts.items():
            write_atomic(out / name, text.encode("utf-8"), mode)
    except OSError as e:
        raise _fail(f"cannot write to {out}: {e}", 2) from e


def _password_config(
    settings: "Settings", out: Path, host: str, port: int, controller_host: str,
    controller_port: int,
) -> None:  # fmt: skip
    from controller.broker import mosquitto_auth as auth

    username, secret = settings.broker.username, settings.broker.password
    if not username or secret is None or not secret.get_secret_value():
        raise _fail(
            "broker.username and broker.password must be set (the controller's own login),"
            " or use --tls (the controller logs in with its certificate)",
            2,
        )
    entries, _ = _device_logins(settings)
    if username in entries:
        raise _fail(f"controller user name {username!r} is also a device's user name", 2)
    controller_entry = {username: auth.hash_password(secret.get_secret_value())}
    try:
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
    except ValueError as e:
        raise _fail(str(e), 2) from e
    _write_files(out, texts)
    typer.echo(
        f"wrote mosquitto.conf, passwd ({len(entries)} devices), passwd-controller and acl to {out}"
    )


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """What the TLS listener reads: by default the device CA's files (``pki.dir``)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path

    @classmethod
    def of(cls, store: "PkiStore", overrides: dict[str, Path | None]) -> "TlsFiles":
        defaults = {
            "ca_file": store.ca_file,
            "cert_file": store.server_cert_file,
            "key_file": store.server_key_file,
            "crl_file": store.crl_file,
        }
        chosen = {name: (overrides.get(name) or path).resolve() for name, path in defaults.items()}
        for name, path in chosen.items():
            if not path.is_file():
                option = "--" + name.replace("_", "-")
                raise _fail(
                    f"{option} {path} does not exist: run 'edgefleet pki init --host"
                    f" BROKER-HOST' first, or pass {option}",
                    2,
                )
        return cls(**chosen)


def _controller_certificates(
    store: "PkiStore", controller_ids: list[str], folder: Path, settings: "Settings"
) -> list[Path]:
    """Sign a client certificate (CN = the client id) for each controller replica; the key
    is made here and written 0600 beside it."""
    from controller.cli.common import audit_locally
    from controller.pki.errors import PkiError
    from shared.certificates import certificate_pem, csr_for, new_private_key, private_key_pem

    written: list[Path] = []
    now = datetime.now(UTC)
    for client_id in controller_ids:
        key = new_private_key()
        try:
            cert = store.sign_device(csr_for(client_id, key), client_id, now=now)
        except PkiError as e:
            raise _fail(f"cannot sign the controller certificate for {client_id}: {e}", 2) from e
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(folder / f"{client_id}.key", private_key_pem(key), 0o600)
            write_atomic(folder / f"{client_id}.crt", certificate_pem(cert), 0o644)
        except OSError as e:
            raise _fail(f"cannot write to {folder}: {e}", 2) from e
        audit_locally(settings, "pki.controller_cert", f"controller:{client_id}",
                      "controller client certificate signed",
                      serial=format(cert.serial_number, "x"))  # fmt: skip
        written.append(folder / f"{client_id}.crt")
    return written


def _tls_config(
    settings: "Settings",
    out: Path,
    *,
    host: str,
    port: int,
    password_port: int | None,
    controller_ids: list[str],
    files: TlsFiles,
) -> None:
    from controller.broker import mosquitto_auth as auth

    entries, certified = _device_logins(settings)
    for client_id in controller_ids:
        if client_id in entries or client_id in certified:
            raise _fail(
                f"controller client id {client_id!r} is also a device (a login or a"
                " certificate with that CN): that device would act as the controller",
                2,
            )
    try:
        texts = {
            "acl": (auth.render_acl(*controller_ids), 0o644),
            "mosquitto.conf": (
                auth.render_mosquitto_tls_conf(
                    host=host,
                    port=port,
                    acl_file=out / "acl",
                    ca_file=files.ca_file,
                    cert_file=files.cert_file,
                    key_file=files.key_file,
                    crl_file=files.crl_file,
                    password_port=password_port,
                    password_file=out / "passwd" if password_port is not None else None,
                ),
                0o644,
            ),
        }
        if password_port is not None:
            texts["passwd"] = (auth.render_password_file(entries), 0o600)
    except ValueError as e:
        raise _fail(str(e), 2) from e
    _write_files(out, texts)
    logins = f", passwd ({len(entries)} devices)" if password_port is not None else ""
    typer.echo(
        f"wrote mosquitto.conf (mutual TLS on {host}:{port}, CRL {files.crl_file}){logins}"
        f" and acl (controllers: {', '.join(controller_ids)}) to {out}"
    )


PathOpt = Annotated[Path | None, typer.Option(help="Override the device CA's file (pki.dir).")]


@broker_app.command("mosquitto-config")
def broker_mosquitto_config(
    out: Annotated[Path, typer.Option(help="Folder for mosquitto.conf, passwd and acl.")],
    tls: Annotated[
        bool, typer.Option("--tls", help="Mutual TLS with the device CA's certificates.")
    ] = False,
    host: Annotated[str, typer.Option(help="Address devices connect to.")] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Device listener port (1883; 8883 with --tls)."),
    ] = None,
    controller_host: Annotated[
        str, typer.Option(help="Address of the controller-only listener (keep it internal).")
    ] = "127.0.0.1",
    controller_port: Annotated[
        int, typer.Option(min=1, max=65535, help="Controller listener port (without --tls).")
    ] = 1884,
    password_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="With --tls: a TLS listener with password logins too."),
    ] = None,
    controller_id: Annotated[
        list[str] | None,
        typer.Option(
            help="With --tls: a controller replica's client id = its certificate's CN"
            " (repeatable; default broker.client_id)."
        ),
    ] = None,
    controller_cert_out: Annotated[
        Path | None,
        typer.Option(
            help="With --tls: sign each controller's client certificate into this folder"
            " (ID.crt, ID.key 0600); needs the CA passphrase."
        ),
    ] = None,
    ca_file: PathOpt = None,
    cert_file: PathOpt = None,
    key_file: PathOpt = None,
    crl_file: PathOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write a Mosquitto config, password file(s) and ACL for all non-revoked devices."""
    from controller.pki.errors import PkiError
    from controller.pki.store import PkiStore

    settings = settings_or_exit(config)
    out = out.resolve()
    if not tls:
        tls_only = (password_port, controller_id, controller_cert_out, ca_file, cert_file,
                    key_file, crl_file)  # fmt: skip
        if any(option is not None for option in tls_only):
            raise _fail("--password-port, --controller-id, --controller-cert-out and the"
                        " certificate files go with --tls", 2)  # fmt: skip
        _password_config(
            settings, out, host, port or 1883, controller_host, controller_port
        )  # fmt: skip
        return
    try:
        store = PkiStore.from_settings(settings)
    except PkiError as e:
        raise _fail(str(e), 2) from e
    overrides = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file,
                 "crl_file": crl_file}  # fmt: skip
    files = TlsFiles.of(store, overrides)
    ids = controller_id or [settings.broker.client_id]
    _tls_config(settings, out, host=host, port=port or 8883, password_port=password_port,
                controller_ids=ids, files=files)  # fmt: skip
    if controller_cert_out is not None:
        certs = _controller_certificates(store, ids, controller_cert_out.resolve(), settings)
        typer.echo(
            "controller client certificates: "
            + ", ".join(str(c) for c in certs)
            + " (set broker.cert_file / broker.key_file, broker.ca_file to "
            + f"{files.ca_file})"
        )


__all__ = ["broker_app"]
