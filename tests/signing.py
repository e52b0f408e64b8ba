"""Signers for tests that speak the protocol themselves (a fake device, a fake controller)."""

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.attestation import public_key_of
from shared.message_signing import CONTROLLER_DOMAIN, DEVICE_DOMAIN, Signer, short_key_id


def device_signer(key: Ed25519PrivateKey) -> Signer:
    """Signs as a device whose identity key is ``key``."""
    return Signer(DEVICE_DOMAIN, short_key_id(public_key_of(key)), key.sign)


def controller_signer(key: Ed25519PrivateKey) -> Signer:
    """Signs as a controller whose message key is ``key``."""
    return Signer(CONTROLLER_DOMAIN, short_key_id(public_key_of(key)), key.sign)
