"""``edgefleet flash``: write a signed firmware image onto a device and give it an identity."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, open_client, resolve_target
from controller.cli.common import TokenOpt, UrlOpt
from controller.cli.common import fail as _fail

if TYPE_CHECKING:
    from controller.images.flash import FlashSummary


def flash(
    image: Annotated[Path, typer.Argument(help="The image .tar ('edgefleet image build').")],
    target: Annotated[
        Path,
        typer.Option(
            help="The device's root folder (mounted storage), or a FILE.tar to write the"
            " device's root into."
        ),
    ],
    device_id: Annotated[str, typer.Option(help="The device's id (and broker user name).")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    broker_url: Annotated[
        str | None,
        typer.Option(
            help="Broker URL the device connects to (default: mqtt://CONTROLLER-HOST:1883);"
            " mqtts://HOST:8883 gives the device a TLS key and a certificate from the"
            " controller's device CA ('edgefleet pki init')."
        ),
    ] = None,
    image_key: Annotated[
        Path | None,
        typer.Option(
            help="File with the image public key (base64 raw Ed25519, 'edgefleet image key');"
            " default: fetched from the controller (GET /api/images/key). Pass it to pin"
            " the key; use an https --url in production (the TUF root comes from it too)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Write over a non-empty target folder or an existing .tar.")
    ] = False,
    rotate: Annotated[
        bool,
        typer.Option(help="Replace the device's existing broker credential (reflashing it)."),
    ] = False,
    controller_ca: Annotated[
        Path | None,
        typer.Option(
            help="PEM CA of the controller's HTTPS certificate (a private CA, e.g. the device"
            " CA's ca.crt): flash verifies the https --url against it, and the device gets it"
            " as its updates.ca_file for the TUF repository."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Verify IMAGE (signature and every file's hash) before writing anything, write it to
    the target, generate the device's identity key there, issue its broker credential and
    register it as expected with the controller (admin token)."""
    from controller.images.flash import ControllerApi, ControllerError, FlashError
    from controller.images.flash import flash as run
    from controller.images.keys import ImageKeyError, read_public_key_file

    try:
        api_target = resolve_target(url, token)
    except ApiError as e:
        raise _fail(str(e), 2) from e
    public_key = None
    if image_key is not None:
        try:
            public_key = read_public_key_file(image_key)
        except ImageKeyError as e:
            raise _fail(str(e), 2) from e
    ca_pem = None
    if controller_ca is not None:
        try:
            ca_pem = controller_ca.read_bytes()
        except OSError as e:
            raise _fail(f"--controller-ca {controller_ca}: {e.strerror or e}", 2) from e
    try:
        client = open_client(api_target, timeout=30, ca_file=controller_ca)
    except ApiError as e:
        raise _fail(str(e), 2) from e
    with client:
        try:
            summary = run(
                image,
                target=target,
                device_id=device_id,
                controller=ControllerApi(client, api_target.url),
                broker_url=broker_url,
                image_key=public_key,
                force=force,
                rotate=rotate,
                controller_ca=ca_pem,
            )
        except ControllerError as e:
            raise _fail(str(e), 1) from e
        except FlashError as e:  # a refused image, target or device id: bad input
            raise _fail(str(e), 2) from e
    if as_json:
        typer.echo(json.dumps(summary.as_dict(), indent=2))
        return
    _print_summary(summary)


def _print_summary(summary: "FlashSummary") -> None:
    table = Table(title=f"flashed {summary.device_id} to {summary.target}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    rows = [
        ("image", f"{summary.image_id} ({summary.device_class}, agent {summary.agent_version})"),
        ("files written", str(summary.files_written)),
        ("identity key", f"{summary.identity_key_file} (key id {summary.identity_key_id[:16]}…)"),
        ("broker", f"{summary.broker_url} as {summary.device_id}"),
        ("broker password", f"{summary.password_file} (0600; not shown)"),
        ("agent config", summary.agent_config),
        ("TUF trusted root", f"version {summary.trusted_root_version}"),
        ("registered with", summary.controller_url),
    ]
    if summary.certificate_file:
        until = summary.certificate_not_after
        rows.insert(5, ("TLS certificate", f"{summary.certificate_file} (until {until})"))
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if summary.target_kind == "folder":
        typer.echo(f"boot it with: edge-agent run --root {summary.target}")


__all__ = ["flash"]
