"""Device attestation: the pure quote policy and the service that enrolls, challenges,
judges and quarantines (docs/attestation.md)."""

from controller.attestation.policy import ChallengeRecord, Golden, Reason, Verdict, evaluate_quote
from controller.attestation.service import (
    AttestationChallenge,
    AttestationResult,
    AttestationService,
    DeviceIdentity,
    GoldenMeasurement,
)

__all__ = [
    "AttestationChallenge",
    "AttestationResult",
    "AttestationService",
    "ChallengeRecord",
    "DeviceIdentity",
    "Golden",
    "GoldenMeasurement",
    "Reason",
    "Verdict",
    "evaluate_quote",
]
