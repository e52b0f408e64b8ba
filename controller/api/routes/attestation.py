"""Attestation: a device's verdict history and identity, challenges on demand, golden values."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, Field
from sqlmodel import col, select

from controller.api.deps import CurrentUser, DbDep, RowId, ServicesDep
from controller.attestation.service import (
    DeviceIdentity,
    GoldenKind,
    GoldenMeasurement,
    add_golden,
    check_golden,
    history,
    register_identity,
    remove_golden,
)
from controller.audit import audit
from controller.devices.tables import Device
from shared.attestation import AttestationError

router = APIRouter(tags=["attestation"])


class IdentityPublic(BaseModel):
    """A device's enrolled identity key."""

    public_key: str
    key_id: str
    enrolled_at: datetime
    how: str


class IdentityUpdate(BaseModel):
    """Register (or replace) a device's identity key: the raw Ed25519 key in base64."""

    public_key: str = Field(min_length=1, max_length=128)


class ResultPublic(BaseModel):
    """One attestation verdict."""

    at: datetime
    ok: bool
    nonce: str | None
    reasons: list[dict[str, str]]
    measurements: dict[str, str]


class DeviceAttestation(BaseModel):
    """A device's attestation state and its newest verdicts, newest first."""

    device_id: str
    quarantined: bool
    quarantine_reason: str | None
    identity: IdentityPublic | None
    results: list[ResultPublic]


class ChallengeIssued(BaseModel):
    """A challenge sent to a device; its quote arrives over MQTT."""

    device_id: str
    nonce: str
    issued_at: datetime
    expires_at: datetime


class GoldenCreate(BaseModel):
    """A known-good measurement: an agent code tree hash, a model or config SHA-256, or an
    image id."""

    kind: GoldenKind
    value: str = Field(min_length=1, max_length=256)
    note: str = Field(default="", max_length=256)


class GoldenPublic(BaseModel):
    """A registered golden measurement."""

    id: int
    kind: str
    value: str
    source: str
    note: str
    created_at: datetime


def _device(db: DbDep, device_id: str) -> Device:
    device = db.get(Device, device_id)
    if device is None:
        raise HTTPException(404, f"device {device_id!r} is not registered")
    return device


def _identity(row: DeviceIdentity | None) -> IdentityPublic | None:
    return IdentityPublic.model_validate(row, from_attributes=True) if row else None


@router.get("/api/devices/{device_id}/attestation")
def device_attestation(
    device_id: str,
    db: DbDep,
    _user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> DeviceAttestation:
    """Quarantine state, enrolled key and the newest verdicts of one device."""
    device = _device(db, device_id)
    return DeviceAttestation(
        device_id=device.id,
        quarantined=device.quarantined,
        quarantine_reason=device.quarantine_reason,
        identity=_identity(db.get(DeviceIdentity, device_id)),
        results=[
            ResultPublic.model_validate(r, from_attributes=True)
            for r in history(db, device_id, limit)
        ],
    )


@router.post("/api/devices/{device_id}/attest", status_code=status.HTTP_202_ACCEPTED)
def attest_now(
    device_id: str, db: DbDep, services: ServicesDep, user: CurrentUser
) -> ChallengeIssued:
    """Challenge the device now; the verdict lands in its history when the quote arrives."""
    _device(db, device_id)
    if db.get(DeviceIdentity, device_id) is None:
        raise HTTPException(409, f"device {device_id!r} has no enrolled identity key")
    now = datetime.now(UTC)
    challenge = services.attestation.challenge(db, device_id, now, why="operator")
    audit(
        db,
        actor=f"user:{user.username}",
        action="attestation.challenge",
        target=f"device:{device_id}",
        detail={"nonce": challenge.nonce},
        at=now,
    )
    db.commit()
    services.publish_outbound([challenge])
    return ChallengeIssued(
        device_id=device_id,
        nonce=challenge.nonce,
        issued_at=challenge.issued_at,
        expires_at=challenge.expires_at,
    )


@router.put("/api/devices/{device_id}/identity")
def put_identity(
    device_id: str, body: IdentityUpdate, db: DbDep, services: ServicesDep, user: CurrentUser
) -> IdentityPublic:
    """Enroll (or replace) the device's identity key, then challenge it to re-attest."""
    _device(db, device_id)
    now = datetime.now(UTC)
    try:
        row = register_identity(
            db, device_id, body.public_key, how="api", actor=f"user:{user.username}", now=now
        )
    except AttestationError as e:
        raise HTTPException(422, str(e)) from e
    challenge = services.attestation.challenge(db, device_id, now, why="enrolled")
    db.commit()
    services.publish_outbound([challenge])
    identity = _identity(row)
    assert identity is not None
    return identity


@router.get("/api/attestation/golden")
def list_golden(
    db: DbDep, _user: CurrentUser, kind: GoldenKind | None = None
) -> list[GoldenPublic]:
    """Every golden measurement, optionally of one kind (published TUF model targets count
    as golden models too and are listed under /api/models)."""
    query = select(GoldenMeasurement).order_by(col(GoldenMeasurement.id))
    if kind is not None:
        query = query.where(col(GoldenMeasurement.kind) == kind)
    return [GoldenPublic.model_validate(r, from_attributes=True) for r in db.exec(query).all()]


@router.post("/api/attestation/golden", status_code=status.HTTP_201_CREATED)
def create_golden(body: GoldenCreate, db: DbDep, user: CurrentUser) -> GoldenPublic:
    """Register a golden value (audited); 409 if it is registered already."""
    try:
        check_golden(body.kind, body.value)
    except ValueError as e:
        raise HTTPException(422, str(e)) from e
    row = add_golden(
        db,
        kind=body.kind,
        value=body.value,
        source=f"user:{user.username}",
        note=body.note,
        actor=f"user:{user.username}",
    )
    if row is None:
        raise HTTPException(409, f"golden {body.kind} {body.value!r} is registered already")
    db.commit()
    db.refresh(row)
    return GoldenPublic.model_validate(row, from_attributes=True)


@router.delete("/api/attestation/golden/{golden_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_golden(golden_id: RowId, db: DbDep, user: CurrentUser) -> Response:
    """Withdraw a golden value (audited); devices measuring it fail their next quote."""
    row = db.get(GoldenMeasurement, golden_id)
    if row is None:
        raise HTTPException(404, f"no golden value {golden_id}")
    remove_golden(db, row, actor=f"user:{user.username}")
    db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
