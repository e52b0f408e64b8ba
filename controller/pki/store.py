"""The device CA on disk: its encrypted key, its certificate and the revocation list.

The folder (``pki.dir``, 0700) holds:

- ``ca.key``: the CA's ECDSA P-256 key, PKCS#8 PEM encrypted with the TUF keys' passphrase
  (``updates.passphrase_file`` or ``EDGEFLEET_KEY_PASSPHRASE``, the same rules: at least 12
  characters, no placeholder), mode 0600. It is decrypted only to sign and never kept, so
  the passphrase can stay out of a controller that only serves;
- ``ca.crt``: the CA certificate (public: the broker and every device trust it);
- ``crl.pem``: the revocation list the broker checks (an empty one from ``pki init``);
- ``broker.crt`` / ``broker.key``: the broker's server certificate and its (unencrypted:
  Mosquitto reads it at start) key, from ``pki init``.

The pure certificate operations are ``controller.pki.authority``'s.
"""

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import SecretStr

from controller.pki.authority import (
    Authority,
    Revoked,
    device_certificate,
    new_authority,
    revocation_list,
    server_certificate,
)
from controller.pki.errors import CertificateRefused, NoAuthorityError, PkiError
from controller.settings import PkiSettings
from controller.updates.errors import KeyStoreError
from controller.updates.keys import read_passphrase, require_passphrase
from shared.certificates import (
    CertificateError,
    certificate_pem,
    load_private_key,
    new_private_key,
    private_key_pem,
    read_certificate,
)
from shared.files import fsync_dir, write_atomic

if TYPE_CHECKING:
    from controller.settings import Settings

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL = "crl.pem"
SERVER_CERT = "broker.crt"
SERVER_KEY = "broker.key"
DEFAULT_CA_NAME = "edgefleet device CA"
# A DNS name as a certificate carries it: ASCII labels (A-labels for IDNs), a leading "*."
# for a wildcard.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


def check_server_hosts(hosts: Sequence[str]) -> list[str]:
    """The hosts of a server certificate, each an IP address or a DNS name (IDNs in their
    ``xn--`` form); PkiError naming the first that is neither."""
    if not hosts:
        raise PkiError("a server certificate needs at least one --host")
    for host in hosts:
        try:
            ip_address(host)
            continue
        except ValueError:
            pass
        if len(host) > 253 or not _DNS_NAME.fullmatch(host):
            raise PkiError(
                f"--host {host!r} is neither an IP address nor a DNS name (letters, digits,"
                " '-' and '.'; internationalized names in their xn-- form)"
            )
    return list(hosts)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (refused if it exists, also by a concurrent writer) with ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class PkiStore:
    """The CA folder; the key is only decrypted inside ``authority()``."""

    def __init__(
        self,
        folder: Path,
        passphrase: SecretStr | None,
        settings: PkiSettings | None = None,
    ) -> None:
        self.dir = folder
        self._passphrase = passphrase
        self.settings = settings or PkiSettings(dir=folder)

    @classmethod
    def from_settings(cls, settings: "Settings", passphrase_file: Path | None = None) -> "PkiStore":
        """The store of ``pki.dir`` with the passphrase from ``passphrase_file`` (else
        ``updates.passphrase_file``, else ``EDGEFLEET_KEY_PASSPHRASE``)."""
        try:
            passphrase = read_passphrase(passphrase_file or settings.updates.passphrase_file)
        except KeyStoreError as e:
            raise PkiError(str(e)) from e
        return cls(settings.pki.dir, passphrase, settings.pki)

    def __repr__(self) -> str:
        return f"PkiStore({str(self.dir)!r})"

    @property
    def key_file(self) -> Path:
        return self.dir / CA_KEY

    @property
    def ca_file(self) -> Path:
        return self.dir / CA_CERT

    @property
    def crl_file(self) -> Path:
        return self.dir / CRL

    @property
    def server_cert_file(self) -> Path:
        return self.dir / SERVER_CERT

    @property
    def server_key_file(self) -> Path:
        return self.dir / SERVER_KEY

    def exists(self) -> bool:
        return self.ca_file.is_file()

    def _passphrase_bytes(self) -> bytes:
        try:
            return require_passphrase(self._passphrase).get_secret_value().encode()
        except KeyStoreError as e:
            raise PkiError(f"device CA: {e}") from e

    # --- the CA ---------------------------------------------------------------------------
    def initialize(self, name: str = DEFAULT_CA_NAME, *, now: datetime) -> x509.Certificate:
        """Create the CA (key, certificate, empty CRL); refused if one is there already."""
        secret = self._passphrase_bytes()
        if self.key_file.exists() or self.ca_file.exists():
            raise PkiError(
                f"a device CA already exists in {self.dir}; refusing to overwrite it (every"
                " device certificate depends on it)"
            )
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        ca = new_authority(name, now=now, days=self.settings.ca_days)
        try:
            _write_new(self.key_file, private_key_pem(ca.key, secret), 0o600)
        except FileExistsError as e:
            raise PkiError(f"a device CA already exists in {self.dir}") from e
        write_atomic(self.ca_file, certificate_pem(ca.cert), 0o644)
        fsync_dir(self.dir)
        self._write_crl(ca, [], now=now)
        return ca.cert

    def ca_certificate(self) -> x509.Certificate:
        """The CA certificate; NoAuthorityError when there is none yet."""
        try:
            data = self.ca_file.read_bytes()
        except FileNotFoundError as e:
            raise NoAuthorityError(
                f"no device CA in {self.dir}: run 'edgefleet pki init -c CONFIG --host"
                " BROKER-HOST' on the controller host"
            ) from e
        except OSError as e:
            raise NoAuthorityError(f"cannot read {self.ca_file}: {e.strerror or e}") from e
        try:
            return read_certificate(data)
        except CertificateError as e:
            raise NoAuthorityError(f"{self.ca_file}: {e}") from e

    def ca_pem(self) -> bytes:
        return certificate_pem(self.ca_certificate())

    @contextmanager
    def authority(self) -> Iterator[Authority]:
        """The CA with its key decrypted, for the signatures made inside the block only."""
        cert = self.ca_certificate()
        secret = self._passphrase_bytes()
        try:
            data = self.key_file.read_bytes()
        except OSError as e:
            raise NoAuthorityError(f"cannot read {self.key_file}: {e.strerror or e}") from e
        if b"ENCRYPTED PRIVATE KEY" not in data:
            raise NoAuthorityError(
                f"{self.key_file} is not an encrypted private key; the CA key must be"
                " encrypted at rest"
            )
        try:
            key = load_private_key(data, secret)
        except CertificateError as e:
            # cryptography's text is about the ciphertext, never the passphrase
            raise NoAuthorityError(
                f"cannot decrypt {self.key_file}: wrong passphrase or damaged key file"
            ) from e
        if key.public_key() != cert.public_key():
            raise NoAuthorityError(f"{self.key_file} is not the key of {self.ca_file}")
        yield Authority(key, cert)

    # --- signing --------------------------------------------------------------------------
    def sign_device(
        self, csr_pem: bytes, device_id: str, *, now: datetime, days: int | None = None
    ) -> x509.Certificate:
        """A device certificate for ``csr_pem``; CertificateRefused for a bad CSR or a CN
        that is not ``device_id``."""
        with self.authority() as ca:
            try:
                return device_certificate(
                    ca, csr_pem, device_id, now=now, days=days or self.settings.device_cert_days
                )
            except CertificateError as e:
                raise CertificateRefused(str(e)) from e

    def server_certificate(
        self, hosts: Sequence[str], *, now: datetime, days: int | None = None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A new server key and its certificate for ``hosts`` (the subject alternative names)."""
        names = check_server_hosts(hosts)
        key = new_private_key()
        with self.authority() as ca:
            try:
                cert = server_certificate(
                    ca, names, key, now=now, days=days or self.settings.server_cert_days
                )
            except CertificateError as e:
                raise PkiError(str(e)) from e
        return cert, key

    def write_server_certificate(
        self, hosts: Sequence[str], folder: Path, name: str = "broker", *, now: datetime
    ) -> tuple[Path, Path]:
        """``folder/name.crt`` and ``folder/name.key`` (0600) for ``hosts``; refuses to
        overwrite either."""
        cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
        for path in (cert_file, key_file):
            if path.exists():
                raise PkiError(f"{path} already exists; choose another --out folder or name")
        cert, key = self.server_certificate(hosts, now=now)
        folder.mkdir(parents=True, exist_ok=True)
        _write_new(key_file, private_key_pem(key), 0o600)
        write_atomic(cert_file, certificate_pem(cert), 0o644)
        return cert_file, key_file

    def _write_crl(self, ca: Authority, revoked: Iterable[Revoked], *, now: datetime) -> None:
        crl = revocation_list(ca, revoked, now=now, next_update=self.settings.crl_next_update)
        write_atomic(self.crl_file, crl.public_bytes(Encoding.PEM), 0o644)

    def publish_crl(self, revoked: Iterable[Revoked], *, now: datetime) -> Path:
        """Sign and write ``crl.pem`` listing ``revoked``, valid ``pki.crl_next_update``."""
        with self.authority() as ca:
            self._write_crl(ca, revoked, now=now)
        return self.crl_file


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CRL",
    "DEFAULT_CA_NAME",
    "SERVER_CERT",
    "SERVER_KEY",
    "PkiStore",
    "check_server_hosts",
]
