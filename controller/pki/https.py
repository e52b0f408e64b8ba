"""The controller's HTTPS server context (``http_tls``): TLS 1.2 or newer, the certificate
chain and key read once at start, and a message naming the file when one cannot be used.

The certificate may come from the device CA (``edgefleet pki init --host``, or
``controller.pki.authority.server_certificate``), so agents verify it with the CA file they
already trust for the broker (``updates.ca_file``), or from any public or private CA.
"""

import ssl
from pathlib import Path

from shared.broker_url import TlsConfigError, ssl_reason


def _encrypted() -> bytes:
    # OpenSSL would otherwise prompt for a passphrase on the terminal.
    raise TlsConfigError("the key is encrypted")


def server_context(cert_file: Path, key_file: Path | None) -> ssl.SSLContext:
    """A server context presenting ``cert_file`` (with ``key_file``, or a key in the same
    PEM); TlsConfigError naming the file and what is wrong with it."""
    for setting, path in (("http_tls.cert_file", cert_file), ("http_tls.key_file", key_file)):
        if path is not None and not path.is_file():
            raise TlsConfigError(f"{setting} {path}: no such file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None, _encrypted)
    except TlsConfigError as e:
        raise TlsConfigError(
            f"http_tls.key_file {key_file or cert_file}: {e}; give the server an unencrypted"
            " key readable only by its user (mode 0600)"
        ) from e
    except (OSError, ssl.SSLError) as e:
        if not _is_certificate(cert_file):
            raise TlsConfigError(
                f"http_tls.cert_file {cert_file}: not a PEM certificate ({ssl_reason(e)})"
            ) from e
        raise TlsConfigError(
            f"http_tls.key_file {key_file or cert_file}: not the private key of"
            f" http_tls.cert_file {cert_file} ({ssl_reason(e)})"
        ) from e
    return ctx


def _is_certificate(path: Path) -> bool:
    from cryptography import x509

    try:
        x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True
