"""Device attestation: the pure quote policy (``policy``) and the service that enrolls,
challenges, judges and quarantines (``service``; docs/attestation.md). Imports nothing:
import the module you need."""
