"""Certificates for tests, made by the project's own CA code, and Mosquitto TLS listeners."""

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.pki.authority import (
    Authority,
    Revoked,
    device_certificate,
    new_authority,
    revocation_list,
    server_certificate,
)
from shared.certificates import certificate_pem, csr_for, new_private_key, private_key_pem
from tests.conftest import MosquittoProcess

NOW = datetime.now(UTC)


@dataclass(frozen=True)
class ClientFiles:
    cert_file: Path
    key_file: Path
    serial: int


class TestCa:
    """A CA in a folder: its certificate file, a broker certificate, device certificates."""

    __test__ = False  # not a test class

    def __init__(self, folder: Path, name: str = "edgefleet test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.authority: Authority = new_authority(name, now=NOW, days=30)
        self.ca_file = folder / "ca.crt"
        self.ca_file.write_bytes(certificate_pem(self.authority.cert))

    def server(self, hosts: list[str], name: str = "broker") -> tuple[Path, Path]:
        key = new_private_key()
        cert = server_certificate(self.authority, hosts, key, now=NOW, days=7)
        cert_file, key_file = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        cert_file.write_bytes(certificate_pem(cert))
        key_file.write_bytes(private_key_pem(key))
        return cert_file, key_file

    def client(self, device_id: str, *, days: int = 7, now: datetime = NOW) -> ClientFiles:
        key = new_private_key()
        cert = device_certificate(
            self.authority, csr_for(device_id, key), device_id, now=now, days=days
        )
        cert_file = self.folder / f"{device_id}.crt"
        key_file = self.folder / f"{device_id}.key"
        cert_file.write_bytes(certificate_pem(cert))
        key_file.write_bytes(private_key_pem(key))
        return ClientFiles(cert_file, key_file, cert.serial_number)

    def crl(self, revoked: list[int]) -> Path:
        path = self.folder / "ca.crl"
        crl = revocation_list(
            self.authority,
            [Revoked(serial, NOW) for serial in revoked],
            now=NOW,
            next_update=timedelta(days=1),
        )
        from cryptography.hazmat.primitives.serialization import Encoding

        path.write_bytes(crl.public_bytes(Encoding.PEM))
        return path


@dataclass(frozen=True)
class BrokerFiles:
    """A CA certificate and a server certificate and key made elsewhere (``pki init``)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def tls_mosquitto(
    workdir: Path,
    ca: TestCa | BrokerFiles,
    *,
    hosts: list[str] | None = None,
    crl: Path | None = None,
) -> MosquittoProcess:
    """A Mosquitto whose only listener is TLS with client certificates required, the
    certificate's CN taken as the user name, and each client confined to its own topics.
    ``ca`` is a TestCa (a server certificate for ``hosts`` is made) or given files."""
    if isinstance(ca, BrokerFiles):
        cert_file, key_file = ca.cert_file, ca.key_file
    else:
        cert_file, key_file = ca.server(hosts or ["127.0.0.1", "localhost"])
    acl = workdir / "acl"
    acl.write_text(
        "user edgefleet-controller\ntopic readwrite ef/#\ntopic readwrite $share/#\n"
        "pattern readwrite ef/v1/%u/#\n"
    )
    server = MosquittoProcess(workdir)
    lines = server.conf.read_text().splitlines()
    listener = lines[0].split()
    body = [line for line in lines[1:] if not line.startswith(("allow_anonymous", "user "))]
    tls = [
        f"listener {listener[1]} {listener[2]}",
        f"cafile {ca.ca_file}",
        f"certfile {cert_file}",
        f"keyfile {key_file}",
        "require_certificate true",
        "use_identity_as_username true",
        # Without it any valid certificate could take over another device's session by
        # connecting with its client id.
        "use_username_as_clientid true",
        f"acl_file {acl}",
        "allow_anonymous false",
        # Started as root, Mosquitto would switch to user 'mosquitto', who cannot read
        # pytest's folders (the keys, the ACL): stay the current user.
        f"user {getpass.getuser()}",
    ]
    if crl is not None:
        tls.append(f"crlfile {crl}")
    server.conf.write_text("\n".join([*tls, *body]) + "\n")
    return server
