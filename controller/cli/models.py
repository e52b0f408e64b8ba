"""``edgefleet models``: publish and list model versions in the signed-update repository.

``models add`` works on the controller host directly, streaming the file into the
repository (``controller/cli/keys.py`` holds the repository options it shares); ``models
upload`` talks to the controller's API like the other commands do, and ``models list`` does
either: with ``-c`` (or ``EDGEFLEET_CONFIG``) it reads the registry on the controller host,
like ``models add`` writes it, else it asks the API.
Every failure is one line on stderr and a non-zero exit, never a traceback.
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from controller.api_client import ApiError, get_json, resolve_target, upload_file
from controller.cli.common import (
    ConfigOpt,
    TokenOpt,
    UrlOpt,
    err,
    operator_actor,
    settings_or_exit,
)
from controller.cli.common import fail as _fail
from controller.cli.keys import (
    KeysDirOpt,
    PassphraseOpt,
    RepoDirOpt,
    open_repository,
    updates_errors,
)

models_app = typer.Typer(no_args_is_help=True, help="Publish and list model versions.")

# What an operator says about a model version, the same for `models add` and `models upload`.
ArtifactArg = Annotated[Path, typer.Argument(help="The model artifact (GGUF, ONNX, ...).")]
ModelNameOpt = Annotated[str, typer.Option(help="Model name, as agents configure it.")]
ModelVersionOpt = Annotated[str, typer.Option(help="Model version (unique per name).")]
RuntimeOpt = Annotated[str, typer.Option(help="llama.cpp, ort-genai or onnx.")]
QuantizationOpt = Annotated[str, typer.Option(help="e.g. Q4_K_M, int8.")]
DeviceClassOpt = Annotated[
    list[str] | None, typer.Option(help="Compatible device class; repeatable (none: all).")
]
MinAgentOpt = Annotated[str, typer.Option(help="Oldest agent that may run it.")]
LatencyOpt = Annotated[float | None, typer.Option(help="Typical latency on its device classes.")]
FilenameOpt = Annotated[
    str | None, typer.Option(help="File name in the target path (default: FILE's name).")
]


@models_app.command("add")
def models_add(
    file: ArtifactArg,
    name: ModelNameOpt,
    version: ModelVersionOpt,
    runtime: RuntimeOpt,
    quantization: QuantizationOpt = "",
    device_class: DeviceClassOpt = None,
    min_agent_version: MinAgentOpt = "0",
    expected_latency_ms: LatencyOpt = None,
    filename: FilenameOpt = None,
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Publish a model version on the controller host: stream-hash the file into the
    repository, record it in the registry and sign new targets, snapshot and timestamp."""
    from controller.db import make_engine, session_scope
    from controller.migrations import init_db
    from controller.updates.publish import ModelSpec, add_model_file

    settings, repo = open_repository(config, repo_dir, keys_dir, passphrase_file)
    if not file.is_file():
        raise _fail(f"{file} is not a file", 2)
    engine = make_engine(settings.database_url)
    try:
        with updates_errors():
            spec = ModelSpec(
                name=name,
                version=version,
                runtime=runtime,
                filename=filename or file.name,
                quantization=quantization,
                device_classes=tuple(device_class or ()),
                min_agent_version=min_agent_version,
                expected_latency_ms=expected_latency_ms,
            )
            init_db(engine)
            with (
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    TimeRemainingColumn(),
                    console=err,
                    transient=True,
                ) as progress,
                session_scope(engine) as session,
            ):
                task = progress.add_task(f"hashing {file.name}", total=file.stat().st_size)
                row = add_model_file(
                    session, repo, file, spec, actor=operator_actor(),
                    progress=lambda n: progress.advance(task, n),
                )  # fmt: skip
                summary = (row.target_path, row.sha256, row.length)
            versions = repo.load().versions()
    finally:
        engine.dispose()
    path, sha, length = summary
    typer.echo(f"published {name} {version} as {path} (sha256 {sha}, {length} bytes)")
    typer.echo(
        f"targets v{versions['targets']}, snapshot v{versions['snapshot']},"
        f" timestamp v{versions['timestamp']}"
    )


def _registry_page(
    config: Path | None, name: str | None, runtime: str | None, device_class: str | None
) -> dict[str, Any]:
    """The registry rows the API's ``GET /api/models`` would list, read from the database."""
    from controller.db import make_engine, session_scope
    from controller.rollouts.cohort import compatible
    from controller.updates.registry import model_versions

    settings = settings_or_exit(config)
    engine = make_engine(settings.database_url)
    try:
        with session_scope(engine) as session:
            rows = [
                row.model_dump(mode="json", exclude={"content_sha256"})
                for row in model_versions(session, name=name, runtime=runtime)
                if device_class is None or compatible(device_class, row.device_classes)
            ]
    finally:
        engine.dispose()
    return {"data": rows[:1000], "count": len(rows)}


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    runtime: Annotated[str | None, typer.Option(help="Only this runtime.")] = None,
    device_class: Annotated[str | None, typer.Option(help="Only models for this class.")] = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List published model versions, newest first: through the API, or with -c from the
    database on the controller host."""
    source = ctx.get_parameter_source("config")
    from_command_line = source is not None and source.name == "COMMANDLINE"
    if config is not None and url is not None and from_command_line:
        raise _fail("pass -c/--config (read the registry here) or --url (ask the API), not both", 2)
    if config is not None and url is None:
        page = _registry_page(config, name, runtime, device_class)
    else:
        params: dict[str, Any] = {"limit": 1000}
        for key, value in (("name", name), ("runtime", runtime), ("device_class", device_class)):
            if value is not None:
                params[key] = value
        try:
            page = get_json(resolve_target(url, token), "/api/models", params)
        except ApiError as e:
            raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(page, indent=2))
        return
    table = Table(title=f"{page['count']} model version(s)")
    for column in ("name", "version", "runtime", "quant", "classes", "size", "sha256", "added"):
        table.add_column(column)
    for m in page["data"]:
        table.add_row(
            m["name"],
            m["version"],
            m["runtime"],
            m["quantization"] or "-",
            ", ".join(m["device_classes"]) or "all",
            f"{m['length'] / 1e6:.1f} MB",
            m["sha256"][:12],
            str(m["created_at"])[:19].replace("T", " "),
        )
    Console().print(table)


@models_app.command("upload")
def models_upload(
    file: ArtifactArg,
    name: ModelNameOpt,
    version: ModelVersionOpt,
    runtime: RuntimeOpt,
    quantization: QuantizationOpt = "",
    device_class: DeviceClassOpt = None,
    min_agent_version: MinAgentOpt = "0",
    expected_latency_ms: LatencyOpt = None,
    filename: FilenameOpt = None,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Publish a model version through a remote controller's API (streamed upload)."""
    if not file.is_file():
        raise _fail(f"{file} is not a file", 2)
    try:
        target = resolve_target(url, token)
    except ApiError as e:
        raise _fail(str(e)) from e
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("name", name),
        ("version", version),
        ("runtime", runtime),
        ("filename", filename or file.name),
        ("quantization", quantization),
        ("min_agent_version", min_agent_version),
    ]
    params += [("device_class", c) for c in device_class or ()]
    if expected_latency_ms is not None:
        params.append(("expected_latency_ms", str(expected_latency_ms)))
    try:
        row = upload_file(target, "/api/models", file, params=params)
    except ApiError as e:
        raise _fail(str(e)) from e
    typer.echo(f"published {row['name']} {row['version']} as {row['target_path']}")
