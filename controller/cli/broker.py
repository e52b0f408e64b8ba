"""``edgefleet broker``: configure an external MQTT broker (Mosquitto) for the fleet."""

from pathlib import Path
from typing import Annotated

import typer

from controller.cli.common import ConfigOpt, settings_or_exit
from controller.cli.common import fail as _fail
from shared.files import write_atomic

broker_app = typer.Typer(no_args_is_help=True, help="Configure an external MQTT broker.")


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
    from controller.broker.tables import BrokerCredential
    from controller.db import make_engine, session_scope
    from controller.migrations import init_db

    settings = settings_or_exit(config)
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
            write_atomic(out / name, text.encode("utf-8"), mode)
    except ValueError as e:
        raise _fail(str(e), 2) from e
    except OSError as e:
        raise _fail(f"cannot write to {out}: {e}", 2) from e
    typer.echo(
        f"wrote mosquitto.conf, passwd ({len(entries)} devices), passwd-controller and acl to {out}"
    )


__all__ = ["broker_app"]
