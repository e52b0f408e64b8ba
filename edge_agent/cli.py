"""``edge-agent``: what runs on a device."""

import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from edge_agent.config import ConfigError, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The edgefleet device agent.",
)
log = logging.getLogger("edge_agent")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="Agent YAML config file.")],
    root: Annotated[
        Path, typer.Option(help="Filesystem root the hardware probe reads (for tests).")
    ] = Path("/"),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Load models, connect to the controller (if configured) and serve the local API."""
    _configure_logging(log_level)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from e

    from edge_agent.agent import Agent
    from edge_agent.openai_api import create_agent_app

    agent = Agent(cfg, root=root)
    agent.load_models()
    agent.start_link()
    server = uvicorn.Server(
        uvicorn.Config(
            create_agent_app(agent),
            host=cfg.api.host,
            port=cfg.api.port,
            log_level="warning",
            access_log=False,  # access lines would carry nothing useful and cost a write each
        )
    )
    log.info(
        "device %s serving on http://%s:%d (%s)",
        cfg.device_id,
        cfg.api.host,
        cfg.api.port,
        agent.profile.device_class,
    )
    # uvicorn stops gracefully on SIGINT/SIGTERM, restores the previous handlers and then
    # re-raises the signal; with no-op handlers in place that re-raise lands here harmlessly
    # and the clean MQTT death below still gets sent.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    try:
        server.run()
    finally:
        agent.stop()
        log.info("device %s stopped", cfg.device_id)


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Argument(help="Agent YAML config file.")]) -> None:
    """Validate a config file and say what is wrong with it, without starting anything."""
    try:
        cfg = load_config(config)
    except ConfigError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"{config}: ok (device {cfg.device_id}, {len(cfg.models)} model(s))")


def main() -> None:
    app()
