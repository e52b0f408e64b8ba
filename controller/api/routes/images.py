"""Firmware images: the image public key (public: flashers and devices verify images with
it) and the images built and registered on this controller."""

from datetime import datetime

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel

from controller.api.deps import DbDep, ServicesDep
from controller.images.keys import ImageKeyError, image_public_key
from controller.images.registry import list_images
from shared.attestation import encode_public_key, key_id

router = APIRouter(tags=["images"])


class ImageKeyPublic(BaseModel):
    """The controller's image signing key: the raw Ed25519 public key in base64."""

    public_key: str
    keyid: str


class ImagePublic(BaseModel):
    """A registered firmware image."""

    image_id: str
    device_class: str
    recipe: str
    agent_version: str
    agent_code: str
    size: int
    created_at: datetime


@router.get("/api/images/key")
def image_key(services: ServicesDep) -> ImageKeyPublic:
    """The public image key (404 until ``edgefleet image keygen`` has made one)."""
    try:
        public = image_public_key(services.settings.updates.keys_dir)
    except ImageKeyError as e:
        raise HTTPException(404, str(e)) from e
    return ImageKeyPublic(public_key=encode_public_key(public), keyid=key_id(public))


@router.get("/api/images")
def images(db: DbDep) -> list[ImagePublic]:
    """Every registered image, newest first."""
    return [ImagePublic.model_validate(r, from_attributes=True) for r in list_images(db)]
