"""The broker address format both sides configure: ``mqtt://HOST[:PORT]`` (default 1883)."""

from dataclasses import dataclass
from urllib.parse import urlparse

DEFAULT_MQTT_PORT = 1883


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int


def parse_broker_url(value: str) -> BrokerAddress:
    """Parse ``mqtt://HOST:PORT`` (``tcp://`` accepted); raises ValueError saying what is wrong."""
    parsed = urlparse(value)
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"invalid port in {value!r}") from None
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise ValueError(f"expected mqtt://HOST:PORT, got {value!r}")
    return BrokerAddress(parsed.hostname, DEFAULT_MQTT_PORT if port is None else port)
