"""Synthetic chat traffic for the demo's devices, so the console has something to show.

One background thread sends short chat completions to the agents' OpenAI-compatible APIs
in turn, with a mix of task classes and prompts (some carry personal data, which the
agents' routers keep on the device). Failures are counted, never raised: the demo goes on
whether or not an agent answers. The one call to the controller (the drift baseline) goes
through its API client (``controller/api_client.py``).
"""

import itertools
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx

from controller.api_client import ApiError, Target, request_json

log = logging.getLogger(__name__)

# (task class, prompt): short prompts, a few tokens of answer each.
PROMPTS: tuple[tuple[str, str], ...] = (
    ("chat", "Say hello to the operator in five words."),
    ("summarize", "Summarize: the conveyor stopped twice this morning, both times at belt 3."),
    ("classify", "Is this a complaint or a question: 'why is the line slow today?'"),
    ("chat", "My card number is 4111 1111 1111 1111, is it stored anywhere?"),
    ("summarize", "Summarize: temperature in bay 2 rose from 21 C to 24 C in an hour."),
    ("chat", "Email jane.doe@posteo.de the shift report, please."),
)


@dataclass(frozen=True)
class DriftBaseline:
    """Where to set the demo model's drift reference once traffic has produced sketches
    (a real fleet is baselined by its rollouts or its first day of data; the demo cannot
    wait a day)."""

    controller_url: str
    token: str
    model: str
    after_requests: int = 20


class DemoTraffic:
    """Round-robin requests to ``endpoints`` (device id -> base URL), one every
    ``interval_s`` seconds, until ``stop()``."""

    def __init__(
        self,
        endpoints: dict[str, str],
        *,
        interval_s: float = 3.0,
        baseline: DriftBaseline | None = None,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.interval_s = interval_s
        self.baseline = baseline
        self.baseline_set = False
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-traffic", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=35)

    def _run(self) -> None:
        targets = itertools.cycle(sorted(self.endpoints.items()))
        prompts = itertools.cycle(PROMPTS)
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(self.interval_s):
                device_id, url = next(targets)
                task_class, prompt = next(prompts)
                try:
                    response = client.post(
                        f"{url}/v1/chat/completions",
                        json={
                            "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": 8,
                            "temperature": 0,
                        },
                        headers={"X-Task-Class": task_class},
                    )
                    self.sent += 1
                    if response.status_code >= 400:
                        self.failed += 1
                except httpx.HTTPError as e:
                    self.failed += 1
                    log.debug("demo request to %s failed: %s", device_id, type(e).__name__)
                b = self.baseline
                if b and not self.baseline_set and self.sent >= b.after_requests:
                    self.baseline_set = self._set_baseline(b)

    def _set_baseline(self, b: DriftBaseline) -> bool:
        """Reference = the model's sketches so far; False (retried later) until the
        controller has rolled some up."""
        start = datetime.now(UTC) - timedelta(hours=1)
        try:
            request_json(
                Target(url=b.controller_url.rstrip("/"), token=b.token),
                "POST",
                f"/api/drift/{quote(b.model, safe='')}/reference",
                body={"window_start": start.isoformat()},
                timeout=30,
            )
        except ApiError:
            return False
        return True
