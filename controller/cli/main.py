"""``edgefleet``: the operator's and the controller's command line.

This module builds the root command from one module per command group, named after it:
``serve``, ``demo``, ``db``, ``devices``, ``broker``, ``admin`` and ``token``
(``admin.py``), ``users`` and ``tokens`` (``users.py``), ``attest``, ``audit``, ``keys``,
``models``, ``pki``, ``rollouts``, ``fleet``/``drift``/``alerts`` (``telemetry.py``), ``image``
(``images.py``), ``drill`` (``drills.py``) and ``flash``.
"""

from typing import Annotated

import typer

from controller.cli.admin import admin_app, token_app
from controller.cli.attest import app as attest_app
from controller.cli.audit import audit_app
from controller.cli.broker import broker_app
from controller.cli.db import db_app
from controller.cli.demo import demo
from controller.cli.devices import devices_app
from controller.cli.drills import app as drill_app
from controller.cli.flash import flash as flash_command
from controller.cli.images import app as image_app
from controller.cli.keys import keys_app
from controller.cli.models import models_app
from controller.cli.pki import pki_app
from controller.cli.rollouts import app as rollouts_app
from controller.cli.serve import serve
from controller.cli.telemetry import alerts_app, drift_app, fleet_app
from controller.cli.users import tokens_app, users_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run and operate an edgefleet.",
)
app.add_typer(db_app, name="db")
app.add_typer(devices_app, name="devices")
app.add_typer(admin_app, name="admin")
app.add_typer(token_app, name="token")
app.add_typer(broker_app, name="broker")
app.add_typer(attest_app, name="attest")
app.add_typer(keys_app, name="keys")
app.add_typer(pki_app, name="pki")
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
app.command("serve")(serve)
app.command("demo")(demo)


def _print_version(value: bool) -> None:
    if value:
        from controller import __version__

        typer.echo(f"edgefleet {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the controller's version and exit.",
        ),
    ] = False,
) -> None:
    """Run and operate an edgefleet."""


def main() -> None:
    app()


__all__ = ["app", "main"]
