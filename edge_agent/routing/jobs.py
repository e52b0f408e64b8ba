"""Asynchronous chat jobs: when no allowed tier can answer now, queue and answer later.

A client that sends ``Prefer: respond-async`` gets ``202`` and a job id instead of a
``503``; a worker thread retries the job when the tiers' breakers say it may (the same
routing, so the same sensitivity rules), until it succeeds or its time to live runs out.
Jobs live in memory only: request contents are never written to disk.

The worker runs under a ``Supervisor`` (the agent's): a crash of the loop is logged,
counted and restarted with backoff. A job whose attempt raises anything but
``NoTierAvailable`` is a defect met by that job, not a reason to stop the others: it is
finished as ``failed`` at once (retrying it would only meet the defect again).
"""

import logging
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from edge_agent.routing.router import NoTierAvailable, RoutedRequest, RoutedResult
from edge_agent.runtimes.base import ChatRequest
from shared.supervision import Supervisor

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "done", "expired", "cancelled", "failed"]


@dataclass
class Job:
    id: str
    routed: RoutedRequest
    created: float
    expires: float
    status: JobStatus = "queued"
    next_try: float = 0.0
    attempts: int = 0
    result: RoutedResult | None = None
    last_error: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class QueueFull(RuntimeError):
    pass


class JobQueue:
    """Bounded in-memory queue of chat jobs with one supervised worker thread."""

    def __init__(
        self,
        run: Callable[[RoutedRequest], RoutedResult],
        *,
        max_jobs: int = 100,
        ttl_s: float = 3600.0,
        keep_done_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._run = run
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.keep_done_s = keep_done_s
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # The agent's supervisor, or one of our own when the queue is used alone.
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor or Supervisor()
        self._started = False
        self.failed = 0  # jobs finished as failed (their attempt raised a defect)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._supervisor.spawn("chat-jobs", self._loop, stopping=self._stopping)

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._started:
            self._supervisor.join("chat-jobs", 5)
        if self._own_supervisor:
            self._supervisor.stop()

    def submit(self, routed: RoutedRequest, retry_after_s: float) -> Job:
        now = self._clock()
        with self._lock:
            self._forget_old(now)
            if sum(1 for j in self._jobs.values() if j.status == "queued") >= self.max_jobs:
                raise QueueFull(f"{self.max_jobs} jobs are already queued")
            job = Job(
                id=f"job-{uuid.uuid4().hex}",
                routed=routed,
                created=now,
                expires=now + self.ttl_s,
                next_try=now + retry_after_s,
            )
            self._jobs[job.id] = job
        self._wake.set()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != "queued":
                return False
            job.status = "cancelled"
            job.routed = RoutedRequest(ChatRequest(messages=(), max_tokens=1))  # drop the content
            job.finished.set()
            return True

    def _forget_old(self, now: float) -> None:
        for job_id in [
            j.id
            for j in self._jobs.values()
            if j.status != "queued" and now - j.expires > self.keep_done_s
        ]:
            del self._jobs[job_id]

    def run_due(self) -> int:
        """Try every queued job that is due; returns how many finished (tests call it)."""
        now = self._clock()
        with self._lock:
            due = [j for j in self._jobs.values() if j.status == "queued" and j.next_try <= now]
            for job in [j for j in self._jobs.values() if j.status == "queued"]:
                if now >= job.expires:
                    job.status = "expired"
                    job.finished.set()
        finished = 0
        for job in due:
            if job.status != "queued" or now >= job.expires:
                continue
            job.attempts += 1
            try:
                result = self._run(job.routed)
            except NoTierAvailable as e:
                job.last_error = str(e)
                job.next_try = self._clock() + e.retry_after_s
                continue
            except Exception as e:
                self._fail(job, e)
                continue
            with self._lock:
                if job.status == "queued":
                    job.result = result
                    job.status = "done"
                    job.expires = self._clock()
                    job.finished.set()
                    finished += 1
        return finished

    def _fail(self, job: Job, error: Exception) -> None:
        # The kind of error and where, never its message: that may quote the request.
        log.error(
            "chat job %s failed (%s):\n%s",
            job.id,
            type(error).__name__,
            "".join(traceback.format_tb(error.__traceback__)),
        )
        with self._lock:
            self.failed += 1
            if job.status == "queued":
                job.status = "failed"
                job.last_error = f"internal error ({type(error).__name__})"
                job.expires = self._clock()
                job.finished.set()

    def _next_wait(self) -> float:
        with self._lock:
            queued = [j.next_try for j in self._jobs.values() if j.status == "queued"]
        if not queued:
            return 5.0
        return max(0.05, min(5.0, min(queued) - self._clock()))

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stopping.is_set():
                return
            self.run_due()
