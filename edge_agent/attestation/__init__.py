"""Device attestation: the identity key, the measurements and the signed quote."""
