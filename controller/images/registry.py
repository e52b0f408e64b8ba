"""Built images on the controller: one ``firmware_image`` row per image, and its
measurements registered as golden attestation values (audited), so a device flashed from
it attests trusted (``image_id`` and ``agent_code``)."""

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Field, Session, SQLModel, col, select

from controller.attestation.service import add_golden
from controller.audit import audit
from controller.db import utcnow
from controller.images.manifest import Manifest

SOURCE = "image-build"


class FirmwareImage(SQLModel, table=True):
    """A firmware image built from a recipe (``edgefleet image build``)."""

    __tablename__ = "firmware_image"
    image_id: str = Field(primary_key=True, max_length=64)
    device_class: str = Field(max_length=63, index=True)
    recipe: str = Field(max_length=63)
    agent_version: str = Field(max_length=32)
    agent_code: str = Field(max_length=64)
    size: int
    created_at: datetime = Field(default_factory=utcnow, index=True)


@dataclass(frozen=True, slots=True)
class Registration:
    """What registering an image added (False: it was known already)."""

    image_added: bool
    golden_added: dict[str, bool]


def register_image(
    session: Session, manifest: Manifest, *, size: int, actor: str, now: datetime | None = None
) -> Registration:
    """Record the image and register its ``image_id`` and ``agent_code`` as golden values
    (each audited; already registered ones are left as they are)."""
    now = now or utcnow()
    recipe = str(manifest.recipe.get("name", manifest.device_class))
    note = f"image {recipe} {manifest.image_id[:12]}"
    golden = {
        kind: add_golden(
            session, kind=kind, value=value, source=SOURCE, note=note, actor=actor, now=now
        )
        is not None
        for kind, value in (("image_id", manifest.image_id), ("agent_code", manifest.agent_code))
    }
    added = session.get(FirmwareImage, manifest.image_id) is None
    if added:
        session.add(
            FirmwareImage(
                image_id=manifest.image_id,
                device_class=manifest.device_class,
                recipe=recipe,
                agent_version=manifest.agent_version,
                agent_code=manifest.agent_code,
                size=size,
                created_at=now,
            )
        )
        audit(
            session,
            actor=actor,
            action="image.register",
            target=f"image:{manifest.image_id}",
            reason=f"built from recipe {recipe}",
            detail={"device_class": manifest.device_class, "agent_version": manifest.agent_version,
                    "agent_code": manifest.agent_code, "size": size},
            at=now,
        )  # fmt: skip
    return Registration(image_added=added, golden_added=golden)


def list_images(session: Session) -> list[FirmwareImage]:
    """Every registered image, newest first."""
    return list(
        session.exec(
            select(FirmwareImage).order_by(
                col(FirmwareImage.created_at).desc(), col(FirmwareImage.image_id)
            )
        ).all()
    )


__all__ = ["SOURCE", "FirmwareImage", "Registration", "list_images", "register_image"]
