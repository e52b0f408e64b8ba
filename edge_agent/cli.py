"""``edge-agent``: what runs on a device."""

import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from edge_agent.attestation.measure import IMAGE_FILE
from edge_agent.config import AgentConfig, ConfigError, config_schema, load_config, read_config
from shared.provisioning import AGENT_CONFIG

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The edgefleet device agent.",
)
log = logging.getLogger("edge_agent")

# The MQTT transport's network loop uses select(), which cannot watch descriptors >= 1024; each
# simulated device holds about six, so one process stays well below that.
MAX_SIMULATED_PER_PROCESS = 150
# Where a flashed device keeps its config, relative to its root (edgefleet flash writes it).
FLASHED_CONFIG = Path(AGENT_CONFIG)


def _load_or_exit(path: Path, *, root: Path | None = None) -> AgentConfig:
    """The validated config, or exit status 2 with what is wrong on stderr."""
    try:
        return load_config(path, root=root)
    except ConfigError as e:
        typer.echo(f"edge-agent: {e}", err=True)
        raise typer.Exit(2) from e


def _exit(message: str) -> typer.Exit:
    typer.echo(f"edge-agent: {message}", err=True)
    return typer.Exit(2)


def flashed_config(root: Path) -> Path:
    """``root/etc/edgefleet/agent.yaml`` of a flashed device; ConfigError naming what is
    missing when ``root`` is not one."""
    if not root.is_dir():
        raise ConfigError(f"--root {root} is not a folder")
    missing = [
        str(relative)
        for relative in (FLASHED_CONFIG, IMAGE_FILE)
        if not (root / relative).is_file()
    ]
    if missing:
        raise ConfigError(
            f"--root {root} is not a flashed device: no {' or '.join(missing)} in it"
            " (write one with 'edgefleet flash IMAGE --target DIR', or pass --config)"
        )
    return root / FLASHED_CONFIG


def _print_version(value: bool) -> None:
    if value:
        from edge_agent import __version__

        typer.echo(f"edge-agent {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the agent's version and exit.",
        ),
    ] = False,
) -> None:
    """The edgefleet device agent."""


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def run(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Agent YAML config file (default with --root: ROOT/etc/edgefleet/agent.yaml).",
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="A flashed device's filesystem root: without --config, boot it (its config,"
            " and every absolute path in it, taken under ROOT). With --config, only the root"
            " the hardware probe and attestation read (for tests)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Load models, connect to the controller (if configured) and serve the local API."""
    _configure_logging(log_level)
    if config is None:
        if root is None:
            raise _exit("give --config FILE, or --root DIR of a flashed device")
        root = root.resolve()
        try:
            config = flashed_config(root)
        except ConfigError as e:
            raise _exit(str(e)) from e
        cfg = _load_or_exit(config, root=root)
        log.info("booting the flashed device under %s", root)
    else:
        cfg = _load_or_exit(config)
    root = root if root is not None else Path("/")

    from edge_agent.agent import Agent
    from edge_agent.api.app import create_agent_app
    from edge_agent.api_keys import ApiKeysError

    agent = Agent(cfg, root=root, config_path=config)
    try:
        api = create_agent_app(agent)
    except ApiKeysError as e:  # the keys file changed since the config was loaded
        agent.stop()
        raise _exit(str(e)) from e
    agent.load_models()
    agent.start_link()
    agent.start_metrics()
    server = uvicorn.Server(
        uvicorn.Config(
            api,
            host=cfg.api.host,
            port=cfg.api.port,
            log_level="warning",
            access_log=False,  # access lines would carry nothing useful and cost a write each
            # uvicorn believes X-Forwarded-For/-Proto from 127.0.0.1 by default: any local
            # program could pick the address and scheme the API sees. No proxy is trusted.
            proxy_headers=False,
            # The API has no WebSocket route: without this uvicorn imports the websockets
            # library at start (agent memory, docs/benchmarks.md).
            ws="none",
        )
    )
    log.info(
        "device %s serving on http://%s:%d (%s; %s)",
        cfg.device_id,
        cfg.api.host,
        cfg.api.port,
        agent.profile.device_class,
        "API keys required" if cfg.api.keys_file else "open API, loopback only",
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


@app.command()
def simulate(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Agent YAML config used as the template.")
    ],
    devices: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_SIMULATED_PER_PROCESS,
            help="Devices in this process; ids get -0000, -0001... when > 1. Run more "
            "processes for more devices.",
        ),
    ] = 1,
    records: Annotated[
        int, typer.Option(min=0, help="Records each device appends after connecting.")
    ] = 0,
    rate: Annotated[
        float, typer.Option(min=0, help="Records per second per device (0: no limit).")
    ] = 0.0,
    prefill: Annotated[
        int, typer.Option(min=0, help="Records each device buffers before connecting.")
    ] = 0,
    start_at: Annotated[
        float | None, typer.Option(help="Unix time at which all links connect at once.")
    ] = None,
    log_appends: Annotated[bool, typer.Option(help="Print every stored record.")] = False,
    exit_when_drained: Annotated[
        bool, typer.Option(help="Exit once every record has been acknowledged.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
) -> None:
    """Run model-less simulated devices (real outbox, shadow and MQTT link) for load and
    fault tests; progress goes to stdout as JSON lines."""
    _configure_logging(log_level)
    cfg = _load_or_exit(config)
    if cfg.mqtt is None:
        typer.echo("edge-agent: simulate needs an mqtt section in the config", err=True)
        raise typer.Exit(2)
    from edge_agent.simulate import Simulation, SimulationPlan

    plan = SimulationPlan(
        devices=devices,
        records=records,
        rate=rate,
        prefill=prefill,
        start_at=start_at,
        log_appends=log_appends,
        exit_when_drained=exit_when_drained,
    )
    simulation = Simulation(cfg, plan)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: simulation.stop())
    try:
        simulation.run()
    finally:
        simulation.close()


@app.command("config-schema")
def config_schema_command() -> None:
    """Print the JSON Schema of the agent config (the image build stores it in each image,
    so flashing checks a config against the agent version the image holds)."""
    typer.echo(json.dumps(config_schema(), indent=2, sort_keys=True))


@app.command("check-config")
def check_config(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Agent YAML config file (default with --root: ROOT/etc/edgefleet/agent.yaml)."
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(
            help="A flashed device's filesystem root (a mounted card, a folder 'edgefleet flash"
            " --target' wrote): every absolute path in the config is checked under ROOT, as"
            " 'run --root' reads it."
        ),
    ] = None,
) -> None:
    """Validate a config and check every file it names (models, TUF trusted root, MQTT
    password, TLS files, API keys file), without starting anything; exit 2 naming each
    key whose file is missing or unusable."""
    from edge_agent.config_files import file_problems, named_files

    if root is not None:
        root = root.resolve()
    try:
        if config is None:
            if root is None:
                raise ConfigError("give a config FILE, or --root DIR of a flashed device")
            config = flashed_config(root)
        cfg = read_config(config, root=root)
    except ConfigError as e:
        raise _exit(str(e)) from e
    problems = file_problems(cfg)
    if problems:
        where = "" if root is None else f" (paths under --root {root})"
        lines = "".join(f"\n  {problem}" for problem in problems)
        raise _exit(f"{config}: {len(problems)} file(s) it names cannot be used{where}:{lines}")
    typer.echo(
        f"{config}: ok (device {cfg.device_id}, {len(cfg.models)} model(s),"
        f" {named_files(cfg)} named file(s) present)"
    )


api_key_app = typer.Typer(
    no_args_is_help=True,
    help="Bearer keys of the local API (api.keys_file): one named key per local app.",
)
app.add_typer(api_key_app, name="api-key")
KeysFileOpt = Annotated[
    Path, typer.Option("--keys-file", "-f", help="The keys file (api.keys_file of the config).")
]


@api_key_app.command("add")
def api_key_add(
    name: Annotated[
        str, typer.Argument(help="The app's name (a-z, 0-9, '-', '_'); reaches telemetry.")
    ],
    keys_file: KeysFileOpt,
    replace: Annotated[bool, typer.Option(help="Rotate the key NAME already has.")] = False,
) -> None:
    """Make a key for NAME, print it once (it is not stored, only its SHA-256) and add it to
    the keys file. The running agent reads the file when it starts."""
    from edge_agent.api_keys import ApiKeysError, add_key

    try:
        key = add_key(keys_file, name, replace=replace)
    except (ApiKeysError, OSError) as e:
        raise _exit(str(e)) from e
    typer.echo(f"edge-agent: key for {name} stored (as its SHA-256) in {keys_file}", err=True)
    typer.echo(key)


@api_key_app.command("list")
def api_key_list(keys_file: KeysFileOpt) -> None:
    """The app names in the keys file (keys cannot be shown: only their hashes are kept)."""
    from edge_agent.api_keys import ApiKeysError, read_keys_file

    try:
        keys = read_keys_file(keys_file)
    except ApiKeysError as e:
        raise _exit(str(e)) from e
    for name in sorted(keys.hashes):
        typer.echo(name)


@api_key_app.command("remove")
def api_key_remove(
    name: Annotated[str, typer.Argument(help="The app whose key to drop.")],
    keys_file: KeysFileOpt,
) -> None:
    """Drop NAME's key; the agent refuses it from its next start."""
    from edge_agent.api_keys import ApiKeysError, remove_key

    try:
        remove_key(keys_file, name)
    except (ApiKeysError, OSError) as e:
        raise _exit(str(e)) from e
    typer.echo(f"edge-agent: key for {name} removed from {keys_file}", err=True)


def main() -> None:
    app()
