"""``edgefleet pki``: the device certificate authority from the shell (docs/tls.md).

``init`` creates the CA (ECDSA P-256, its key encrypted with the TUF keys' passphrase) and
the broker's server certificate; ``server-cert`` makes another server certificate;
``show`` prints the CA and what it has issued. They run on the controller host, without a
running controller. Every failure is one line on stderr and a non-zero exit.
"""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.common import ConfigOpt, JsonOpt, audit_locally, settings_or_exit
from controller.cli.common import fail as _fail

if TYPE_CHECKING:
    from controller.pki.message_keys import MessageKeyStore
    from controller.pki.store import PkiStore
    from controller.settings import Settings

pki_app = typer.Typer(no_args_is_help=True, help="The device certificate authority.")

HostOpt = Annotated[
    list[str],
    typer.Option(
        "--host",
        help="A DNS name or IP address devices use to reach the broker (repeatable; the"
        " first is the certificate's CN).",
    ),
]
PassphraseOpt = Annotated[
    Path | None,
    typer.Option(
        help="File holding the CA key's passphrase (default: updates.passphrase_file, else"
        " EDGEFLEET_KEY_PASSPHRASE)."
    ),
]


def _now() -> datetime:
    return datetime.now(UTC)


def _store(config: Path | None, passphrase_file: Path | None) -> "tuple[Settings, PkiStore]":
    from controller.pki.errors import PkiError
    from controller.pki.store import PkiStore

    settings = settings_or_exit(config)
    try:
        return settings, PkiStore.from_settings(settings, passphrase_file)
    except PkiError as e:
        raise _fail(str(e)) from e


@pki_app.command("init")
def pki_init(
    host: HostOpt,
    name: Annotated[str, typer.Option(help="The CA's subject CN.")] = "edgefleet device CA",
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create the device CA and the broker's server certificate (refused if a CA exists)."""
    from controller.pki.errors import PkiError
    from controller.pki.store import check_server_hosts

    settings, store = _store(config, passphrase_file)
    now = _now()
    try:
        check_server_hosts(host)  # before the CA exists: a typo must not leave half a setup
        cert = store.initialize(name, now=now)
        cert_file, key_file = store.write_server_certificate(host, store.dir, now=now)
    except PkiError as e:
        raise _fail(str(e)) from e
    except OSError as e:
        raise _fail(f"{e.filename or store.dir}: {e.strerror or e}") from e
    audit_locally(settings, "pki.init", f"pki:{store.dir}", "device CA created",
                  hosts=list(host), not_after=cert.not_valid_after_utc.isoformat())  # fmt: skip
    typer.echo(
        f"device CA created in {store.dir} (valid until {cert.not_valid_after_utc:%Y-%m-%d})"
    )
    typer.echo(f"  CA certificate:  {store.ca_file}  (give it to the broker and the devices)")
    typer.echo(f"  CA key:          {store.key_file}  (encrypted, 0600)")
    typer.echo(f"  revocation list: {store.crl_file}")
    typer.echo(f"  broker:          {cert_file}, {key_file}  (for {', '.join(host)})")


@pki_app.command("server-cert")
def pki_server_cert(
    host: HostOpt,
    out: Annotated[Path, typer.Option(help="Folder for NAME.crt and NAME.key (0600).")],
    name: Annotated[str, typer.Option(help="File name stem.")] = "broker",
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Sign another server certificate (a second broker, a new host name)."""
    from controller.pki.errors import PkiError

    settings, store = _store(config, passphrase_file)
    try:
        cert_file, key_file = store.write_server_certificate(host, out, name, now=_now())
    except PkiError as e:
        raise _fail(str(e)) from e
    except OSError as e:
        raise _fail(f"{e.filename or out}: {e.strerror or e}") from e
    audit_locally(settings, "pki.server_cert", f"pki:{store.dir}", "server certificate signed",
                  hosts=list(host), cert_file=str(cert_file))  # fmt: skip
    typer.echo(f"server certificate for {', '.join(host)}: {cert_file}, key {key_file} (0600)")


def _counts(database_url: str, now: datetime) -> dict[str, int]:
    from sqlmodel import Session, col, func, select

    from controller.db import make_engine
    from controller.migrations import init_db
    from controller.pki.tables import IssuedCertificate

    engine = make_engine(database_url)
    try:
        init_db(engine)
        with Session(engine) as session:

            def count(*where: Any) -> int:
                query = select(func.count()).select_from(IssuedCertificate).where(*where)
                return int(session.exec(query).one())

            revoked = col(IssuedCertificate.revoked_at).is_not(None)
            return {
                "issued": count(),
                "revoked": count(revoked),
                "valid": count(
                    col(IssuedCertificate.revoked_at).is_(None),
                    col(IssuedCertificate.not_after) > now,
                ),
            }
    finally:
        engine.dispose()


@pki_app.command("show")
def pki_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The CA's subject and expiry, and how many certificates it issued."""
    from controller.pki.errors import PkiError
    from controller.pki.store import PkiStore

    settings = settings_or_exit(config)
    store = PkiStore(settings.pki.dir, None, settings.pki)
    try:
        cert = store.ca_certificate()
    except PkiError as e:
        raise _fail(str(e)) from e
    now = _now()
    info: dict[str, Any] = {
        "dir": str(store.dir),
        "subject": cert.subject.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "expired": cert.not_valid_after_utc <= now,
        "certificates": _counts(settings.database_url, now),
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    counts = info["certificates"]
    typer.echo(f"device CA {info['subject']} in {info['dir']}")
    typer.echo(f"  valid until {info['not_after']}" + (" (EXPIRED)" if info["expired"] else ""))
    typer.echo(
        f"  certificates: {counts['issued']} issued, {counts['valid']} valid,"
        f" {counts['revoked']} revoked"
    )


def _message_keys(config: Path | None, passphrase_file: Path | None) -> "MessageKeyStore":
    from controller.pki.message_keys import MessageKeyStore
    from controller.updates.errors import KeyStoreError
    from controller.updates.keys import read_passphrase

    settings = settings_or_exit(config)
    try:
        passphrase = read_passphrase(passphrase_file or settings.updates.passphrase_file)
    except KeyStoreError as e:
        raise _fail(str(e)) from e
    return MessageKeyStore(settings.pki.dir, passphrase)


@pki_app.command("message-keys")
def pki_message_keys(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """The controller's message keys (docs/protocol.md, "Signatures"): current, next, old."""
    from controller.pki.errors import PkiError

    store = _message_keys(config, None)
    try:
        current, pending, kids = store.current_kid(), store.next_kid(), store.kids()
    except PkiError as e:
        raise _fail(str(e)) from e
    info = {"dir": str(store.folder), "current": current, "next": pending, "keys": kids}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    if current is None:
        typer.echo(f"no controller message key in {store.folder} (serve creates the first)")
        return
    for kid in kids:
        role = "current" if kid == current else "next" if kid == pending else "old"
        typer.echo(f"{kid}  {role}")


@pki_app.command("rotate-message-key")
def pki_rotate_message_key(passphrase_file: PassphraseOpt = None, config: ConfigOpt = None) -> None:
    """Add a message key as next: restarted controllers announce it to every device; promote
    it once the devices have it."""
    from controller.pki.errors import PkiError

    store = _message_keys(config, passphrase_file)
    try:
        kid = store.rotate()
    except PkiError as e:
        raise _fail(str(e)) from e
    audit_locally(settings_or_exit(config), "pki.message_key.rotate", f"pki:{store.folder}",
                  "next message key added", kid=kid)  # fmt: skip
    typer.echo(f"message key {kid} is next: restart every controller replica to announce it")


@pki_app.command("promote-message-key")
def pki_promote_message_key(config: ConfigOpt = None) -> None:
    """Make the next message key current (it signs from the replicas' next start)."""
    from controller.pki.errors import PkiError

    store = _message_keys(config, None)
    try:
        kid = store.promote()
    except PkiError as e:
        raise _fail(str(e)) from e
    audit_locally(settings_or_exit(config), "pki.message_key.promote", f"pki:{store.folder}",
                  "message key promoted", kid=kid)  # fmt: skip
    typer.echo(f"message key {kid} is current: restart every controller replica")


@pki_app.command("retire-message-key")
def pki_retire_message_key(
    kid: Annotated[str, typer.Argument(help="The old key's 16-digit id.")],
    config: ConfigOpt = None,
) -> None:
    """Delete an old message key (devices still trusting only it must be re-flashed)."""
    from controller.pki.errors import PkiError

    store = _message_keys(config, None)
    try:
        store.retire(kid)
    except PkiError as e:
        raise _fail(str(e)) from e
    audit_locally(settings_or_exit(config), "pki.message_key.retire", f"pki:{store.folder}",
                  "message key retired", kid=kid)  # fmt: skip
    typer.echo(f"message key {kid} retired")


__all__ = ["pki_app"]
