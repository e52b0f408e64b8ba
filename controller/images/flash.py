"""Flashing: write a verified firmware image onto a device's root and give it an identity.

``flash`` runs on the operator's machine with the device's storage mounted (or writes a
``.tar`` of the device's root). In order, so that a refusal leaves nothing behind:

1. **Verify** the image before anything is written (``flashing.image``). The image is first
   copied, in one read, into a private 0600 file (in a 0700 temporary folder); that copy is
   what is verified and what is written, so the file given cannot change between the two.
   Checked: ``manifest.sig`` against the image key (given, or ``GET /api/images/key``), the
   manifest's own image id, and every tar member: a regular file under ``rootfs/`` with a
   safe name (no ``..``, no absolute path, no links or devices), listed in the manifest
   with that exact size and SHA-256; nothing listed may be missing. A tampered image is
   refused with the file it concerns.
2. **Check the target**: a folder that is missing or empty (``force`` writes over it), or a
   ``.tar`` file that does not exist yet (``force`` replaces it).
3. **Prepare the device's files in memory** (``flashing.device_files``): its Ed25519
   identity key (generated here, on the operator's side of the wire; the private half only
   ever goes to the target), a random broker password, the TUF trusted root (the
   controller's root chain from ``/tuf/metadata/``, each version checked against the one
   before), and ``agent.yaml`` (the image's template with the device id, broker URL and
   credentials, and the update mirror filled in; validated against the JSON Schema of the
   agent config that the image build exported from the agent in the image: the controller
   never imports the agent). For an ``mqtts://`` broker URL, ``agent.yaml`` also names the
   device's TLS files (``mqtt.ca_file``, ``cert_file``, ``key_file``) and the controller's
   device CA is fetched first (``GET /api/pki/ca``): without one, flashing stops here.
4. **Tell the controller** (``flashing.controller_api``): issue the broker credential
   (``POST /api/devices/{id}/broker-credential`` with only the password's ``$7$`` hash, so
   the password never crosses the network) and register the identity key as expected (``PUT
   /api/devices/{id}/identity``). For ``mqtts://``, a P-256 TLS key is generated like the
   identity key (its private half only goes to the target) and only its CSR is sent (``POST
   /api/devices/{id}/certificate``); the certificate that comes back must certify that key
   and device, and is written with the CA certificate. All need an admin token.
5. **Write** ``rootfs/`` and the device's files (``flashing.writing``). Into a folder:
   every file is first staged in a private folder inside the target and re-hashed there;
   only when all of them match the manifest, and the files staged are exactly the
   manifest's (less the device's own), are they moved into place (a mismatch removes the
   staging folder and nothing in the target is replaced). With ``force``, files of an
   earlier flash that this image does not have are removed from the trees the image owns
   (``IMAGE_TREES``; a leftover ``.py`` would change the device's ``agent_code``). A
   symlink already in the target is never followed. Into a ``.tar``: written to a temporary
   file, re-hashed as written, and renamed over the target only when complete and matching.
"""

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.broker.mosquitto_auth import generate_password, hash_password
from controller.images.flashing.controller_api import ControllerApi
from controller.images.flashing.device_files import (
    DeviceFile,
    controller_keys_file,
    identity_files,
    render_agent_config,
    state_dir_of,
    tls_files,
)
from controller.images.flashing.errors import ControllerError, FlashError, TargetError
from controller.images.flashing.image import (
    VerifiedImage,
    agent_config_schema,
    template_bytes,
    verified_image,
)
from controller.images.flashing.writing import (
    IMAGE_TREES,
    check_target,
    is_tar_target,
    write_folder,
    write_tar,
)
from controller.images.manifest import ImageError
from shared.attestation import key_id, public_key_of
from shared.broker_url import parse_broker_url
from shared.certificates import (
    CertificateError,
    certificate_info,
    csr_for,
    new_private_key,
    private_key_pem,
    read_certificate,
)
from shared.provisioning import (
    AGENT_CONFIG,
    CONTROLLER_CA_FILE,
    IDENTITY_KEY_FILE,
    MQTT_CA_FILE,
    PASSWORD_FILE,
    TRUSTED_ROOT,
)


@dataclass(frozen=True)
class FlashSummary:
    """What was written and registered (no secret in it)."""

    device_id: str
    target: str
    target_kind: str  # "folder" or "tar"
    image_id: str
    device_class: str
    agent_version: str
    agent_code: str
    files_written: int
    identity_key_id: str
    identity_public_key: str
    identity_key_file: str
    password_file: str
    agent_config: str
    broker_url: str
    controller_url: str
    trusted_root_version: int
    # mqtts:// only: the device's certificate (its key stays on the target) and its expiry.
    certificate_file: str | None = None
    certificate_not_after: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_broker_url(controller_url: str) -> str:
    """The broker on the controller's host at the standard port: devices usually reach both
    by the same name."""
    host = urlsplit(controller_url).hostname or "127.0.0.1"
    return f"mqtt://{host}:1883"


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except ImageError as e:
        raise FlashError(f"image refused: {e}") from e


def check_controller_ca(pem: bytes, controller_url: str) -> None:
    """A controller CA is a PEM certificate, and only for an https:// controller URL (the
    agent refuses ``updates.ca_file`` for plain http)."""
    if urlsplit(controller_url).scheme != "https":
        raise FlashError(f"--controller-ca is for an https:// controller URL, not {controller_url}")
    try:
        read_certificate(pem)
    except CertificateError as e:
        raise FlashError(f"controller CA: {e}") from e


def flash(
    image_path: Path,
    *,
    target: Path,
    device_id: str,
    controller: ControllerApi,
    broker_url: str | None = None,
    image_key: bytes | None = None,
    force: bool = False,
    rotate: bool = False,
    controller_ca: bytes | None = None,
) -> FlashSummary:
    """Verify, prepare, register and write (see the module docstring for the order).
    ``controller_ca`` (PEM) is the CA of the controller's HTTPS certificate, for an https
    controller URL: written to the device as its ``updates.ca_file``."""
    from shared.topics import is_valid_device_id

    if not is_valid_device_id(device_id):
        raise FlashError(
            f"invalid device id {device_id!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    if not image_path.is_file():
        raise FlashError(f"image {image_path} is not a file")
    public = image_key if image_key is not None else controller.image_key()
    with _translated(), verified_image(image_path, public) as image:
        return _flash_verified(
            image,
            target=target,
            device_id=device_id,
            controller=controller,
            broker_url=broker_url,
            force=force,
            rotate=rotate,
            controller_ca=controller_ca,
        )


def _flash_verified(
    image: VerifiedImage,
    *,
    target: Path,
    device_id: str,
    controller: ControllerApi,
    broker_url: str | None,
    force: bool,
    rotate: bool,
    controller_ca: bytes | None = None,
) -> FlashSummary:
    check_target(target, force=force)
    if controller_ca is not None:
        check_controller_ca(controller_ca, controller.url)
    broker = broker_url or default_broker_url(controller.url)
    with _translated():
        template = template_bytes(image)
        schema = agent_config_schema(image)
    root_bytes, root_version = controller.trusted_root()
    try:
        config_bytes, config = render_agent_config(
            template,
            schema=schema,
            device_id=device_id,
            broker_url=broker,
            controller_url=controller.url,
            controller_ca=controller_ca is not None,
        )
        state_dir = state_dir_of(config, schema)
    except ValueError as e:
        raise FlashError(str(e)) from e
    # mqtts://: the CA first, so a controller without one refuses before anything is issued.
    ca_pem = controller.ca_certificate() if parse_broker_url(broker).tls else None
    key = Ed25519PrivateKey.generate()
    public_key = public_key_of(key)
    password = generate_password()
    device: dict[str, DeviceFile] = {
        AGENT_CONFIG: DeviceFile(config_bytes, 0o644),
        TRUSTED_ROOT: DeviceFile(root_bytes, 0o644),
        PASSWORD_FILE: DeviceFile((password + "\n").encode(), 0o600),
        **identity_files(state_dir, key),
        **controller_keys_file(state_dir, controller.message_keys()),
    }
    if controller_ca is not None:
        device[CONTROLLER_CA_FILE] = DeviceFile(controller_ca, 0o644)
    controller.issue_credential(device_id, hash_password(password), rotate=rotate)
    controller.register_identity(device_id, public_key)
    certificate: tuple[str, str] | None = None
    if ca_pem is not None:
        tls = _device_tls(controller, device_id, state_dir)
        device.update(tls)
        cert_path = next(p for p in tls if p.endswith(".crt") and p != MQTT_CA_FILE)
        expiry = certificate_info(tls[cert_path].content).not_after.isoformat()
        certificate = ("/" + cert_path, expiry)
    try:
        with _translated():
            if is_tar_target(target):
                count = write_tar(image, target, device)
            else:
                count = write_folder(image, target, device, force=force)
    except OSError as e:
        raise TargetError(
            f"cannot write {target}: {e} (the controller already expects this device's new key"
            " and password: flash again with --force --rotate)"
        ) from e
    manifest = image.manifest
    return FlashSummary(
        device_id=device_id,
        target=str(target),
        target_kind="tar" if is_tar_target(target) else "folder",
        image_id=manifest.image_id,
        device_class=manifest.device_class,
        agent_version=manifest.agent_version,
        agent_code=manifest.agent_code,
        files_written=count,
        identity_key_id=key_id(public_key),
        identity_public_key=base64.b64encode(public_key).decode("ascii"),
        identity_key_file="/" + next(p for p in device if p.endswith(IDENTITY_KEY_FILE)),
        password_file="/" + PASSWORD_FILE,
        agent_config="/" + AGENT_CONFIG,
        broker_url=broker,
        controller_url=controller.url,
        trusted_root_version=root_version,
        certificate_file=certificate[0] if certificate else None,
        certificate_not_after=certificate[1] if certificate else None,
    )


def _device_tls(controller: ControllerApi, device_id: str, state_dir: str) -> dict[str, DeviceFile]:
    """The device's TLS key (made here, written only to the target), the certificate the
    controller signs for its CSR (checked: it certifies this key and this device) and the
    CA certificate."""
    key = new_private_key()
    cert_pem, ca_pem = controller.issue_certificate(device_id, csr_for(device_id, key))
    try:
        cert = read_certificate(cert_pem)
        info = certificate_info(cert_pem)
    except CertificateError as e:
        raise ControllerError(f"the controller returned an unusable certificate: {e}") from e
    if info.subject_cn != device_id or cert.public_key() != key.public_key():
        raise ControllerError(
            f"the controller returned a certificate for {info.subject_cn!r} or another key,"
            f" not for {device_id!r}'s CSR"
        )
    return tls_files(state_dir, private_key_pem(key), cert_pem, ca_pem)


__all__ = [
    "AGENT_CONFIG",
    "IDENTITY_KEY_FILE",
    "IMAGE_TREES",
    "PASSWORD_FILE",
    "TRUSTED_ROOT",
    "ControllerApi",
    "ControllerError",
    "DeviceFile",
    "FlashError",
    "FlashSummary",
    "TargetError",
    "VerifiedImage",
    "check_target",
    "default_broker_url",
    "flash",
    "render_agent_config",
    "verified_image",
    "write_folder",
    "write_tar",
]
