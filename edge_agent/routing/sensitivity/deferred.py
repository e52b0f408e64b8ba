"""A detector built when it is first asked: the agent's router holds one of these.

Building a :class:`~edge_agent.routing.sensitivity.scanner.SensitivityDetector` imports
RE2, phonenumbers and python-stdnum and compiles the rule set: about 8 MiB that an agent
with nothing to route (no model loaded, no remote tier, nobody asking) would hold from
start (docs/benchmarks.md, agent memory). ``DeferredDetector`` builds it on the first
classification instead (once; 80-120 ms on the benchmark machine), or at once with
``build_now``: the agent builds it at start when the operator configured sensitivity
settings, so that a configuration the detector refuses still stops the agent at start.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from edge_agent.routing.sensitivity.config import SensitivityConfig
from edge_agent.routing.sensitivity.verdict import Verdict

if TYPE_CHECKING:
    from edge_agent.routing.sensitivity.scanner import SensitivityDetector


class DeferredDetector:
    """A :class:`SensitivityDetector` for ``config``, built once, by whichever comes first:
    ``build_now``, :meth:`classify`, :meth:`classify_messages` or :meth:`detector`.
    Thread-safe: concurrent first callers wait for the one build."""

    def __init__(self, config: SensitivityConfig, *, build_now: bool = False) -> None:
        self.config = config
        # The operator's extra patterns are Python ``re`` patterns: a bad one is refused here,
        # at construction, exactly as the detector itself would refuse it.
        for pattern in (
            *config.extra_restricted_patterns.values(),
            *config.extra_internal_patterns.values(),
        ):
            re.compile(pattern)
        self._lock = threading.Lock()
        self._built: SensitivityDetector | None = None
        if build_now:
            self.detector()

    @property
    def built(self) -> bool:
        """Whether the detector has been built (tests and the memory benchmark ask)."""
        return self._built is not None

    def detector(self) -> SensitivityDetector:
        """The detector, built now if it was not yet."""
        built = self._built
        if built is not None:
            return built
        with self._lock:
            if self._built is None:
                from edge_agent.routing.sensitivity.scanner import SensitivityDetector

                self._built = SensitivityDetector(self.config)
            return self._built

    def classify(self, text: str, *, every_finding: bool = False) -> Verdict:
        """:meth:`SensitivityDetector.classify`."""
        return self.detector().classify(text, every_finding=every_finding)

    def classify_messages(self, texts: Iterable[str], *, every_finding: bool = False) -> Verdict:
        """:meth:`SensitivityDetector.classify_messages`."""
        return self.detector().classify_messages(texts, every_finding=every_finding)


__all__ = ["DeferredDetector"]
