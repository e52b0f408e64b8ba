"""Signed model updates on the device: TUF-verified downloads into A/B slots, health-checked.

- ``decisions``: pure rules (compatibility, offline policy, verification, health, boots)
  and the error family everything here raises;
- ``fetch``: resumable, length-bounded, streaming-hashed HTTP downloads;
- ``client``: python-tuf's ngclient for metadata, ``fetch`` for artifacts;
- ``slots``: the A/B slot store with its atomic switch and crash-loop rollback;
- ``kinds``: chat models and perception classifiers: what differs (the smoke inference);
- ``manager``: the thread that turns the desired ``model`` key into a serving model.

See docs/model-install.md.
"""
