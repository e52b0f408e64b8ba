"""``edgefleet image``: build, sign and check firmware images; the image key.

``build``, ``keygen``, ``key`` and ``verify`` run on the build host or the controller host
and need no running controller; ``build --config`` registers the image's measurements as
golden values straight in the controller's database, ``build --url URL`` through its
API, and ``list`` reads the registered images from the API. Every failure is one line on
stderr and a non-zero exit.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.api_client import ApiError, get_json, get_public_json, post_json, resolve_target
from controller.cli.common import (
    ConfigOpt,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    audit_locally,
    operator_actor,
    settings_or_exit,
)
from controller.cli.common import fail as _fail
from controller.images.build import build_image, verify_image
from controller.images.keys import (
    generate_image_key,
    image_public_key,
    load_image_key,
    read_public_key_file,
)
from controller.images.manifest import ImageError, Manifest
from controller.images.recipe import RecipeError
from controller.images.wheelhouse import WheelhouseError
from controller.settings import Settings
from controller.updates.errors import UpdatesError
from controller.updates.keys import read_passphrase
from shared.attestation import AttestationError, decode_public_key, encode_public_key, key_id

app = typer.Typer(no_args_is_help=True, help="Firmware images: build, sign, verify.")

KeysDirOpt = Annotated[
    Path | None, typer.Option(help="Keys folder holding the image key (default: updates.keys_dir).")
]
PassphraseOpt = Annotated[
    Path | None,
    typer.Option(help="File holding the key passphrase (default: EDGEFLEET_KEY_PASSPHRASE)."),
]


@contextmanager
def _clear_errors() -> Iterator[None]:
    try:
        yield
    except ImageError as e:
        raise _fail(f"image refused: {e}") from e
    except (RecipeError, WheelhouseError) as e:
        raise _fail(str(e), 2) from e
    except UpdatesError as e:
        raise _fail(str(e)) from e
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise _fail(f"{where}{e.strerror or e}") from e


def _settings(config: Path | None, *, local_audit: bool = False) -> Settings:
    # With --config, build and keygen record in the controller's database, which must exist.
    return settings_or_exit(
        config, database="existing" if local_audit and config is not None else "unused"
    )


def _register_db(settings: Settings, manifest: Manifest, size: int) -> dict[str, Any]:
    from controller.db import make_engine, session_scope
    from controller.images.registry import register_image
    from controller.migrations import init_db

    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
        with session_scope(engine) as session:
            done = register_image(session, manifest, size=size, actor=operator_actor())
    finally:
        engine.dispose()
    return {"image": done.image_added, **done.golden_added}


def _register_api(url: str, token: str | None, manifest: Manifest) -> dict[str, Any]:
    target = resolve_target(url, token)
    added: dict[str, Any] = {}
    note = f"image {manifest.recipe.get('name', manifest.device_class)} {manifest.image_id[:12]}"
    for kind, value in (("image_id", manifest.image_id), ("agent_code", manifest.agent_code)):
        try:
            post_json(target, "/api/attestation/golden",
                      body={"kind": kind, "value": value, "note": note})  # fmt: skip
            added[kind] = True
        except ApiError as e:
            if e.status != 409:
                raise
            added[kind] = False
    return added


@app.command("build")
def build(
    recipe_dir: Annotated[Path, typer.Argument(help="Recipe folder (holds recipe.yaml).")],
    out: Annotated[Path, typer.Option(help="Image file to write (.tar).")],
    wheelhouse: Annotated[
        Path | None,
        typer.Option(help="Take wheels and sdists from this folder (air-gapped build host)."),
    ] = None,
    no_wheelhouse: Annotated[
        bool, typer.Option("--no-wheelhouse", help="Leave the wheelhouse out (dev images).")
    ] = False,
    register: Annotated[
        str | None,
        typer.Option(
            "--url",
            "--register",
            help="Register the golden values through this controller's API (--register:"
            " the older name).",
        ),
    ] = None,
    token: TokenOpt = None,
    keys_dir: KeysDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the recipe's reproducible image, sign it with the image key and register its
    image_id and agent_code as golden values (--config: in the controller's database;
    --url URL: through the API; neither: printed)."""
    if wheelhouse is not None and no_wheelhouse:
        raise _fail("--wheelhouse and --no-wheelhouse exclude each other", 2)
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise _fail(f"--wheelhouse {wheelhouse} is not a folder", 2)
    settings = _settings(config, local_audit=True)
    with _clear_errors():
        passphrase = read_passphrase(passphrase_file or settings.updates.passphrase_file)
        key = load_image_key(keys_dir or settings.updates.keys_dir, passphrase)
        built = build_image(
            recipe_dir, out, keys=key, wheelhouse=wheelhouse, fetch=not no_wheelhouse
        )
    manifest = built.manifest
    registered: dict[str, Any] | None = None
    try:
        if config is not None:
            registered = _register_db(settings, manifest, built.size)
        elif register is not None:
            registered = _register_api(register, token, manifest)
    except ApiError as e:
        raise _fail(f"image written to {out}, but registering it failed: {e}") from e
    report = {
        "path": str(out),
        "image_id": manifest.image_id,
        "agent_code": manifest.agent_code,
        "device_class": manifest.device_class,
        "agent_version": manifest.agent_version,
        "size": built.size,
        "files": len(manifest.files),
        "registered": registered,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"wrote {out} ({built.size} bytes, {len(manifest.files)} files)")
    typer.echo(f"  image_id:   {manifest.image_id}")
    typer.echo(f"  agent_code: {manifest.agent_code}")
    if registered is None:
        typer.echo(
            "not registered: pass --config FILE or --url URL --token T, or run"
            " 'edgefleet attest golden add image_id|agent_code VALUE'"
        )
    else:
        typer.echo("registered as golden values")


@app.command("keygen")
def keygen(
    keys_dir: KeysDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Create the encrypted image signing key beside the TUF keys (same passphrase rules)."""
    settings = _settings(config, local_audit=True)
    folder = keys_dir or settings.updates.keys_dir
    with _clear_errors():
        passphrase = read_passphrase(passphrase_file or settings.updates.passphrase_file)
        public = generate_image_key(folder, passphrase)
    if config is not None:
        audit_locally(settings, "image.keygen", f"image-key:{key_id(public)}", "image key created")
    typer.echo(f"image key {key_id(public)} created in {folder}")
    typer.echo(f"public key: {encode_public_key(public)}")


@app.command("key")
def key(
    keys_dir: KeysDirOpt = None,
    config: ConfigOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write it to this file.")] = None,
) -> None:
    """Print the public image key (base64 of the raw Ed25519 key; no passphrase needed)."""
    settings = _settings(config)
    with _clear_errors():
        public = image_public_key(keys_dir or settings.updates.keys_dir)
        if out is not None:
            out.write_text(encode_public_key(public) + "\n", encoding="ascii")
    typer.echo(encode_public_key(public))


def _trusted_key(
    image_key: Path | None, url: str | None, keys_dir: Path | None, config: Path | None
) -> bytes:
    if image_key is not None:
        return read_public_key_file(image_key)
    if url is not None:
        try:
            body = get_public_json(url, "/api/images/key")
            return decode_public_key(str(body["public_key"]))
        except (ApiError, TypeError, KeyError, AttestationError) as e:
            raise _fail(f"cannot get the image key from {url}: {e}") from e
    settings = _settings(config)
    return image_public_key(keys_dir or settings.updates.keys_dir)


@app.command("verify")
def verify(
    image: Annotated[Path, typer.Argument(help="The image file (.tar).")],
    image_key: Annotated[
        Path | None, typer.Option(help="File with the trusted public image key (base64).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Fetch the image key from this controller.")
    ] = None,
    keys_dir: KeysDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the signature, the image id and every file's hash; say exactly what is wrong."""
    with _clear_errors():
        public = _trusted_key(image_key, url, keys_dir, config)
        if not image.is_file():
            raise _fail(f"{image} is not a file", 2)
        try:
            manifest = verify_image(image, public)
        except ImageError as e:
            if as_json:
                typer.echo(json.dumps({"ok": False, "problems": e.problems}, indent=2))
                raise typer.Exit(1) from e
            raise _fail(f"image refused: {len(e.problems)} problem(s): {e}") from e
    if as_json:
        typer.echo(json.dumps({"ok": True, "image_id": manifest.image_id,
                               "agent_code": manifest.agent_code,
                               "device_class": manifest.device_class,
                               "files": len(manifest.files)}, indent=2))  # fmt: skip
        return
    typer.echo(
        f"{image}: OK, signed by image key {key_id(public)[:16]}…, {len(manifest.files)} files"
    )
    typer.echo(f"  image_id:   {manifest.image_id}")
    typer.echo(f"  agent_code: {manifest.agent_code}")


@app.command("list")
def list_(url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """The images registered on the controller, newest first."""
    try:
        rows = get_json(resolve_target(url, token), "/api/images")
    except ApiError as e:
        raise _fail(str(e)) from e
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"{len(rows)} firmware images")
    for column in ("image_id", "device class", "recipe", "agent", "size", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["image_id"][:16], row["device_class"], row["recipe"],
                      row["agent_version"], str(row["size"]),
                      str(row["created_at"])[:19].replace("T", " "))  # fmt: skip
    Console().print(table)


__all__ = ["app"]
