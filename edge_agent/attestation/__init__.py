"""Device attestation: the identity key, the measurements and the signed quote."""

from edge_agent.attestation.attester import Attester
from edge_agent.attestation.identity import FileIdentityKey, IdentityKey
from edge_agent.attestation.measure import measure

__all__ = ["Attester", "FileIdentityKey", "IdentityKey", "measure"]
