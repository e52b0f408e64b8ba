"""The model registry: every model version published as a TUF target, with what the
rollout engine and attestation need to know about it (its hash, runtime, compatibility).

The TUF targets metadata is the signed source of truth; this table mirrors it for queries.
"""

from datetime import datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, Session, SQLModel, col, select

from controller.db import utcnow


class ModelVersion(SQLModel, table=True):
    """One published model artifact (a TUF target)."""

    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_name_version"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, index=True)
    version: str = Field(max_length=64)
    target_path: str = Field(max_length=255, unique=True)  # "<name>/<version>/<filename>"
    sha256: str = Field(max_length=64, index=True)
    # ort-genai: the digest of the folder the archive unpacks to (shared.digests), which is
    # what a device measures for attestation; None for single-file models.
    content_sha256: str | None = Field(default=None, max_length=64)
    length: int
    runtime: str = Field(max_length=16)  # llama.cpp | ort-genai | onnx
    quantization: str = Field(default="", max_length=32)
    device_classes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    min_agent_version: str = Field(default="0", max_length=32)
    expected_latency_ms: float | None = None
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str = Field(default="", max_length=64)


def get_model_version(session: Session, name: str, version: str) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(
            col(ModelVersion.name) == name, col(ModelVersion.version) == version
        )
    ).first()


def model_versions(
    session: Session, *, name: str | None = None, runtime: str | None = None
) -> list[ModelVersion]:
    """Published model versions, newest first, of one name and runtime when given (the
    API and ``edgefleet models list -c`` filter by device class on top)."""
    query = select(ModelVersion).order_by(col(ModelVersion.id).desc())
    if name is not None:
        query = query.where(col(ModelVersion.name) == name)
    if runtime is not None:
        query = query.where(col(ModelVersion.runtime) == runtime)
    return list(session.exec(query).all())


def known_target_hashes(session: Session) -> set[str]:
    """SHA-256 of every published model (and of the folder each archive unpacks to): the
    golden values for a device's active model."""
    rows = session.exec(select(ModelVersion.sha256, ModelVersion.content_sha256)).all()
    return {digest for row in rows for digest in row if digest}


__all__ = ["ModelVersion", "get_model_version", "known_target_hashes", "model_versions"]
