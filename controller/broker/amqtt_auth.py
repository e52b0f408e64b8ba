"""The embedded broker's login check: amqtt's password file, and the client id it binds.

amqtt lets any authenticated user connect under any client id, so a device with its own
valid login could take over the controller's session (or another device's) by using its
client id. ``ClientIdFileAuthPlugin`` refuses that: a device's client id must be its user
name (as Mosquitto's ``use_username_as_clientid`` makes it), and the controller's user may
only use the controller's client ids (``client_ids``). Loaded by amqtt by its import path
(``controller/broker/embedded.py``), so only the embedded broker imports amqtt here.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from amqtt.plugins.authentication import FileAuthPlugin
from amqtt.session import Session

log = logging.getLogger(__name__)


class ClientIdFileAuthPlugin(FileAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """FileAuthPlugin that also binds each user to its client id."""

    async def authenticate(self, *, session: Session) -> bool | None:
        if not await super().authenticate(session=session):
            return False
        allowed: dict[str, list[str]] = self._get_config_option("client_ids", {}) or {}
        user = session.username or ""
        expected = allowed.get(user, [user])
        if session.client_id not in expected:
            log.warning(
                "embedded broker refused user %r connecting as client id %r: it may only use %s",
                user,
                session.client_id,
                ", ".join(repr(c) for c in expected),
            )
            return False
        return True

    @dataclass
    class Config:
        """The password file, and the client ids of users that are not devices."""

        password_file: str | Path | None = None
        client_ids: dict[str, list[str]] = field(default_factory=dict)
