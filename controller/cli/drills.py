"""``edgefleet drill offline``: inject a fault into a live fleet and check it kept working."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from controller.api_client import ApiError, resolve_target
from controller.cli.common import TokenOpt, UrlOpt
from controller.cli.common import fail as _fail
from controller.drills.scenarios import SCENARIOS

if TYPE_CHECKING:
    from controller.drills.runner import DrillOptions

app = typer.Typer(no_args_is_help=True, help="Offline-operation drills against a live fleet.")
out = Console(soft_wrap=True)


@app.command()
def offline(
    scenario: Annotated[str, typer.Option(help=f"One of: {', '.join(SCENARIOS)}.")],
    devices: Annotated[int, typer.Option(min=1, max=50, help="Drill agents to start.")] = 2,
    duration: Annotated[float, typer.Option(min=5, help="Seconds of traffic and faults.")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write the JSON report to FILE.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    broker_url: Annotated[
        str,
        typer.Option(help="The fleet's broker (the agents reach it through the drill's proxy)."),
    ] = "mqtt://127.0.0.1:1883",
    mqtt_protocol: Annotated[str, typer.Option(help="5 or 3.1.1.")] = "5",
    model: Annotated[
        Path | None, typer.Option(help="Local model the agents serve (default: the demo GGUF).")
    ] = None,
    model_name: Annotated[str, typer.Option(help="Name the agents give the model.")] = "drill",
    runtime: Annotated[str, typer.Option(help="llama.cpp or ort-genai.")] = "llama.cpp",
    embedded: Annotated[
        bool, typer.Option(help="Run the drill's own controller (SQLite) instead of --url.")
    ] = False,
    controller_cmd: Annotated[
        str | None,
        typer.Option(help="Shell command that starts the controller at --url (controller-crash)."),
    ] = None,
    latency_budget_ms: Annotated[float, typer.Option(min=1, help="The agents' budget.")] = 2000,
    rate: Annotated[float, typer.Option(min=0.1, help="Requests per second per device.")] = 2.0,
    flap_period: Annotated[
        float, typer.Option(min=0.5, help="Seconds per flap (cut, heal).")
    ] = 2.0,
    recovery_timeout: Annotated[
        float, typer.Option(min=5, help="Seconds to wait for recovery.")
    ] = 90,
    rollout_version: Annotated[
        str | None, typer.Option(help="Published version of --model-name (rollout-partition).")
    ] = None,
    workdir: Annotated[Path | None, typer.Option(help="Folder for agent state and logs.")] = None,
    keep_workdir: Annotated[
        bool, typer.Option(help="Keep the work folder the drill makes when no --workdir is given.")
    ] = False,
) -> None:
    """Start drill agents behind cuttable links, drive chat traffic, inject the scenario's
    fault and check serving, data locality, telemetry, desired state and rollouts. Exit 0
    when every check passed (or the scenario was skipped, with its reason), 1 otherwise."""
    from controller.drills.runner import DEFAULT_MODEL, DrillOptions

    protocol, engine = _check_choices(scenario, mqtt_protocol, runtime)
    final_url, final_token = _controller(url, token, embedded)
    options = DrillOptions(
        scenario=scenario,
        devices=devices,
        duration_s=duration,
        controller_url=final_url,
        token=final_token,
        broker_url=broker_url,
        mqtt_protocol=protocol,
        model=model or DEFAULT_MODEL,
        model_name=model_name,
        model_runtime=engine,
        embedded=embedded,
        controller_cmd=controller_cmd,
        workdir=workdir,
        keep_workdir=keep_workdir,
        latency_budget_ms=latency_budget_ms,
        rate=rate,
        flap_period_s=flap_period,
        recovery_timeout_s=recovery_timeout,
        rollout_version=rollout_version,
    )
    result = _run(options, as_json)
    text = json.dumps(result, indent=2, default=str)
    if report is not None:
        report.write_text(text + "\n", encoding="utf-8")
    if as_json:
        typer.echo(text)
    else:
        _print(result)
    raise typer.Exit(0 if result["passed"] is not False else 1)


def _check_choices(
    scenario: str, mqtt_protocol: str, runtime: str
) -> tuple[Literal["5", "3.1.1"], Literal["llama.cpp", "ort-genai"]]:
    """The scenario, MQTT protocol and runtime checked (exit 2 on a wrong one)."""
    if scenario not in SCENARIOS:
        raise _fail(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}", 2)
    if mqtt_protocol not in ("5", "3.1.1"):
        raise _fail("--mqtt-protocol must be 5 or 3.1.1", 2)
    if runtime not in ("llama.cpp", "ort-genai"):
        raise _fail("--runtime must be llama.cpp or ort-genai", 2)
    return ("5" if mqtt_protocol == "5" else "3.1.1"), (
        "llama.cpp" if runtime == "llama.cpp" else "ort-genai"
    )


def _controller(
    url: str | None, token: str | None, embedded: bool
) -> tuple[str | None, str | None]:
    """The controller's URL and token, or (None, None) for the drill's embedded one."""
    if embedded:
        return None, None
    try:
        target = resolve_target(url, token)
    except ApiError as e:
        raise _fail(f"{e} (or run with --embedded)", 2) from e
    return target.url, target.token


def _run(options: "DrillOptions", as_json: bool) -> dict[str, Any]:
    """Run the drill, saying each step unless JSON was asked for; its result."""
    from controller.drills.processes import DrillError
    from controller.drills.runner import run_drill

    say = (
        (lambda line: None) if as_json else (lambda line: out.print(escape(line), highlight=False))
    )
    try:
        return run_drill(options, say)
    except ValueError as e:
        raise _fail(str(e), 2) from e
    except DrillError as e:
        raise _fail(f"drill could not run: {e}") from e


def _print(result: dict[str, object]) -> None:
    if result.get("skipped"):
        out.print(f"[yellow]skipped[/yellow]: {escape(str(result['skipped']))}")
        return
    checks = result.get("checks")
    assert isinstance(checks, list)
    for check in checks:
        mark = {True: "[green]PASS[/green]", False: "[red]FAIL[/red]", None: "[dim]n/a [/dim]"}
        numbers = ", ".join(f"{k}={v}" for k, v in check["measured"].items())
        out.print(f"{mark[check['passed']]} {check['name']}: {escape(check['detail'])}")
        if numbers:
            out.print(f"      {escape(numbers)}", highlight=False)
    verdict = "[green]passed[/green]" if result["passed"] else "[red]failed[/red]"
    stored = f" (stored as drill {result['id']})" if result.get("id") else ""
    out.print(f"drill {escape(str(result['scenario']))} {verdict}{stored}")
