"""The errors of the update repository: one family, so the CLI and the API can turn any of
them into a clear message without a traceback. Messages never contain key material or
passphrases."""


class UpdatesError(Exception):
    """Something about signed updates is wrong; the message says what and what to do."""


class KeyStoreError(UpdatesError):
    """A key is missing, cannot be decrypted, or a passphrase is unusable."""


class RepositoryStateError(UpdatesError):
    """The repository on disk is missing, corrupt, unverifiable or expired."""


class PublishError(UpdatesError):
    """A model or root version cannot be published (bad input, too few signatures)."""


class DuplicateError(PublishError):
    """That model name and version (or target path) is already published."""


class TooLargeError(PublishError):
    """An upload is larger than the configured limit."""


__all__ = [
    "DuplicateError",
    "KeyStoreError",
    "PublishError",
    "RepositoryStateError",
    "TooLargeError",
    "UpdatesError",
]
