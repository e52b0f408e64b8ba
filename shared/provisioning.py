"""Where a provisioned device keeps its files: the paths flashing writes and the agent reads.

The controller's ``edgefleet image build`` and ``edgefleet flash`` put these files on a
device; the agent looks for them there. Both sides take the names from here, so neither
imports the other. Paths are device-relative (no leading ``/``): join them with the
device's root, or prefix ``/`` on the device itself. Constants only; imports nothing.
"""

# The agent's configuration (flash renders it from the image's template).
AGENT_CONFIG = "etc/edgefleet/agent.yaml"
# The JSON Schema of that configuration, exported by the image build from the agent it
# packs, so flash validates a config against the agent version actually in the image.
AGENT_CONFIG_SCHEMA = "etc/edgefleet/agent-config.schema.json"
# The image's identity (image id, device class, agent version), read by attestation.
IMAGE_FILE = "etc/edgefleet/image.json"
# The device's MQTT broker password (0600; the controller holds only its hash).
PASSWORD_FILE = "etc/edgefleet/mqtt-password"  # noqa: S105 (a path, not a password)
# The TUF trusted root the agent's update client starts its chain from.
TRUSTED_ROOT = "etc/edgefleet/tuf-root.json"
# The agent's state folder (its default ``state_dir``).
STATE_DIR = "var/lib/edgefleet-agent"
# The identity key: ``<state_dir>/identity/ed25519.pem`` (PKCS#8 PEM, 0600, folder 0700).
IDENTITY_FOLDER = "identity"
IDENTITY_KEY_FILE = "ed25519.pem"
# The controller message keys the device trusts: ``<state_dir>/identity/controller-keys.json``
# (``{"keys": [<raw Ed25519 public key, base64>, ...]}``, newest first). Flashing writes it;
# an agent without it pins the controller's key on first use (docs/protocol.md).
CONTROLLER_KEYS_FILE = "controller-keys.json"
# The broker's CA certificate (the device CA, from ``edgefleet pki init``) for mqtts://.
MQTT_CA_FILE = "etc/edgefleet/mqtt-ca.crt"
# The CA of the controller's HTTPS certificate (updates.ca_file), when flash was given one.
CONTROLLER_CA_FILE = "etc/edgefleet/controller-ca.crt"
# The device's TLS client key and certificate: ``<state_dir>/tls/device.key`` (PKCS#8 PEM,
# 0600) and ``device.crt`` (CN = the device id), in a 0700 folder the agent owns, so it
# can replace the certificate when it renews it.
TLS_FOLDER = "tls"
TLS_KEY_FILE = "device.key"
TLS_CERT_FILE = "device.crt"

__all__ = [
    "AGENT_CONFIG",
    "AGENT_CONFIG_SCHEMA",
    "CONTROLLER_CA_FILE",
    "CONTROLLER_KEYS_FILE",
    "IDENTITY_FOLDER",
    "IDENTITY_KEY_FILE",
    "IMAGE_FILE",
    "MQTT_CA_FILE",
    "PASSWORD_FILE",
    "STATE_DIR",
    "TLS_CERT_FILE",
    "TLS_FOLDER",
    "TLS_KEY_FILE",
    "TRUSTED_ROOT",
]
