"""``edgefleet fleet``, ``edgefleet drift`` and ``edgefleet alerts``: fleet telemetry, drift
scores and references, and alerts, over the API (rich tables, ``--json`` on each)."""

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, Target, get_json, request_json, resolve_target
from controller.cli.common import TokenOpt, UrlOpt
from controller.cli.common import fail as _fail

fleet_app = typer.Typer(no_args_is_help=True, help="The fleet at a glance.")
drift_app = typer.Typer(no_args_is_help=True, help="Model drift: scores and references.")
alerts_app = typer.Typer(no_args_is_help=True, help="Alerts raised by telemetry.")
# All three under one app, for wiring as one group or for tests.
app = typer.Typer(no_args_is_help=True, help="Fleet telemetry, drift and alerts.")
app.add_typer(fleet_app, name="fleet")
app.add_typer(drift_app, name="drift")
app.add_typer(alerts_app, name="alerts")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
HoursOpt = Annotated[int, typer.Option(min=1, max=2160, help="Window, in hours.")]


def _target(url: str | None, token: str | None) -> Target:
    try:
        return resolve_target(url, token)
    except ApiError as e:
        raise _fail(str(e)) from e


def _get(url: str | None, token: str | None, path: str, params: dict[str, Any]) -> Any:
    try:
        return get_json(_target(url, token), path, params)
    except ApiError as e:
        raise _fail(str(e)) from e


def _json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@fleet_app.command("summary")
def fleet_summary(
    hours: HoursOpt = 24, url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """Devices, request mix per tier, rates and cost estimates over the last hours."""
    body = _get(url, token, "/api/fleet/summary", {"hours": hours})
    if as_json:
        _json(body)
        return
    d = body["devices"]
    console = Console()
    console.print(
        f"devices: {d['total']} ({d['online']} online, {d['offline']} offline, "
        f"{d['quarantined']} quarantined)",
        highlight=False,
    )
    table = Table(title=f"requests, last {body['window_hours']} h")
    table.add_column("tier")
    table.add_column("requests", justify="right")
    table.add_column("share", justify="right")
    total = body["requests"]["total"]
    for tier, n in body["requests"]["by_tier"].items():
        table.add_row(tier, str(n), _pct(n / total if total else None))
    table.add_row("[bold]all[/bold]", str(total), "")
    console.print(table)
    rates = Table(title="rates and costs")
    rates.add_column("measure")
    rates.add_column("value", justify="right")
    for name in ("escalation_rate", "cascade_rate", "fallback_rate", "error_rate"):
        rates.add_row(name.replace("_", " "), _pct(body[name]))
    rates.add_row("cloud cost saved (USD)", f"{body['cloud_cost_saved_usd']:.4f}")
    rates.add_row("cloud cost spent (USD)", f"{body['cloud_cost_spent_usd']:.4f}")
    rates.add_row("open alerts", str(body["alerts_open"]))
    rates.add_row("active rollouts", str(body["rollouts_active"]))
    console.print(rates)


@drift_app.command("list")
def drift_list(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The newest drift score of every model and feature."""
    body = _get(url, token, "/api/drift", {})
    if as_json:
        _json(body)
        return
    t = body["thresholds"]
    table = Table(title=f"drift (alert above PSI {t['psi']} or KS {t['ks']})")
    for column in ("model", "version", "feature", "hour", "psi", "ks", "samples", "alert"):
        table.add_column(column)
    for row in body["data"]:
        table.add_row(
            row["model"],
            row["version"] or "-",
            row["feature"],
            row["hour"],
            _num(row["psi"]),
            _num(row["ks"]),
            str(row["samples"]),
            "[red]yes[/red]" if row["alert"] else "no",
        )
    Console().print(table)


def _reference_line(reference: dict[str, Any] | None) -> str:
    if reference is None:
        return "reference: none yet"
    return (
        f"reference: {reference['version'] or 'any version'}, {reference['window_start']} to "
        f"{reference['window_end']}, {reference['samples']} samples ({reference['reason']})"
    )


@drift_app.command("show")
def drift_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    hours: HoursOpt = 168,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One model's reference and its hourly scores per feature."""
    body = _get(url, token, f"/api/drift/{model}", {"hours": hours})
    if as_json:
        _json(body)
        return
    console = Console()
    console.print(f"{body['model']}: {_reference_line(body['reference'])}", highlight=False)
    for feature, points in sorted(body["series"].items()):
        table = Table(title=feature)
        for column in ("hour", "version", "psi", "ks", "samples"):
            table.add_column(column)
        for p in points:
            table.add_row(
                p["hour"], p["version"] or "-", _num(p["psi"]), _num(p["ks"]), str(p["samples"])
            )
        console.print(table)
    if not body["series"]:
        console.print("no scores in this window")


@drift_app.command("reference")
def drift_reference(
    model: Annotated[str, typer.Argument(help="Model name.")],
    start: Annotated[
        datetime | None, typer.Option(help="Window start (ISO time, UTC if naive).")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="Window end (default: now).")] = None,
    version: Annotated[str | None, typer.Option(help="Only this version's sketches.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the model's drift reference from a window of its sketches."""
    body: dict[str, Any] = {}
    for key, moment in (("window_start", start), ("window_end", end)):
        if moment is not None:
            body[key] = moment.isoformat() if moment.tzinfo else moment.isoformat() + "+00:00"
    if version:
        body["version"] = version
    try:
        reference = request_json(
            _target(url, token), "POST", f"/api/drift/{model}/reference", body=body
        )
    except ApiError as e:
        raise _fail(str(e)) from e
    if as_json:
        _json(reference)
        return
    Console().print(f"{model}: {_reference_line(reference)}", highlight=False)


@alerts_app.command("list")
def alerts_list(
    state: Annotated[str, typer.Option(help="open, closed or all.")] = "open",
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first."""
    if state not in ("open", "closed", "all"):
        raise _fail("--state must be open, closed or all", 2)
    body = _get(url, token, "/api/alerts", {"state": state, "limit": limit})
    if as_json:
        _json(body)
        return
    table = Table(title=f"{body['count']} {state} alerts")
    for column in ("id", "kind", "subject", "feature", "value", "threshold", "state", "opened"):
        table.add_column(column)
    for a in body["data"]:
        table.add_row(
            str(a["id"]),
            a["kind"],
            a["subject"],
            a["feature"] or "-",
            _num(a["value"]),
            _num(a["threshold"]),
            "[red]open[/red]" if a["state"] == "open" else a["state"],
            a["opened_at"],
        )
    Console().print(table)


__all__ = ["alerts_app", "app", "drift_app", "fleet_app"]
