"""The broker address and TLS settings both sides configure.

Addresses are ``mqtt://HOST[:PORT]`` (plaintext, default port 1883) or ``mqtts://HOST[:PORT]``
(TLS, default port 8883). TLS settings are stdlib only (no paho), so configs can use them.
"""

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
PLAIN_SCHEMES = ("mqtt", "tcp")
TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False

    @property
    def loopback(self) -> bool:
        """Whether the broker is on this machine (plaintext is harmless there)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_broker_url(value: str) -> BrokerAddress:
    """Parse ``mqtt://HOST:PORT`` (``tcp://`` accepted) or ``mqtts://HOST:PORT`` (``ssl://``
    accepted); raises ValueError saying what is wrong."""
    parsed = urlparse(value)
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if parsed.scheme not in (*PLAIN_SCHEMES, *TLS_SCHEMES) or not parsed.hostname:
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {value!r}")
    if parsed.path not in ("", "/") or parsed.query or parsed.username or parsed.password:
        raise ValueError(
            f"a broker URL is scheme://HOST:PORT only (credentials go in their own keys), "
            f"got {value!r}"
        )
    tls = parsed.scheme in TLS_SCHEMES
    default = DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT
    return BrokerAddress(parsed.hostname, default if port is None else port, tls)


def protocol_as_text(value: Any) -> Any:
    """Config validator: ``protocol: 5`` (a YAML number, as the docs print the default) means
    ``"5"``; ``3.1.1`` is always text in YAML."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 5:
        return "5"
    return value


def check_tls_files(
    url: str, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> None:
    """Config rule: CA, certificate and key files only with an ``mqtts://`` URL (a file set
    for a plaintext URL would look like security and give none), and no key without its
    certificate."""
    given = [
        name
        for name, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file))
        if value is not None
    ]
    if given and not parse_broker_url(url).tls:
        raise ValueError(f"{', '.join(given)} set, but the URL {url!r} is not mqtts://")
    if key_file is not None and cert_file is None:
        raise ValueError("key_file set without cert_file")


class TlsConfigError(ValueError):
    """A CA, certificate or key file that cannot be used; the text names the file."""


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS for the connection: the broker's certificate is verified (chain and host name)
    against ``ca_file``, or the system's trust store when it is None; ``cert_file`` (with
    ``key_file``, or a key inside the same PEM) is our client certificate. TLS 1.2 or newer
    only."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """A client context; raises TlsConfigError naming the file that cannot be used."""
        try:
            ctx = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
        except (OSError, ssl.SSLError) as e:
            raise TlsConfigError(f"CA file {self.ca_file}: {ssl_reason(e)}") from e
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.load_certificate(ctx)
        return ctx

    def load_certificate(self, ctx: ssl.SSLContext) -> None:
        """(Re)load the client certificate into ``ctx``: later handshakes present it (how a
        renewed certificate takes effect without a new transport)."""
        if self.cert_file is None:
            if self.key_file is not None:
                raise TlsConfigError(f"key file {self.key_file} given without a certificate")
            return
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        except (OSError, ssl.SSLError) as e:
            files = f"{self.cert_file}" + (f" / {self.key_file}" if self.key_file else "")
            raise TlsConfigError(f"client certificate {files}: {ssl_reason(e)}") from e


def ssl_reason(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason).replace("_", " ").lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
