"""``edgefleet attest``: golden values, a device's attestation history, challenges on demand.

Talks to the controller's HTTP API (``controller/api/routes/attestation.py``).
"""

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, get_json, request_json, resolve_target
from controller.cli.common import TokenOpt, UrlOpt
from controller.cli.common import fail as _fail

app = typer.Typer(no_args_is_help=True, help="Device attestation: golden values and quotes.")
golden_app = typer.Typer(no_args_is_help=True, help="Known-good measurement values.")
app.add_typer(golden_app, name="golden")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _call(url: str | None, token: str | None, method: str, path: str, **kw: Any) -> Any:
    try:
        return request_json(resolve_target(url, token), method, path, **kw)
    except ApiError as e:
        raise _fail(str(e)) from e


@golden_app.command("add")
def golden_add(
    kind: Annotated[str, typer.Argument(help="agent_code, model, image_id or config.")],
    value: Annotated[str, typer.Argument(help="The value (a SHA-256 in hex, or an image id).")],
    note: Annotated[str, typer.Option(help="Where the value comes from.")] = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register a golden value; quotes measuring it pass that check."""
    row = _call(
        url,
        token,
        "POST",
        "/api/attestation/golden",
        body={"kind": kind, "value": value, "note": note},
    )
    typer.echo(f"golden {row['kind']} {row['value']} registered (id {row['id']})")


@golden_app.command("list")
def golden_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List golden values (published TUF model targets are golden models as well)."""
    try:
        rows = get_json(
            resolve_target(url, token), "/api/attestation/golden", {"kind": kind} if kind else None
        )
    except ApiError as e:
        raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} golden values")
    for column in ("id", "kind", "value", "source", "note"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["id"]), r["kind"], r["value"], r["source"], r["note"])
    Console().print(table)


@golden_app.command("remove")
def golden_remove(
    golden_id: Annotated[int, typer.Argument(help="The id shown by 'golden list'.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Withdraw a golden value; devices still measuring it fail their next quote."""
    _call(url, token, "DELETE", f"/api/attestation/golden/{golden_id}")
    typer.echo(f"golden value {golden_id} removed")


@app.command("history")
def history(
    device_id: Annotated[str, typer.Argument(help="Device whose verdicts to show.")],
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Newest verdicts to show.")] = 20,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a device's quarantine state, enrolled key and newest verdicts."""
    try:
        doc = get_json(
            resolve_target(url, token), f"/api/devices/{device_id}/attestation", {"limit": limit}
        )
    except ApiError as e:
        raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    state = (
        f"[red]quarantined[/red] ({doc['quarantine_reason']})"
        if doc["quarantined"]
        else "[green]trusted[/green]"
    )
    identity = doc["identity"]
    key = f"key {identity['key_id'][:16]}... ({identity['how']})" if identity else "no key"
    table = Table(title=f"{device_id}: {state}, {key}")
    for column in ("at", "verdict", "reasons", "agent_code", "boot_epoch"):
        table.add_column(column)
    for r in doc["results"]:
        table.add_row(
            r["at"][:19].replace("T", " "),
            "[green]ok[/green]" if r["ok"] else "[red]failed[/red]",
            "; ".join(f"{x['code']}: {x['detail']}" for x in r["reasons"]) or "-",
            (r["measurements"].get("agent_code") or "-")[:16],
            r["measurements"].get("boot_epoch", "-"),
        )
    Console().print(table)


@app.command("challenge")
def challenge(
    device_id: Annotated[str, typer.Argument(help="Device to challenge now.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Send the device a fresh nonce now; see the verdict with 'attest history'."""
    issued = _call(url, token, "POST", f"/api/devices/{device_id}/attest")
    typer.echo(f"challenge {issued['nonce'][:16]}... sent to {device_id}")


@app.command("enroll")
def enroll(
    device_id: Annotated[str, typer.Argument(help="Device whose identity key to register.")],
    public_key: Annotated[str, typer.Argument(help="Raw Ed25519 public key, base64.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Register (or replace) a device's identity key, then challenge it."""
    row = _call(
        url, token, "PUT", f"/api/devices/{device_id}/identity", body={"public_key": public_key}
    )
    typer.echo(f"{device_id} enrolled with key {row['key_id'][:16]}...")
