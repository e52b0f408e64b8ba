"""``POST /api/devices/{id}/certificate`` and ``GET /api/pki/ca`` on a real controller app
(SQLite, the device CA made by the store): who may call them, and every refusal."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlmodel import Session, select

from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.broker.tables import BrokerCredential
from controller.db import session_scope
from controller.pki.store import PkiStore
from controller.pki.tables import IssuedCertificate
from shared.certificates import certificate_info, csr_for, new_private_key, read_certificate
from tests.controller_harness import LiveController, live_controller

PASSPHRASE = "a long enough CA passphrase for the API"


@dataclass
class World:
    live: LiveController
    store: PkiStore
    tokens: dict[str, str]

    def post(
        self, device_id: str, csr: bytes | str, role: str = "admin"
    ) -> tuple[int, dict[str, Any]]:
        body = {"csr": csr.decode() if isinstance(csr, bytes) else csr}
        response = self.live.client.post(
            f"/api/devices/{device_id}/certificate",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
        )
        return response.status_code, response.json()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("pki-api")
    (folder / "passphrase").write_text(PASSPHRASE)
    updates = {"passphrase_file": str(folder / "passphrase"), "repo_dir": str(folder / "tuf"),
               "keys_dir": str(folder / "keys")}  # fmt: skip
    broker: dict[str, object] = {"mode": "embedded", "url": "mqtt://127.0.0.1:0"}
    with live_controller(folder, broker, updates=updates, pki={"dir": str(folder / "pki")}) as live:
        store = PkiStore(folder / "pki", SecretStr(PASSPHRASE), live.services.settings.pki)
        tokens = {"admin": live.token}
        with session_scope(live.services.engine) as session:
            for role in ("viewer", "operator"):
                user = create_user(session, username=role, password=f"{role}-password", role=role)
                tokens[role] = create_api_token(session, user, name="tests")
        yield World(live, store, tokens)


def test_no_ca_answers_503_saying_to_run_pki_init(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before ``pki init`` both routes answer 503 naming the command."""
    monkeypatch.setattr(world.live.services.settings.pki, "dir", tmp_path / "no-ca")
    code, body = world.post("dev-a", csr_for("dev-a", new_private_key()))
    assert code == 503 and "edgefleet pki init" in body["detail"]
    response = world.live.client.get("/api/pki/ca", headers=world.live.auth)
    assert response.status_code == 503


@pytest.fixture
def ca(world: World) -> PkiStore:
    if not world.store.exists():
        world.store.initialize(now=datetime.now(UTC))
    return world.store


def test_admin_gets_a_certificate_for_the_devices_csr(world: World, ca: PkiStore) -> None:
    """An admin's CSR for the device comes back signed for that key, with the CA, and is
    recorded; the answer is not cached."""
    key = new_private_key()
    response = world.live.client.post(
        "/api/devices/dev-b/certificate",
        json={"csr": csr_for("dev-b", key).decode()},
        headers=world.live.auth,
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    cert = read_certificate(body["certificate"].encode())
    assert cert.public_key() == key.public_key()
    assert certificate_info(body["certificate"].encode()).subject_cn == "dev-b"
    assert body["ca"].encode() == ca.ca_file.read_bytes()
    with Session(world.live.services.engine) as session:
        row = session.get(IssuedCertificate, body["serial"])
        assert row is not None and row.device_id == "dev-b"
    response = world.live.client.get("/api/pki/ca", headers={
        "Authorization": f"Bearer {world.tokens['viewer']}"})  # fmt: skip
    assert response.status_code == 200 and response.json()["ca"] == body["ca"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_only_admins_may_issue(world: World, ca: PkiStore, role: str) -> None:
    """A certificate speaks for a device, like a broker login: viewer and operator get 403."""
    code, _ = world.post("dev-c", csr_for("dev-c", new_private_key()), role)
    assert code == 403
    with Session(world.live.services.engine) as session:
        issued = session.exec(
            select(IssuedCertificate).where(IssuedCertificate.device_id == "dev-c")
        )
        assert issued.all() == []


@pytest.mark.parametrize(
    ("csr", "detail"),
    [
        (csr_for("dev-other", new_private_key()), "names 'dev-other', not the device 'dev-d'"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a PEM certificate signing request",
        ),
    ],
    ids=["wrong-cn", "garbage"],
)
def test_a_bad_csr_is_422_with_the_reason(
    world: World, ca: PkiStore, csr: bytes | str, detail: str
) -> None:
    """A CSR naming another device, or no CSR at all, is refused with 422 saying why."""
    code, body = world.post("dev-d", csr)
    assert code == 422 and detail in body["detail"]


def test_a_huge_csr_is_refused_unread(world: World, ca: PkiStore) -> None:
    """A body larger than any CSR is a validation error, not parsed."""
    code, _ = world.post("dev-d", "A" * 20_000)
    assert code == 422


def test_a_revoked_device_is_409(world: World, ca: PkiStore) -> None:
    """A device whose credential was revoked gets 409 until it is provisioned again."""
    with session_scope(world.live.services.engine) as session:
        session.add(BrokerCredential(device_id="dev-r", username="dev-r", password_hash="x",
                                     revoked_at=datetime.now(UTC)))  # fmt: skip
    code, body = world.post("dev-r", csr_for("dev-r", new_private_key()))
    assert code == 409 and "revoked" in body["detail"]
