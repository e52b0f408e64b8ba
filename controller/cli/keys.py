"""``edgefleet keys``: the signed-update repository's keys and metadata from the shell.

These commands run on the controller host (or, for ``sign-root``, on the offline machine
that holds a root key) and work without a running controller. ``edgefleet models``
(``controller/cli/models.py``) shares the repository options and helpers defined here.
Every failure is one line on stderr and a non-zero exit, never a traceback.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from controller.cli.common import ConfigOpt, DatabaseUse, audit_locally, settings_or_exit
from controller.cli.common import fail as _fail
from controller.settings import Settings
from controller.updates.errors import UpdatesError
from controller.updates.keys import ROLES, KeyStore, load_key_file, read_passphrase
from controller.updates.repository import (
    ONLINE_ROLES,
    RepoPolicy,
    TufRepository,
    describe_root_result,
    read_root_draft,
    sign_root_draft,
    write_root_draft,
)

keys_app = typer.Typer(no_args_is_help=True, help="Manage the update repository's signing keys.")

KeysDirOpt = Annotated[
    Path | None, typer.Option(help="Online keys folder (default: updates.keys_dir).")
]
RepoDirOpt = Annotated[
    Path | None, typer.Option(help="TUF repository folder (default: updates.repo_dir).")
]
PassphraseOpt = Annotated[
    Path | None,
    typer.Option(help="File holding the key passphrase (default: EDGEFLEET_KEY_PASSPHRASE)."),
]


@contextmanager
def updates_errors() -> Iterator[None]:
    """Turn the update repository's errors (and file errors) into one line and exit 1."""
    try:
        yield
    except UpdatesError as e:
        raise _fail(str(e)) from e
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise _fail(f"{where}{e.strerror or e}") from e


def open_repository(
    config: Path | None,
    repo_dir: Path | None,
    keys_dir: Path | None,
    passphrase_file: Path | None,
    *,
    database: DatabaseUse = "existing",
) -> tuple[Settings, TufRepository]:
    """The settings and the TUF repository; ``database`` as in ``settings_or_exit`` (the
    commands that record an audit entry or a model open the database)."""
    settings = settings_or_exit(config, database=database)
    updates = settings.updates
    with updates_errors():
        passphrase = read_passphrase(passphrase_file or updates.passphrase_file)
    keys = KeyStore(keys_dir or updates.keys_dir, passphrase)
    repo = TufRepository(repo_dir or updates.repo_dir, keys, RepoPolicy.from_settings(updates))
    return settings, repo


def _now() -> datetime:
    return datetime.now(UTC)


# --- keys ----------------------------------------------------------------------------------
@keys_app.command("init")
def keys_init(
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    root_keys: Annotated[int, typer.Option(min=1, max=16, help="Number of root keys.")] = 1,
    root_threshold: Annotated[
        int | None,
        typer.Option(min=1, help="Root signatures needed (default: updates.thresholds.root)."),
    ] = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Generate encrypted keys for every role and publish version 1 of the metadata."""
    settings, repo = open_repository(config, repo_dir, keys_dir, passphrase_file)
    with updates_errors():
        state = repo.initialize(now=_now(), root_keys=root_keys, root_threshold=root_threshold)
        audit_locally(settings, "tuf.init", f"tuf:{repo.dir}", "repository created",
               root_keys=root_keys, versions=state.versions())  # fmt: skip
    root = state.root.signed
    typer.echo(f"TUF repository created in {repo.dir}, keys in {repo.keys.dir}")
    for role in ROLES:
        spec = root.roles[role]
        typer.echo(f"  {role}: {spec.threshold} of {len(spec.keyids)} key(s)")
    typer.echo(
        f"Provision devices with {repo.metadata_dir / '1.root.json'}; move the root key(s)"
        " offline with 'edgefleet keys export-root --out FILE'."
    )


@keys_app.command("status")
def keys_status(
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each role's version, expiry, threshold and which keys are online."""
    _, repo = open_repository(config, repo_dir, keys_dir, None, database="unused")
    with updates_errors():
        state = repo.load()
    online = repo.keys.files()
    root = state.root.signed
    versions, expires = state.versions(), state.expires()
    report: dict[str, dict[str, Any]] = {
        role: {
            "version": versions[role],
            "expires": expires[role].isoformat(),
            "threshold": root.roles[role].threshold,
            "keys": {k: ("online" if k in online else "offline") for k in root.roles[role].keyids},
        }
        for role in ROLES
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"TUF repository {repo.dir}")
    for column in ("role", "version", "expires", "threshold", "keys (online/total)"):
        table.add_column(column)
    for role, row in report.items():
        keys = row["keys"]
        table.add_row(
            role,
            str(row["version"]),
            str(row["expires"])[:19].replace("T", " "),
            str(row["threshold"]),
            f"{sum(v == 'online' for v in keys.values())}/{len(keys)}",
        )
    Console().print(table)


@keys_app.command("export-root")
def keys_export_root(
    out: Annotated[Path, typer.Option(help="File to write the encrypted root key(s) to.")],
    keyid: Annotated[
        list[str] | None, typer.Option(help="Only this root key; repeatable (default: all).")
    ] = None,
    keep: Annotated[bool, typer.Option(help="Keep the online copies too.")] = False,
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Move root private keys out of the online folder for offline keeping."""
    settings, repo = open_repository(config, repo_dir, keys_dir, passphrase_file)
    with updates_errors():
        root = repo.load_root_chain()[-1].signed
        root_ids = root.roles["root"].keyids
        online = repo.keys.files()
        wanted = list(keyid) if keyid else [k for k in root_ids if k in online]
        stray = [k for k in wanted if k not in root_ids]
        if stray:
            raise _fail(f"not a root key of root v{root.version}: {', '.join(stray)}", 2)
        if not wanted:
            raise _fail(f"no root private key is in {repo.keys.dir}; nothing to export", 2)
        exported = repo.keys.export(wanted, out, keep=keep)
        audit_locally(settings, "tuf.export_root", f"tuf:{repo.dir}", "root keys exported",
               keyids=exported, kept_online=keep)  # fmt: skip
    typer.echo(f"wrote {len(exported)} encrypted root key(s) to {out}")
    if not keep:
        typer.echo(
            f"removed them from {repo.keys.dir}: root changes now need 'edgefleet keys"
            " sign-root DRAFT --key FILE' with this file"
        )


@keys_app.command("root-draft")
def keys_root_draft(
    out: Annotated[
        Path | None, typer.Option(help="Draft file (default: <repo>/drafts/N.root.json).")
    ] = None,
    root_threshold: Annotated[
        int | None, typer.Option(min=1, help="A new threshold for root.")
    ] = None,
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write the next root version (renewed expiry), signed by any online root keys."""
    _s, repo = open_repository(config, repo_dir, keys_dir, passphrase_file, database="unused")
    with updates_errors():
        thresholds = {"root": root_threshold} if root_threshold is not None else None
        draft = repo.draft_root(now=_now(), thresholds=thresholds)
        path = out or repo.drafts_dir / f"{draft.signed.version}.root.json"
        write_root_draft(draft, path)
        result = repo.check_root_draft(draft)
    typer.echo(f"wrote root v{draft.signed.version} draft to {path}")
    typer.echo(describe_root_result(result, draft.signed.version))
    if not result.verified:
        typer.echo("sign it with 'edgefleet keys sign-root DRAFT --key FILE', then publish-root")


@keys_app.command("sign-root")
def keys_sign_root(
    draft_file: Annotated[Path, typer.Argument(help="The root draft to sign (updated).")],
    key: Annotated[Path, typer.Option(help="Encrypted key file (from export-root).")],
    out: Annotated[Path | None, typer.Option(help="Write the signed draft here instead.")] = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Add signatures to a root draft with offline root key(s); works without a repository
    (then only keys of the draft's own root role are accepted)."""
    _s, repo = open_repository(config, repo_dir, None, passphrase_file, database="unused")
    with updates_errors():
        draft = read_root_draft(draft_file)
        previous = None
        if repo.is_initialized():
            chain = repo.load_root_chain()
            wanted = draft.signed.version - 1
            if 1 <= wanted <= len(chain):
                previous = chain[wanted - 1].signed
        passphrase = read_passphrase(passphrase_file)
        signers = load_key_file(key, passphrase)
        added = sign_root_draft(draft, signers, previous)
        target = out or draft_file
        write_root_draft(draft, target)
    typer.echo(f"signed root v{draft.signed.version} with {', '.join(added)}; wrote {target}")
    if previous is not None:
        result = draft.signed.get_root_verification_result(
            previous, draft.signed_bytes, draft.signatures
        )
        typer.echo(describe_root_result(result, draft.signed.version))


@keys_app.command("publish-root")
def keys_publish_root(
    draft_file: Annotated[Path, typer.Argument(help="A fully signed root draft.")],
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Publish a root draft signed by a threshold of the previous and of its own root keys."""
    settings, repo = open_repository(config, repo_dir, keys_dir, passphrase_file)
    with updates_errors():
        draft = read_root_draft(draft_file)
        resigned = repo.publish_root(draft, now=_now())
        audit_locally(settings, "tuf.publish_root", f"tuf:root:{draft.signed.version}",
               "new root version", resigned=resigned)  # fmt: skip
    typer.echo(f"published root v{draft.signed.version}")
    if resigned:
        typer.echo(f"re-signed with the new keys: {', '.join(resigned)}")


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Argument(help="root, targets, snapshot or timestamp.")],
    revoke: Annotated[
        list[str] | None, typer.Option(help="Key id to revoke; repeatable (default: all).")
    ] = None,
    new_keys: Annotated[
        int | None, typer.Option(min=0, help="New keys to add (default: one per revoked).")
    ] = None,
    threshold: Annotated[int | None, typer.Option(min=1, help="A new threshold.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Draft file when offline signatures are needed.")
    ] = None,
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Replace a role's keys through a new root version (published at once when the
    online root keys suffice, else left as a draft for sign-root and publish-root)."""
    if role not in ROLES:
        raise _fail(f"unknown role {role!r}; choose one of {', '.join(ROLES)}", 2)
    settings, repo = open_repository(config, repo_dir, keys_dir, passphrase_file)
    with updates_errors():
        rotation = repo.rotate(
            role, now=_now(), revoke=revoke, new_keys=new_keys, threshold=threshold,
            draft_path=out,
        )  # fmt: skip
        audit_locally(settings, "tuf.rotate", f"tuf:{role}", rotation.status,
               new=rotation.new_keyids, revoked=rotation.revoked_keyids,
               published=rotation.published, root_version=rotation.version)  # fmt: skip
    typer.echo(f"{role}: new key(s) {', '.join(rotation.new_keyids) or '-'}")
    if rotation.published:
        typer.echo(f"root v{rotation.version} published")
        if rotation.resigned:
            typer.echo(f"re-signed with the new keys: {', '.join(rotation.resigned)}")
    else:
        typer.echo(f"root v{rotation.version} draft written to {rotation.draft_path}")
        typer.echo(rotation.status)
        typer.echo(
            "sign it with the offline root key(s): 'edgefleet keys sign-root DRAFT --key"
            " FILE', then 'edgefleet keys publish-root DRAFT'"
        )


@keys_app.command("refresh")
def keys_refresh(
    force: Annotated[
        list[str] | None, typer.Option(help="Re-sign this role even if not due; repeatable.")
    ] = None,
    keys_dir: KeysDirOpt = None,
    repo_dir: RepoDirOpt = None,
    passphrase_file: PassphraseOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Re-sign targets/snapshot/timestamp that are close to expiry (what the controller's
    scheduler does); nothing due means nothing written."""
    bad = [r for r in force or [] if r not in ONLINE_ROLES]
    if bad:
        raise _fail(f"can only force {', '.join(ONLINE_ROLES)}, not {', '.join(bad)}", 2)
    settings, repo = open_repository(config, repo_dir, keys_dir, passphrase_file)
    with updates_errors():
        resigned = repo.refresh(now=_now(), force=force or ())
        if resigned:
            audit_locally(
                settings, "tuf.resign", "tuf:metadata", "operator refresh", roles=resigned
            )
    typer.echo(f"re-signed: {', '.join(resigned)}" if resigned else "nothing was due")
