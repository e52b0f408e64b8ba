"""The device certificate authority: the CA, broker server certificates, signed device
certificates and the revocation list."""
