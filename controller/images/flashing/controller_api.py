"""Step 4 of flashing and its inputs: the few controller calls ``edgefleet flash`` makes.

API calls go through ``controller.api_client`` (the one client for the controller's API);
the TUF trusted root comes from the controller's TUF mirror (``/tuf/metadata/``, not the
API) through the same connection.
"""

from typing import Any

import httpx

from controller.api_client import ApiError, Target, request_json
from controller.images.flashing.errors import ControllerError
from shared.attestation import AttestationError, decode_public_key, encode_public_key

MAX_ROOT_BYTES = 1024 * 1024
MAX_ROOT_VERSIONS = 1000


class ControllerApi:
    """The controller calls flashing makes, over ``client``: an ``httpx.Client`` with the
    controller as base URL and the admin token in its headers (``api_client.open_client``,
    or Starlette's TestClient)."""

    def __init__(self, client: httpx.Client, url: str) -> None:
        self._client = client
        self.url = url.rstrip("/")
        # The client carries the token: request_json sends it, not the target's.
        self._target = Target(self.url, token="")

    def _json(self, method: str, path: str, what: str, json: Any = None) -> Any:
        try:
            return request_json(
                self._target,
                method,
                path,
                body=json,
                client=self._client,
            )
        except ApiError as e:
            if e.status is None:  # no answer: "cannot reach the controller at ..."
                raise ControllerError(str(e)) from e
            raise ControllerError(f"{what}: {e}") from e

    def image_key(self) -> bytes:
        """The controller's image public key (``GET /api/images/key``)."""
        body = self._json("GET", "/api/images/key", "fetching the image key")
        text = body.get("public_key") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ControllerError("/api/images/key did not return a public_key")
        try:
            return decode_public_key(text)
        except AttestationError as e:
            raise ControllerError(f"/api/images/key: {e}") from e

    def _metadata(self, path: str) -> httpx.Response:
        try:
            return self._client.request("GET", path)
        except httpx.HTTPError as e:
            raise ControllerError(f"cannot reach the controller at {self.url}: {e}") from e

    def trusted_root(self) -> tuple[bytes, int]:
        """The newest TUF root and its version, each version from ``1.root.json`` on checked
        against the one before (the chain a device would walk itself)."""
        from tuf.api.exceptions import RepositoryError
        from tuf.api.metadata import Metadata, Root
        from tuf.api.serialization import DeserializationError

        trusted: Metadata[Root] | None = None
        data = b""
        for version in range(1, MAX_ROOT_VERSIONS + 1):
            path = f"/tuf/metadata/{version}.root.json"
            response = self._metadata(path)
            if response.status_code == 404 and trusted is not None:
                break
            if response.status_code != 200:
                raise ControllerError(
                    f"fetching the TUF trusted root: {response.status_code} from {path}"
                    " (has the controller run 'edgefleet keys init'?)"
                )
            if len(response.content) > MAX_ROOT_BYTES:
                raise ControllerError(f"{path} is larger than {MAX_ROOT_BYTES} bytes")
            try:
                new = Metadata[Root].from_bytes(response.content)
                if new.signed.version != version:
                    raise ControllerError(f"{path} holds root version {new.signed.version}")
                if trusted is not None:  # signed by the previous root's keys...
                    trusted.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
                # ...and by its own
                new.signed.verify_delegate(Root.type, new.signed_bytes, new.signatures)
            except (DeserializationError, RepositoryError, ValueError) as e:
                raise ControllerError(f"{path} is not a valid, signed TUF root: {e}") from e
            trusted, data = new, response.content
        assert trusted is not None
        return data, trusted.signed.version

    def issue_credential(self, device_id: str, password_hash: str, *, rotate: bool) -> None:
        self._json(
            "POST",
            f"/api/devices/{device_id}/broker-credential",
            "issuing the broker credential",
            json={"password_hash": password_hash, "rotate": rotate},
        )

    def ca_certificate(self) -> bytes:
        """The device CA's certificate (``GET /api/pki/ca``); ControllerError saying to run
        ``edgefleet pki init`` when the controller has none."""
        body = self._json("GET", "/api/pki/ca", "the controller's device CA")
        text = body.get("ca") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ControllerError("/api/pki/ca did not return a CA certificate")
        return text.encode("ascii")

    def message_keys(self) -> tuple[list[bytes], bytes | None]:
        """The controller message keys a device is to trust and the exchange key paired with
        the first (``GET /api/pki/message-keys``)."""
        body = self._json("GET", "/api/pki/message-keys", "the controller's message keys")
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not keys:
            raise ControllerError("/api/pki/message-keys did not return any key")
        exchange = body.get("exchange_key") if isinstance(body, dict) else None
        try:
            return (
                [decode_public_key(k) for k in keys if isinstance(k, str)],
                decode_public_key(exchange) if isinstance(exchange, str) else None,
            )
        except AttestationError as e:
            raise ControllerError(f"/api/pki/message-keys returned a bad key: {e}") from e

    def issue_certificate(self, device_id: str, csr_pem: bytes) -> tuple[bytes, bytes]:
        """Send the device's CSR (never its key); the signed certificate and the CA's."""
        body = self._json(
            "POST",
            f"/api/devices/{device_id}/certificate",
            "issuing the device certificate",
            json={"csr": csr_pem.decode("ascii")},
        )
        cert = body.get("certificate") if isinstance(body, dict) else None
        ca = body.get("ca") if isinstance(body, dict) else None
        if not isinstance(cert, str) or not isinstance(ca, str):
            raise ControllerError(f"/api/devices/{device_id}/certificate returned no certificate")
        return cert.encode("ascii"), ca.encode("ascii")

    def register_identity(self, device_id: str, public_key: bytes) -> dict[str, Any]:
        body = self._json(
            "PUT",
            f"/api/devices/{device_id}/identity",
            "registering the identity key",
            json={"public_key": encode_public_key(public_key)},
        )
        return dict(body)


__all__ = ["ControllerApi"]
