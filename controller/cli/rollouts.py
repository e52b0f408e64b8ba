"""``edgefleet rollouts``: create, inspect, steer and watch staged rollouts over the API."""

import json
import re
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from controller.api_client import ApiError, Target, get_json, request_json, resolve_target
from controller.cli.common import TokenOpt, UrlOpt
from controller.cli.common import fail as _fail

app = typer.Typer(no_args_is_help=True, help="Staged model rollouts with canaries and gates.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
ReasonOpt = Annotated[str, typer.Option(help="Why (kept in the audit log).")]
TERMINAL = ("completed", "rolled_back", "aborted")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WINDOW = re.compile(
    r"^(?:(?P<days>[a-z,\-*]+)\s+)?(?P<start>\d{1,2}:\d{2})-(?P<end>\d{1,2}:\d{2})$"
)


def _target(url: str | None, token: str | None) -> Target:
    try:
        return resolve_target(url, token)
    except ApiError as e:
        raise _fail(str(e)) from e


def _days(spec: str) -> list[str]:
    if spec == "*":
        return []
    days: list[str] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(f"unknown day in {spec!r}; use mon..sun")
        if not last:
            days.append(first)
            continue
        i, j = _DAYS.index(first), _DAYS.index(last)
        span = range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)]
        days.extend(_DAYS[k] for k in span)
    return days


def parse_window(text: str) -> dict[str, Any]:
    """``"mon-fri 22:00-02:00"``, ``"sat,sun 00:00-23:59"`` or ``"01:00-04:00"`` (UTC)."""
    match = _WINDOW.match(text.strip().lower())
    if match is None:
        raise ValueError(
            f"window {text!r}: expected '[DAYS ]HH:MM-HH:MM', e.g. 'mon-fri 22:00-02:00'"
        )
    window: dict[str, Any] = {"start": match["start"], "end": match["end"]}
    if match["days"]:
        window["days"] = _days(match["days"])
    return window


@app.command("create")
def create(
    model: Annotated[str, typer.Option(help="Model name in the registry.")],
    version: Annotated[str, typer.Option(help="Model version to roll out.")],
    wave: Annotated[
        list[str],
        typer.Option(help="A wave: canary:N, N or P% (cumulative); repeat, the last 100%."),
    ],
    device_class: Annotated[
        list[str] | None, typer.Option(help="Only devices of this class; repeatable.")
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="Shadow label KEY=VALUE (or KEY); repeatable.")
    ] = None,
    device: Annotated[list[str] | None, typer.Option(help="Only these device ids.")] = None,
    soak: Annotated[float | None, typer.Option(help="Minimum soak per wave, seconds.")] = None,
    min_samples: Annotated[
        int | None, typer.Option(help="Inferences per wave before gates count.")
    ] = None,
    max_error_rate: Annotated[float | None, typer.Option(help="e.g. 0.02")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="p95 latency budget.")] = None,
    max_cascade_rate: Annotated[float | None, typer.Option()] = None,
    max_drift: Annotated[float | None, typer.Option()] = None,
    min_install_success: Annotated[float | None, typer.Option(help="e.g. 0.95")] = None,
    device_timeout: Annotated[float | None, typer.Option(help="Silent device timeout, s.")] = None,
    timeout_policy: Annotated[str, typer.Option(help="fail or exclude.")] = "fail",
    window: Annotated[
        list[str] | None,
        typer.Option(help="Maintenance window (UTC), e.g. 'mon-fri 22:00-02:00'; repeatable."),
    ] = None,
    start_at: Annotated[
        datetime | None, typer.Option(help="Do not start before (ISO time, UTC if naive).")
    ] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a rollout; the canary starts right away (or at --start-at / in a window)."""
    gates: dict[str, Any] = {
        key: value
        for key, value in {
            "min_soak_s": soak,
            "min_samples": min_samples,
            "max_error_rate": max_error_rate,
            "max_latency_p95_ms": max_latency_ms,
            "max_cascade_rate": max_cascade_rate,
            "max_drift": max_drift,
            "min_install_success": min_install_success,
        }.items()
        if value is not None
    }
    try:
        windows = [parse_window(w) for w in window or []]
    except ValueError as e:
        raise _fail(str(e), 2) from e
    body: dict[str, Any] = {
        "model": model,
        "version": version,
        "waves": wave,
        "cohort": {
            "device_classes": device_class or [],
            "tags": tag or [],
            "device_ids": device or [],
        },
        "gates": gates,
        "timeout_policy": timeout_policy,
        "windows": windows,
    }
    if device_timeout is not None:
        body["device_timeout_s"] = device_timeout
    if start_at is not None:
        body["start_at"] = (
            start_at.isoformat() if start_at.tzinfo else start_at.isoformat() + "+00:00"
        )
    try:
        rollout = request_json(_target(url, token), "POST", "/api/rollouts", body=body)
    except ApiError as e:
        raise _fail(str(e)) from e
    _show(rollout, as_json)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only rollouts in this status.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List rollouts, newest first."""
    params: dict[str, Any] = {"limit": 500}
    if status:
        params["status"] = status
    try:
        page = get_json(_target(url, token), "/api/rollouts", params)
    except ApiError as e:
        raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(page, indent=2, default=str))
        return
    table = Table(title=f"{page['count']} rollouts")
    for column in ("id", "model", "version", "status", "wave", "reason", "created by"):
        table.add_column(column)
    for r in page["data"]:
        table.add_row(
            str(r["id"]),
            r["model"],
            r["version"],
            _status(r["status"]),
            str(r["wave"] + 1) if r["wave"] >= 0 else "-",
            (r["reason"] or "")[:60],
            r["created_by"],
        )
    Console().print(table)


def _status(status: str) -> str:
    colour = {
        "running": "green",
        "completed": "green",
        "paused": "yellow",
        "pending": "yellow",
        "halted": "red",
        "rolling_back": "red",
        "rolled_back": "red",
        "aborted": "red",
    }.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"


def _show(rollout: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rollout, indent=2, default=str))
        return
    console = Console()
    console.print(
        f"rollout {rollout['id']}: {rollout['model']} {rollout['version']} "
        f"({rollout['target']}) {_status(rollout['status'])}"
    )
    if rollout.get("reason"):
        console.print(f"  {rollout['reason']}", highlight=False)
    table = Table(title="waves")
    for column in ("#", "wave", "size", "members", "phase", "outcomes"):
        table.add_column(column)
    for w in rollout.get("waves", []):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(w["outcomes"].items()))
        table.add_row(
            str(w["index"] + 1),
            w["wave"],
            str(w["cumulative_size"]),
            str(w["members"]),
            w["phase"],
            outcomes or "-",
        )
    console.print(table)
    gates = rollout.get("gates")
    if gates:
        gt = Table(title=f"gates (wave {gates['wave'] + 1}): {gates['verdict']}")
        for column in ("gate", "status", "value", "threshold", "why"):
            gt.add_column(column)
        for g in gates["gates"]:
            gt.add_row(
                g["gate"],
                g["status"],
                "-" if g["value"] is None else f"{g['value']:.4g}",
                "-" if g["threshold"] is None else f"{g['threshold']:.4g}",
                g["reason"],
            )
        console.print(gt)


@app.command("show")
def show(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    url: UrlOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a rollout's waves, outcomes and latest gate evaluation."""
    try:
        rollout = get_json(_target(url, token), f"/api/rollouts/{rollout_id}")
    except ApiError as e:
        raise _fail(str(e)) from e
    _show(rollout, as_json)


def _command(kind: str, rollout_id: int, reason: str, url: str | None, token: str | None) -> None:
    try:
        rollout = request_json(
            _target(url, token),
            "POST",
            f"/api/rollouts/{rollout_id}/{kind}",
            body={"reason": reason},
        )
    except ApiError as e:
        raise _fail(str(e)) from e
    typer.echo(f"rollout {rollout_id}: {rollout['status']}")


@app.command("pause")
def pause(
    rollout_id: Annotated[int, typer.Argument()],
    reason: ReasonOpt = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Hold a rollout: no new assignments or gate decisions until resumed."""
    _command("pause", rollout_id, reason, url, token)


@app.command("resume")
def resume(
    rollout_id: Annotated[int, typer.Argument()],
    reason: ReasonOpt = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Continue a paused rollout, or give a halted one a fresh soak."""
    _command("resume", rollout_id, reason, url, token)


@app.command("abort")
def abort(
    rollout_id: Annotated[int, typer.Argument()],
    reason: ReasonOpt = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """End a rollout where it stands (devices keep their current model)."""
    _command("abort", rollout_id, reason, url, token)


@app.command("rollback")
def rollback(
    rollout_id: Annotated[int, typer.Argument()],
    reason: ReasonOpt = "",
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Send every assigned device back to the model it ran before."""
    _command("rollback", rollout_id, reason, url, token)


@app.command("watch")
def watch(
    rollout_id: Annotated[int, typer.Argument()],
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between polls.")] = 2.0,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Follow a rollout with a progress bar per wave until it finishes (Ctrl-C stops)."""
    target = _target(url, token)
    settled = ("installed", "failed", "timed_out", "reverted", "revert_timed_out", "skipped")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[phase]}"),
    ) as progress:
        tasks: dict[int, TaskID] = {}
        last = ""
        while True:
            try:
                rollout = get_json(target, f"/api/rollouts/{rollout_id}")
            except ApiError as e:
                raise _fail(str(e)) from e
            for w in rollout["waves"]:
                done = sum(n for k, n in w["outcomes"].items() if k in settled)
                if w["index"] not in tasks:
                    tasks[w["index"]] = progress.add_task(
                        f"wave {w['index'] + 1} ({w['wave']})",
                        total=max(w["members"], 1),
                        phase=w["phase"],
                    )
                progress.update(tasks[w["index"]], completed=done, phase=w["phase"])
            line = f"{rollout['status']}: {rollout['reason']}"
            if line != last:  # status changes scroll above the bars
                progress.console.print(line, highlight=False)
                last = line
            if rollout["status"] in TERMINAL:
                break
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                break
    typer.echo(f"rollout {rollout_id}: {rollout['status']} - {rollout['reason']}")
    if rollout["status"] != "completed":
        raise typer.Exit(1)


__all__ = ["app", "parse_window"]
