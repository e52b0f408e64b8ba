"""The one error family for bad data arriving from the other side of the wire."""


class ProtocolError(ValueError):
    """A message that does not follow protocol v1.

    ``reason`` is a short machine-readable code (used as a metric label and stored in the
    dead-letter table); the exception text says in words what is wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
