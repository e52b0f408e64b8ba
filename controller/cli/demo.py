"""``edgefleet demo``: a controller, its embedded broker and simulated devices on one host."""

from pathlib import Path
from typing import Annotated

import typer

from controller.cli.common import fail as _fail
from controller.cli.common import setup_logging


def demo(
    devices: Annotated[int, typer.Option(min=1, max=16, help="Simulated devices.")] = 3,
    model: Annotated[Path, typer.Option(help="GGUF model the devices serve.")] = Path(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".edgefleet/demo"
    ),
    port: Annotated[int, typer.Option(help="Console port; 0 picks a free one.")] = 0,
    traffic: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds between synthetic chat requests to the devices; 0 turns it off."
        ),
    ] = 3.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "warning",
    plaintext: Annotated[
        bool,
        typer.Option(
            "--plaintext",
            help="MQTT without TLS (by default the demo makes its own CA and every device and "
            "the broker get certificates from it).",
        ),
    ] = False,
) -> None:
    """Controller + embedded broker (mutual TLS) + SQLite + N simulated devices serving
    llama.cpp."""
    from controller.demo import DemoError, run_demo

    setup_logging(log_level)
    if not model.is_file():
        raise _fail(
            f"demo model {model} not found; fetch it with 'python scripts/fetch_demo_model.py'",
            2,
        )
    try:
        run_demo(
            devices=devices,
            model=model,
            data_dir=data_dir,
            port=port,
            traffic_interval_s=traffic,
            tls=not plaintext,
        )
    except DemoError as e:
        raise _fail(str(e)) from e


__all__ = ["demo"]
