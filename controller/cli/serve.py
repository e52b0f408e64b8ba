"""``edgefleet serve``: run the controller (API, console, ingest, scheduler, broker)."""

import signal
from typing import Annotated, Any

import typer

from controller.cli.common import ConfigOpt, settings_or_exit, setup_logging
from controller.cli.common import fail as _fail


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (overrides config).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (overrides config).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the controller: API, console, ingest and scheduler (and the embedded broker)."""
    import uvicorn

    from controller.app import create_app

    setup_logging(log_level)
    overrides: dict[str, Any] = {}
    if host:
        overrides["http_host"] = host
    if port:
        overrides["http_port"] = port
    settings = settings_or_exit(config, **overrides)
    from controller.updates.errors import KeyStoreError
    from controller.updates.keys import read_passphrase

    try:  # a wrong path should be one line at start, not a traceback from the lifespan
        read_passphrase(settings.updates.passphrase_file)
    except KeyStoreError as e:
        raise _fail(f"invalid controller configuration: updates.passphrase_file: {e}", 2) from e
    # uvicorn re-raises the stop signal after a graceful shutdown; no-op handlers turn that
    # into a normal exit (status 0) once the lifespan has stopped ingest and the broker.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
    )


__all__ = ["serve"]
