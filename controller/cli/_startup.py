"""What ``edgefleet serve`` tells the operator once it listens: the URL, and a warning for
each setting or state that will bite later (no user to log in with, no key passphrase, an
anonymous broker, development settings in production, devices that provisioned enrollment
will quarantine). The warnings are decided from facts gathered first (``StartupFacts``), so
they are tested without starting anything."""

import socket
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.attestation.service import DeviceIdentity
from controller.auth.tables import User
from controller.devices.tables import Device
from controller.settings import Settings
from controller.updates.errors import UpdatesError
from controller.updates.keys import PASSPHRASE_SOURCES
from controller.updates.repository import TufRepository


@dataclass(frozen=True, slots=True)
class StartupFacts:
    """What the warnings depend on besides the settings, read once at start."""

    users: int = 0  # enabled console users
    devices: int = 0  # registered devices, decommissioned ones left out
    devices_without_identity: int = 0
    identities: int = 0
    has_passphrase: bool = False
    tuf_initialized: bool = False
    # Why the timestamp cannot be re-signed with this passphrase and these keys (None: it can).
    signing_problem: str | None = None
    timestamp_expires: str | None = None  # ISO 8601
    broker_port: int | None = None  # the embedded broker's port, once bound


def gather_facts(
    engine: Engine, repo: TufRepository | None, broker_port: int | None
) -> StartupFacts:
    """Count users, devices and identity keys, and try the TUF keys without signing."""
    with Session(engine) as session:
        users = session.exec(
            select(func.count()).select_from(User).where(col(User.disabled).is_(False))
        ).one()
        live = col(Device.decommissioned).is_(False)
        devices = session.exec(select(func.count()).select_from(Device).where(live)).one()
        without = session.exec(
            select(func.count())
            .select_from(Device)
            .where(live, col(Device.id).not_in(select(DeviceIdentity.device_id)))
        ).one()
        identities = session.exec(select(func.count()).select_from(DeviceIdentity)).one()
    initialized = repo is not None and repo.is_initialized()
    problem: str | None = None
    expires: str | None = None
    if repo is not None and initialized:
        try:
            stamp = repo.timestamp_expires()
            expires = None if stamp is None else stamp.isoformat()
            repo.check_signing("timestamp")
        except UpdatesError as e:
            problem = str(e)
    return StartupFacts(
        users=users,
        devices=devices,
        devices_without_identity=without,
        identities=identities,
        has_passphrase=repo is not None and repo.keys.has_passphrase,
        tuf_initialized=initialized,
        signing_problem=problem,
        timestamp_expires=expires,
        broker_port=broker_port,
    )


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _with_config(config: Path | None) -> str:
    return "" if config is None else f" -c {config}"


def _passphrase_warning(settings: Settings, facts: StartupFacts) -> str | None:
    if not facts.tuf_initialized:
        if facts.has_passphrase:
            return None
        return (
            f"no TUF key passphrase ({PASSPHRASE_SOURCES}): 'edgefleet keys init' and"
            " 'edgefleet models add' need it, and this controller needs it to re-sign the"
            " timestamp metadata before it expires (docs/updates.md)"
        )
    if facts.signing_problem is None:
        return None
    margin = settings.updates.expiry.timestamp * settings.updates.refresh_fraction
    return (
        f"the TUF timestamp cannot be re-signed: {facts.signing_problem}. It expires at"
        f" {facts.timestamp_expires}, and devices then refuse every update; /healthz reports"
        f" tuf_signing degraded from {margin} before that. Set {PASSPHRASE_SOURCES} and"
        " restart"
    )


def _broker_warning(settings: Settings, facts: StartupFacts) -> str | None:
    broker = settings.broker
    if broker.mode != "embedded":
        return None
    where = f"{broker.host}:{facts.broker_port or broker.port}"
    if not _loopback(broker.host):
        return (
            f"the embedded broker listens on {where}, beyond this machine, and accepts"
            " anonymous clients: anyone who reaches it can publish as any device and read"
            " every desired document. Use broker.mode: external (Mosquitto or EMQX with"
            " per-device credentials, docs/production.md) or a loopback broker.url"
        )
    if settings.environment == "production":
        return (
            f"the embedded broker ({where}) accepts anonymous clients: any program on this"
            " machine can publish as any device. In production use broker.mode: external"
            " (Mosquitto or EMQX with per-device credentials, docs/production.md)"
        )
    return None


def development_settings(settings: Settings, log_level: str) -> list[str]:
    """The development settings a production controller runs with, as ``key: value``."""
    found: list[str] = []
    attestation = settings.attestation
    if attestation.enrollment == "tofu":
        found.append("attestation.enrollment: tofu (any device's first key is trusted)")
    if attestation.trust_local_agent_code:
        found.append(
            "attestation.trust_local_agent_code: true (the agent installed here is golden)"
        )
    if not settings.secure_cookies:
        found.append("secure_cookies: false (session cookies also sent over plain HTTP)")
    if log_level.lower() == "debug":
        found.append("--log-level debug")
    return found


def _enrollment_warning(settings: Settings, facts: StartupFacts, config: Path | None) -> str | None:
    attestation = settings.attestation
    if attestation.effective_enrollment(settings.environment) != "provisioned":
        return None
    if facts.devices_without_identity:
        state = (
            f"{facts.devices_without_identity} of {facts.devices} registered devices have"
            " no registered key and stay quarantined"
        )
    elif attestation.enrollment is None and facts.identities == 0:
        state = "no identity key is registered yet"
    else:
        return None
    default = " (the production default)" if attestation.enrollment is None else ""
    return (
        f"attestation.enrollment is provisioned{default}: only devices whose identity key"
        " was registered beforehand are trusted, any other is quarantined at its first birth"
        f" (unknown_identity_key); {state}. 'edgefleet flash' registers the keys it makes;"
        f" for others run 'edgefleet devices provision ID --identity-key KEY{_with_config(config)}'"
        " or set attestation.enrollment: tofu to trust each device's first key"
        " (docs/attestation.md)"
    )


def startup_warnings(
    settings: Settings, facts: StartupFacts, *, config: Path | None, log_level: str = "info"
) -> list[str]:
    """Every warning for these settings and facts, most urgent first."""
    warnings: list[str] = []
    if facts.users == 0:
        warnings.append(
            "no console user yet: create the first admin with 'edgefleet admin create"
            f" --username admin --prompt{_with_config(config)}'"
        )
    if (passphrase := _passphrase_warning(settings, facts)) is not None:
        warnings.append(passphrase)
    if (broker := _broker_warning(settings, facts)) is not None:
        warnings.append(broker)
    development = development_settings(settings, log_level)
    if settings.environment == "production" and development:
        warnings.append(
            "environment is production, but it runs with development settings: "
            + "; ".join(development)
        )
    if (enrollment := _enrollment_warning(settings, facts, config)) is not None:
        warnings.append(enrollment)
    return warnings


def display_url(scheme: str, bound: tuple[str, int]) -> tuple[str, str | None]:
    """The URL to print for a socket bound to ``bound`` (address, port), and, for a wildcard
    address, what it listens on (the URL then names this host)."""
    host, port = bound
    if host in ("0.0.0.0", "::"):  # noqa: S104 - reading the bound address, not binding
        name = socket.gethostname()
        return f"{scheme}://{name}:{port}", f"listening on every address, port {port}"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}", None


__all__ = [
    "StartupFacts",
    "development_settings",
    "display_url",
    "gather_facts",
    "startup_warnings",
]
