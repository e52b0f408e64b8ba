"""Mutual TLS for the drill's agents when the broker URL is ``mqtts://``.

Each agent gets a P-256 key made here (it never leaves the drill's work folder) and a
certificate the controller's device CA signs for its CSR (``POST
/api/devices/{id}/certificate``, as ``edgefleet flash`` does); the CA certificate comes
from ``GET /api/pki/ca``. The drill's proxies forward bytes, so the handshake runs end to
end between agent and broker: the broker's certificate must name 127.0.0.1, the address
the agents dial (the proxy's). ``check_broker`` tries that handshake once before any agent
starts, so a broker the agents could never verify fails the drill at once.
"""

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from controller.api_client import ApiError
from controller.drills.processes import ControllerHandle, DrillError
from shared.broker_url import Tls, TlsConfigError
from shared.certificates import csr_for, new_private_key, private_key_pem

AGENT_HOST = "127.0.0.1"  # where the drill's broker proxy listens: what the agents dial


@dataclass(frozen=True, slots=True)
class AgentTls:
    """The files one agent's ``mqtt`` section names."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def config(self) -> dict[str, str]:
        return {
            "ca_file": str(self.ca_file),
            "cert_file": str(self.cert_file),
            "key_file": str(self.key_file),
        }


def fetch_ca(controller: ControllerHandle, folder: Path, broker_url: str) -> Path:
    """The controller's device CA certificate, written to ``folder/ca.crt``; DrillError
    saying what to do when the controller has none."""
    try:
        body = controller.call("GET", "/api/pki/ca", timeout=10)
    except ApiError as e:
        raise DrillError(
            f"the broker {broker_url} is mqtts:// but the controller at {controller.url} "
            f"cannot certify the drill's agents: {e} (give the controller a device CA with "
            "'edgefleet pki init', the CA its broker trusts, or drill a plain mqtt:// broker)"
        ) from e
    text = body.get("ca") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise DrillError(f"{controller.url}/api/pki/ca did not return a CA certificate")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "ca.crt"
    path.write_text(text)
    return path


def agent_tls(
    controller: ControllerHandle, device_id: str, folder: Path, ca_file: Path
) -> AgentTls:
    """A key made for ``device_id`` (0600, in a 0700 folder) and the certificate the
    controller signed for its CSR."""
    key = new_private_key()
    try:
        body = controller.call(
            "POST",
            f"/api/devices/{device_id}/certificate",
            body={"csr": csr_for(device_id, key).decode("ascii")},
        )
    except ApiError as e:
        raise DrillError(f"the controller issued no certificate for {device_id}: {e}") from e
    cert = body.get("certificate") if isinstance(body, dict) else None
    if not isinstance(cert, str):
        raise DrillError(f"/api/devices/{device_id}/certificate returned no certificate")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    files = AgentTls(ca_file, folder / "device.crt", folder / "device.key")
    files.key_file.touch(mode=0o600)
    files.key_file.chmod(0o600)
    files.key_file.write_bytes(private_key_pem(key))
    files.cert_file.write_text(cert)
    return files


def check_broker(host: str, port: int, files: AgentTls) -> None:
    """One TLS handshake with the broker as an agent makes it (its files, host name
    127.0.0.1); DrillError naming what does not verify."""
    try:
        ctx = Tls(files.ca_file, files.cert_file, files.key_file).context()
    except TlsConfigError as e:
        raise DrillError(f"agent TLS files: {e}") from e
    try:
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=AGENT_HOST),
        ):
            pass
    except ssl.SSLCertVerificationError as e:
        raise DrillError(
            f"the broker at {host}:{port} presents a certificate the agents cannot verify "
            f"for {AGENT_HOST} (the address they dial through the drill's proxy): "
            f"{e.verify_message}; give the broker a certificate from the controller's CA "
            f"naming {AGENT_HOST}"
        ) from e
    except (OSError, ssl.SSLError) as e:
        raise DrillError(f"no TLS handshake with the broker at {host}:{port}: {e}") from e


__all__ = ["AGENT_HOST", "AgentTls", "agent_tls", "check_broker", "fetch_ca"]
