"""``/api/models``: the model registry, and uploads of new model versions.

An upload is the request body itself (``application/octet-stream``), streamed to a staging
file on the repository's disk with a size limit and hashed on the way, with the model's
metadata in query parameters; nothing holds the artifact in memory. Publishing (signing
new targets, snapshot and timestamp) happens once the last byte has arrived.
"""

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from sqlalchemy import Text, cast, func
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Field, SQLModel, col, select
from starlette.concurrency import run_in_threadpool

from controller.api.deps import CurrentUser, DbDep, Offset, ServicesDep
from controller.db import session_scope
from controller.devices.shadows import DeviceShadow
from controller.rollouts.cohort import compatible
from controller.updates.errors import (
    DuplicateError,
    KeyStoreError,
    RepositoryStateError,
    TooLargeError,
    UpdatesError,
)
from controller.updates.publish import (
    CHUNK,
    ModelSpec,
    Runtime,
    StagedFile,
    StagingWriter,
    check_new,
    publish_model,
)
from controller.updates.registry import ModelVersion, get_model_version, model_versions
from controller.updates.repository import TufRepository

router = APIRouter(prefix="/api/models", tags=["models"])


class ModelVersionPublic(SQLModel):
    """A published model version as the API shows it."""

    id: int
    name: str
    version: str
    target_path: str
    sha256: str
    length: int
    runtime: str
    quantization: str
    device_classes: list[str]
    min_agent_version: str
    expected_latency_ms: float | None
    created_at: datetime
    created_by: str


class ModelVersionList(SQLModel):
    """One page of model versions, newest first, and how many match in all."""

    data: list[ModelVersionPublic] = Field(default_factory=list)
    count: int


def _public(row: ModelVersion) -> ModelVersionPublic:
    return ModelVersionPublic.model_validate(row, from_attributes=True)


def _http_error(e: UpdatesError) -> HTTPException:
    if isinstance(e, DuplicateError):
        return HTTPException(409, str(e))
    if isinstance(e, TooLargeError):
        return HTTPException(413, str(e))
    if isinstance(e, KeyStoreError | RepositoryStateError):
        return HTTPException(503, f"the update repository cannot sign: {e}")
    return HTTPException(422, str(e))


def _fits(row: ModelVersion, device_class: str | None) -> bool:
    # No class asked for: no filter; otherwise the rule rollouts use to pick devices.
    return device_class is None or compatible(device_class, row.device_classes)


@router.get("")
def list_models(
    db: DbDep,
    _user: CurrentUser,
    name: str | None = None,
    runtime: Runtime | None = None,
    device_class: Annotated[
        str | None, Query(description="Only models that list this class, or list none.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> ModelVersionList:
    """Published model versions, newest first, filtered by name, runtime, device class."""
    # The registry holds hundreds of rows, not millions; JSON containment differs between
    # SQLite and PostgreSQL, so the class filter runs here.
    rows = [
        row for row in model_versions(db, name=name, runtime=runtime) if _fits(row, device_class)
    ]
    return ModelVersionList(
        data=[_public(row) for row in rows[offset : offset + limit]], count=len(rows)
    )


class Deployment(SQLModel):
    """How many devices report running (or failing) one target, and how many are asked to."""

    target_path: str
    active: int = 0  # reported model with status "active"
    other: int = 0  # reported with any other status (installing, failed, rolled back ...)
    desired: int = 0  # the controller's desired model for the device


class DeploymentList(SQLModel):
    """Device counts per model target, from the device shadows."""

    data: list[Deployment] = Field(default_factory=list)
    count: int


def _readable(doc: Any, dialect: str) -> ColumnElement[bool]:
    # As in controller.rollouts.observe: skip documents the database's JSON functions
    # would fail on (a NUL escape on PostgreSQL, invalid JSON to SQLite) instead of failing.
    if dialect == "postgresql":
        return func.strpos(cast(doc, Text), "\\u0000") == 0
    return func.json_valid(doc) == 1


@router.get("/deployments")
def deployments(db: DbDep, _user: CurrentUser) -> DeploymentList:
    """Where each model target runs: devices per target by reported status, and how many
    devices the controller wants on it (read-only; counted in the database)."""
    dialect = db.get_bind().dialect.name
    counts: dict[str, Deployment] = {}
    for column, kind in (
        (col(DeviceShadow.reported), "reported"),
        (col(DeviceShadow.desired), "desired"),
    ):
        target = column[("model", "target")].as_string()
        model_status = column[("model", "status")].as_string()
        rows = db.execute(
            select(target, model_status, func.count())
            .where(_readable(column, dialect), target.is_not(None))
            .group_by(target, model_status)
        ).all()
        for path, state, n in rows:
            row = counts.setdefault(path, Deployment(target_path=path))
            if kind == "desired":
                row.desired += n
            elif state == "active":
                row.active += n
            else:
                row.other += n
    # A device on its factory model reports no target, only the model's digest: count it
    # under the registered target with that digest (the demo's devices, for one).
    reported = col(DeviceShadow.reported)
    target = reported[("model", "target")].as_string()
    digest = reported[("model", "sha256")].as_string()
    model_status = reported[("model", "status")].as_string()
    factory = db.execute(
        select(digest, model_status, func.count())
        .where(_readable(reported, dialect), target.is_(None), digest.is_not(None))
        .group_by(digest, model_status)
    ).all()
    if factory:
        by_digest: dict[str, str] = {}
        for version in db.exec(
            select(ModelVersion).where(col(ModelVersion.sha256).in_([r[0] for r in factory]))
        ):
            by_digest.setdefault(version.sha256, version.target_path)
        for sha, state, n in factory:
            path = by_digest.get(sha)
            if path is None:
                continue
            row = counts.setdefault(path, Deployment(target_path=path))
            if state == "active":
                row.active += n
            else:
                row.other += n
    data = sorted(counts.values(), key=lambda d: d.target_path)
    return DeploymentList(data=data, count=len(data))


class SignedTarget(SQLModel):
    """A target as the published, verified TUF targets metadata signs it."""

    target_path: str
    length: int
    hashes: dict[str, str]


class SignedTargets(SQLModel):
    """The published targets role: its version, expiry, signatures and every target."""

    targets_version: int
    expires: datetime
    signatures: int
    threshold: int
    data: list[SignedTarget] = Field(default_factory=list)
    count: int


@router.get("/signatures")
def signatures(services: ServicesDep, _user: CurrentUser) -> SignedTargets:
    """The signed targets metadata (verified against root, as a device would) that vouches
    for each model artifact; 503 without an initialised repository."""
    repo = _ready_repository(services)
    try:
        state = repo.load(allow_stale=("targets", "snapshot", "timestamp"))
    except UpdatesError as e:
        raise _http_error(e) from e
    targets = state.targets
    role = state.root.signed.roles["targets"]
    data = [
        SignedTarget(target_path=path, length=info.length, hashes=dict(info.hashes))
        for path, info in sorted(targets.signed.targets.items())
    ]
    return SignedTargets(
        targets_version=targets.signed.version,
        expires=targets.signed.expires,
        signatures=len(targets.signatures),
        threshold=role.threshold,
        data=data,
        count=len(data),
    )


@router.get("/{name}/{version}")
def get_model(name: str, version: str, db: DbDep, _user: CurrentUser) -> ModelVersionPublic:
    row = get_model_version(db, name, version)
    if row is None:
        raise HTTPException(404, f"model {name!r} version {version!r} is not published")
    return _public(row)


def _ready_repository(services: ServicesDep) -> TufRepository:
    repo = services.tuf
    if repo is None or not repo.is_initialized():
        raise HTTPException(503, "no TUF repository: run 'edgefleet keys init' on the controller")
    return repo


@router.post("", status_code=201)
async def upload_model(
    request: Request,
    services: ServicesDep,
    db: DbDep,
    user: CurrentUser,
    name: str,
    version: str,
    runtime: Runtime,
    filename: Annotated[str, Query(description="The artifact's file name on devices.")],
    quantization: str = "",
    device_class: Annotated[list[str] | None, Query()] = None,
    min_agent_version: str = "0",
    # At most an hour: a number, not infinity or NaN, which no JSON answer could carry back.
    expected_latency_ms: Annotated[float | None, Query(gt=0, le=3_600_000)] = None,
) -> ModelVersionPublic:
    """Publish a new model version from the request body (operator role)."""
    actor = f"user:{user.username}"
    # Authentication wrote the token's last use: end that transaction now, or SQLite
    # would stay write-locked for the whole upload.
    await run_in_threadpool(db.commit)
    try:
        spec = ModelSpec(
            name=name,
            version=version,
            runtime=runtime,
            filename=filename,
            quantization=quantization,
            device_classes=tuple(device_class or ()),
            min_agent_version=min_agent_version,
            expected_latency_ms=expected_latency_ms,
        )
    except UpdatesError as e:
        raise _http_error(e) from e
    repo = _ready_repository(services)
    limit = services.settings.updates.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the artifact is larger than the limit of {limit} bytes")

    def precheck() -> None:
        with session_scope(services.engine) as session:
            check_new(session, repo, spec)

    try:
        await run_in_threadpool(precheck)
        staged = await _receive(request, repo, limit)
    except UpdatesError as e:
        raise _http_error(e) from e

    def publish() -> ModelVersionPublic:
        with session_scope(services.engine) as session:
            row = publish_model(session, repo, spec, staged, actor=actor)
            session.flush()
            return _public(row)

    try:
        return await run_in_threadpool(publish)
    except UpdatesError as e:
        raise _http_error(e) from e


async def _receive(request: Request, repo: TufRepository, limit: int) -> StagedFile:
    """Stream the body into a staging file, writing in 1 MiB batches off the event loop."""
    writer = await run_in_threadpool(StagingWriter, repo, limit)
    pending: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            pending.append(chunk)
            size += len(chunk)
            if size >= CHUNK:
                await run_in_threadpool(_write_all, writer, pending)
                pending, size = [], 0
        await run_in_threadpool(_write_all, writer, pending)
        return await run_in_threadpool(writer.finish)
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise


def _write_all(writer: StagingWriter, chunks: Sequence[bytes]) -> None:
    for chunk in chunks:
        writer.write(chunk)
