"""The device CA's refusals: one family, so the CLI and the API turn any of them into a clear
message without a traceback. Messages never hold key material or passphrases."""


class PkiError(Exception):
    """Something about the device CA or a certificate request is wrong; the text says what."""


class NoAuthorityError(PkiError):
    """No CA exists yet (``edgefleet pki init`` has not run) or it cannot be read."""


class CertificateRefused(PkiError):
    """A certificate request the CA will not sign: a bad CSR, or a CN that is not the device."""


class DeviceRevokedError(PkiError):
    """The device was revoked: it gets no new certificate until it is provisioned again."""


class DeviceNotProvisionedError(PkiError):
    """The controller requires provisioned devices and this one has no live credential."""


__all__ = [
    "CertificateRefused",
    "DeviceNotProvisionedError",
    "DeviceRevokedError",
    "NoAuthorityError",
    "PkiError",
]
