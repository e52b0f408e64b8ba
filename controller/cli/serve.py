"""``edgefleet serve``: run the controller (API, console, ingest, scheduler, broker)."""

import signal
import socket
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from controller.cli.common import ConfigOpt, settings_or_exit, setup_logging
from controller.cli.common import fail as _fail
from controller.pki.https import server_context
from controller.settings import Settings
from shared.broker_url import TlsConfigError

if TYPE_CHECKING:
    import uvicorn


def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Bind address (overrides config).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (overrides config).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the controller: API, console, ingest and scheduler (and the embedded broker)."""

    from controller.app import create_app

    setup_logging(log_level)
    overrides: dict[str, Any] = {}
    if host:
        overrides["http_host"] = host
    if port:
        overrides["http_port"] = port
    settings = settings_or_exit(config, database="create", **overrides)
    from controller.updates.errors import KeyStoreError
    from controller.updates.keys import read_passphrase

    try:  # a wrong path should be one line at start, not a traceback from the lifespan
        read_passphrase(settings.updates.passphrase_file)
    except KeyStoreError as e:
        raise _fail(f"invalid controller configuration: updates.passphrase_file: {e}", 2) from e
    app = create_app(settings)
    try:  # the certificate and key are read here, before anything starts
        server = server_config(settings, app)
    except TlsConfigError as e:
        raise _fail(f"invalid controller configuration: {e}", 2) from e
    # uvicorn re-raises the stop signal after a graceful shutdown; no-op handlers turn that
    # into a normal exit (status 0) once the lifespan has stopped ingest and the broker.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)

    def started(bound: list[tuple[str, int]]) -> None:
        for line in start_report(settings, app, bound, config=config, log_level=log_level):
            typer.echo(f"edgefleet: {line}", err=True)

    running = informing_server(server, started)
    running.run()
    if not running.started:  # as uvicorn.run: the port was taken, the lifespan failed...
        raise typer.Exit(3)


def informing_server(
    config: "uvicorn.Config", on_started: Callable[[list[tuple[str, int]]], None]
) -> "uvicorn.Server":
    """A uvicorn server that calls ``on_started`` with the addresses it bound, once the
    lifespan has started the services and the sockets listen (and only then)."""
    import uvicorn

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                bound = [
                    (str(s.getsockname()[0]), int(s.getsockname()[1]))
                    for server in self.servers
                    for s in server.sockets
                ]
                on_started(bound)

    return _Server(config)


def start_report(
    settings: Settings,
    app: Any,
    bound: list[tuple[str, int]],
    *,
    config: Path | None,
    log_level: str = "info",
) -> list[str]:
    """What serve prints once it listens: a warning per thing that will bite later
    (controller/cli/_startup.py), then the console and API URL it answers on."""
    from controller.cli._startup import display_url, gather_facts, startup_warnings

    services = app.state.services
    lines: list[str] = []
    try:
        facts = gather_facts(
            services.engine, services.tuf, services.broker.port if services.broker else None
        )
    except Exception as e:
        lines.append(f"warning: start checks failed: {type(e).__name__}: {e}")
    else:
        lines += [
            f"warning: {w}"
            for w in startup_warnings(settings, facts, config=config, log_level=log_level)
        ]
    if plaintext_beyond_loopback(settings):
        lines.append(
            "warning: plain HTTP on a non-loopback address: passwords, tokens and"
            " session cookies cross the network in the clear; set http_tls (docs/tls.md)"
        )
    scheme = "https" if settings.http_tls.enabled else "http"
    first = bound[0] if bound else (settings.http_host, settings.http_port)
    url, note = display_url(scheme, first)
    extra = f"; {note}" if note else ""
    lines.append(f"serving {url} (console {url}/console, API {url}/api{extra})")
    return lines


def plaintext_beyond_loopback(settings: Settings) -> bool:
    """True when the controller would serve plain HTTP to the network: no ``http_tls``, no
    reverse proxy in ``forwarded_allow_ips`` terminating TLS, and a routable bind address."""
    if settings.http_tls.enabled or settings.forwarded_allow_ips:
        return False
    host = settings.http_host.strip("[]")
    if host == "localhost":
        return False
    try:
        return not ip_address(host).is_loopback
    except ValueError:
        return True


def base_url(settings: Settings) -> str:
    """Where the controller answers: https:// when ``http_tls`` is set."""
    scheme = "https" if settings.http_tls.enabled else "http"
    host = settings.http_host
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{settings.http_port}"


def server_config(settings: Settings, app: Any, *, log_level: str = "warning") -> "uvicorn.Config":
    """uvicorn's configuration for ``app``: TLS 1.2+ with ``http_tls``'s certificate (read
    now, so a file that cannot be used fails before anything starts), and proxy headers
    believed from ``forwarded_allow_ips`` only (none by default)."""
    import uvicorn

    options: dict[str, Any] = {}
    tls = settings.http_tls
    if tls.cert_file is not None:
        context = server_context(tls.cert_file, tls.key_file)
        options["ssl_context_factory"] = lambda config, default: context
    trusted = settings.forwarded_allow_ips
    return uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=log_level,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=",".join(trusted) if trusted else "",
        **options,
    )


__all__ = [
    "base_url",
    "informing_server",
    "plaintext_beyond_loopback",
    "serve",
    "server_config",
    "start_report",
]
