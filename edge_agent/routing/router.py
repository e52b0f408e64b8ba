"""The router: classify, decide, then run the plan with cascade, breakers and fallbacks.

Blocking code, run from a worker thread by the HTTP layer. Nothing here logs or returns
request contents: outcomes carry tiers, reasons, categories and numbers only.

Reversible redaction (``redaction.py``): when a restricted request asks for it (its task
class is in ``routing.redact.task_classes``, or ``X-Redact: true``), every finding is
redactable and certain, the findings are replaced by placeholders in a copy of the request
that only the remote tiers get; the policy decides by the level of that copy (scanned
again), and the answer's placeholders are restored here, before it leaves the router. The
local tier always gets the original request.
"""

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import TYPE_CHECKING, Any

from edge_agent.config import RoutingConfig
from edge_agent.routing import redaction
from edge_agent.routing.breaker import CircuitBreaker
from edge_agent.routing.cascade import CascadeGuard, structured_confidence
from edge_agent.routing.latency import LatencyWindow
from edge_agent.routing.policy import (
    TIERS,
    Decision,
    RouteHints,
    Rule,
    TierView,
    decide,
    effective_level,
)
from edge_agent.routing.sensitivity import CATEGORY_LEVELS, DeferredDetector, Level, Verdict
from edge_agent.routing.tier_errors import TierError
from edge_agent.runtimes.base import ChatRequest, ChatRuntime, Completion, CompletionChunk

if TYPE_CHECKING:  # the router only calls the tiers it is given: no HTTP client here
    from edge_agent.routing.remote import RemoteTier
    from edge_agent.routing.sensitivity.scanner import SensitivityDetector

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoutedRequest:
    request: ChatRequest
    hints: RouteHints = field(default_factory=RouteHints)
    model: str | None = None  # the local model the client named, if any
    # Where redaction keeps its placeholders: the session's map (None: one per request).
    placeholders: redaction.PlaceholderMap | None = None


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    """Where a request went and why; safe to log and to send as telemetry."""

    tier: str
    model: str
    runtime: str
    reason: str
    degraded: bool
    level: Level
    categories: tuple[str, ...]
    plan: tuple[str, ...]
    cascaded: bool = False
    escalated: bool = False
    confidence: float | None = None
    attempts: tuple[tuple[str, str], ...] = ()  # (tier, why it did not answer)
    # Redaction asked for and the request restricted: "applied" or why it was not
    # (uncertain:<category>, not_redactable:<category>, incomplete, refused); else None.
    redaction: str | None = None
    # (category, spans replaced) in the request the answering tier got; empty when the
    # answer came from the local tier or nothing was redacted.
    redacted: tuple[tuple[str, int], ...] = ()

    @property
    def redacted_count(self) -> int:
        """Spans replaced in what the answering tier received."""
        return sum(n for _, n in self.redacted)

    def telemetry(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.redaction is not None:  # counts by category, never values
            extra = {"redaction": self.redaction, "redacted": dict(self.redacted)}
        return {
            **extra,
            "route": self.tier,
            "model": self.model,
            "runtime": self.runtime,
            "reason": self.reason,
            "degraded": self.degraded,
            "sensitivity": self.level.label,
            "categories": list(self.categories),
            "plan": list(self.plan),
            "cascaded": self.cascaded,
            "escalated": self.escalated,
            "confidence": None if self.confidence is None else round(self.confidence, 4),
            "attempts": [list(a) for a in self.attempts],
        }


@dataclass(frozen=True, slots=True)
class RoutedResult:
    completion: Completion
    outcome: RouteOutcome


@dataclass(frozen=True, slots=True)
class Redaction:
    """A restricted request made fit to leave: the copy the remote tiers get, the map that
    restores their answers, what was replaced, and what the copy was classified as."""

    request: ChatRequest
    placeholders: redaction.PlaceholderMap
    counts: tuple[tuple[str, int], ...]  # (category, spans replaced)
    verdict: Verdict  # of the redacted copy: its level, the findings of the changed texts


@dataclass(frozen=True, slots=True)
class Planned:
    """The decision for a request, with its redaction when one was applied."""

    decision: Decision
    categories: tuple[str, ...]
    redaction: Redaction | None = None
    redaction_status: str | None = None  # RouteOutcome.redaction

    def remote_request(self, original: ChatRequest) -> ChatRequest:
        """What a remote tier gets: the redacted copy when there is one."""
        return self.redaction.request if self.redaction is not None else original

    def outcome_fields(self, tier: str) -> dict[str, Any]:
        """The RouteOutcome fields this plan sets for an answer from ``tier``."""
        counts = self.redaction.counts if self.redaction is not None and tier != "local" else ()
        return {
            "level": self.decision.level,
            "categories": self.categories,
            "plan": self.decision.plan,
            "cascaded": self.decision.cascade,
            "redaction": self.redaction_status,
            "redacted": counts,
        }


class NoTierAvailable(RuntimeError):
    """Nothing allowed for this request can answer now."""

    def __init__(
        self,
        retry_after_s: int,
        level: Level,
        excluded: tuple[tuple[str, str], ...],
        attempts: tuple[tuple[str, str], ...],
    ) -> None:
        why = ", ".join(f"{t}: {r}" for t, r in (*excluded, *attempts)) or "no tier configured"
        super().__init__(f"no tier allowed for {level.label} data can answer ({why})")
        self.retry_after_s = retry_after_s
        self.level = level
        self.excluded = excluded
        self.attempts = attempts


class Router:
    """Routes chat requests across the local runtimes and the remote tiers."""

    def __init__(
        self,
        *,
        config: RoutingConfig,
        detector: "SensitivityDetector | DeferredDetector",
        local: Mapping[str, ChatRuntime],
        local_errors: Mapping[str, str],
        default_local: str | None,
        remotes: Mapping[str, "RemoteTier"],
        costs: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_alert: Callable[[str, dict[str, Any]], None] | None = None,
        tier_veto: Callable[[str], str | None] | None = None,
    ) -> None:
        self.config = config
        self.floor = Level.parse(config.sensitivity.minimum)
        self.redact_classes = frozenset(config.redact.task_classes)
        # Asked per remote tier on every decision: a reason refuses the tier (attestation
        # quarantine refuses the cloud tier), None leaves it to the breaker.
        self._tier_veto = tier_veto or (lambda tier: None)
        self.detector = detector
        self.local = local
        self.local_errors = local_errors
        self.default_local = default_local
        self.remotes = dict(remotes)
        self.costs = dict(costs or {})
        self._on_alert = on_alert or (lambda name, body: None)
        b = config.breaker
        self.breakers = {
            name: CircuitBreaker(
                failure_threshold=b.failure_threshold,
                window_s=b.window_s,
                open_s=b.open_s,
                max_open_s=b.max_open_s,
                clock=clock,
            )
            for name in self.remotes
        }
        self.latency = {name: LatencyWindow(config.latency_window) for name in TIERS}
        c = config.cascade
        self.guard = CascadeGuard(
            max_share=c.max_escalation_share,
            window_s=c.window_s,
            min_requests=c.min_requests,
            cooldown_s=c.cooldown_s,
            clock=clock,
        )
        self.rules = tuple(Rule(r.task_class, r.tier, r.model) for r in config.rules)

    # --- deciding ------------------------------------------------------------------------
    def local_model(self, requested: str | None) -> str | None:
        if requested is not None and (requested in self.local or requested in self.local_errors):
            return requested
        return self.default_local

    def views(self, local_model: str | None) -> dict[str, TierView]:
        views: dict[str, TierView] = {}
        if local_model is not None:
            healthy = local_model in self.local
            views["local"] = TierView(
                "local",
                healthy,
                None if healthy else f"local_unhealthy:{self.local_errors.get(local_model, '')}",
                self.latency["local"].p95(),
                0.0,
            )
        for name in self.remotes:
            veto = self._tier_veto(name)
            if veto is not None:
                views[name] = TierView(name, False, veto, self.latency[name].p95())
                continue
            breaker = self.breakers[name]
            views[name] = TierView(
                name,
                breaker.available(),
                None if breaker.available() else f"breaker_open:{breaker.last_error}",
                self.latency[name].p95(),
                self.costs.get(name, 0.0),
            )
        return views

    def wants_redaction(self, hints: RouteHints) -> bool:
        """X-Redact decides when sent; otherwise whether the task class is configured."""
        if hints.redact is not None:
            return hints.redact
        return hints.task_class is not None and hints.task_class in self.redact_classes

    def _redact(
        self, routed: RoutedRequest, texts: list[str], full: Verdict
    ) -> tuple[str, Redaction | None]:
        """The redacted copy of the request (``full``: every finding) and the level of what
        is left, or why there is none."""
        blocker = redaction.redaction_blocker(full.findings)
        if blocker is not None:
            return blocker, None
        placeholders = routed.placeholders
        if placeholders is None:  # (an empty map is falsy: no `or` here)
            placeholders = redaction.PlaceholderMap()
        try:
            redacted = placeholders.redact(texts, full.findings)
        except redaction.RedactionRefused:
            return "refused", None
        # Fail closed: what was changed is classified again, as a request of its own. The
        # other texts keep their findings, none restricted (those were all replaced).
        changed = set(redacted.changed)
        after = self.detector.classify_messages(redacted.texts[i] for i in sorted(changed))
        left = max(
            (
                CATEGORY_LEVELS.get(f.category, Level.RESTRICTED)
                for f in full.findings
                if f.message not in changed
            ),
            default=Level.PUBLIC,
        )
        after = Verdict(max(after.level, left), after.findings)
        if after.level is Level.RESTRICTED:
            return "incomplete", None
        messages = tuple(
            replace(m, content=text)
            for m, text in zip(routed.request.messages, redacted.texts, strict=True)
        )
        copy = replace(routed.request, messages=messages)
        counts = tuple(sorted(redacted.counts.items()))
        return "applied", Redaction(copy, placeholders, counts, after)

    def decide(self, routed: RoutedRequest) -> tuple[Decision, tuple[str, ...]]:
        """The decision for a request and its categories (:meth:`plan` without the copy)."""
        planned = self.plan(routed)
        return planned.decision, planned.categories

    def plan(self, routed: RoutedRequest) -> Planned:
        """Classify every message that would leave (history included), redact when asked
        and possible, then decide."""
        texts = [m.content for m in routed.request.messages]
        hints = routed.hints
        may_redact = bool(
            self.wants_redaction(hints)
            and not hints.force_local
            and hints.declared is not Level.RESTRICTED
            and self.floor is not Level.RESTRICTED
            and self.remotes
        )
        # Redaction needs every finding: one full scan instead of the routing scan (which
        # may stop at the first restricted finding).
        verdict = self.detector.classify_messages(texts, every_finding=may_redact)
        if routed.placeholders is not None and verdict.level is not Level.RESTRICTED:
            # A value the session's redaction already knew is personal wherever it appears.
            known = routed.placeholders.findings(texts)
            if known:
                verdict = Verdict(Level.RESTRICTED, (*verdict.findings, *known))
        status: str | None = None
        red: Redaction | None = None
        if may_redact and verdict.level is Level.RESTRICTED:
            status, red = self._redact(routed, texts, verdict)
        detected = red.verdict.level if red is not None else verdict.level
        level = effective_level(detected, hints.declared)
        if hints.latency_budget_ms is None and self.config.default_latency_budget_ms:
            hints = replace(hints, latency_budget_ms=self.config.default_latency_budget_ms)
        decision = decide(
            level,
            hints,
            self.views(self.local_model(routed.model)),
            self.rules,
            cascade_enabled=self.config.cascade.enabled and self.guard.active,
            cascade_tasks=self.config.cascade.task_classes,
            floor=self.floor,
        )
        return Planned(decision, verdict.categories, red, status)

    def _unavailable(self, decision: Decision, attempts: list[tuple[str, str]]) -> NoTierAvailable:
        waits = [
            self.breakers[t].retry_after_s()
            for t in decision.plan
            if t in self.breakers and self.breakers[t].retry_after_s() > 0
        ]
        retry = int(min(waits)) + 1 if waits else self.config.retry_after_s
        return NoTierAvailable(retry, decision.level, decision.excluded, tuple(attempts))

    # --- running -------------------------------------------------------------------------
    def _remote_failed(self, tier: str, error: TierError) -> None:
        if error.counts_against_breaker:
            self.breakers[tier].record_failure(error.kind, retry_after_s=error.retry_after_s)
        log.warning("tier %s failed: %s", tier, error.kind)

    def _complete_remote(
        self, tier: str, planned: Planned, request: ChatRequest, attempts: list[tuple[str, str]]
    ) -> Completion | None:
        """One remote tier's answer (placeholders restored), or None after a failure."""
        remote = self.remotes[tier]
        if not self.breakers[tier].allow():
            attempts.append((tier, "breaker_open"))
            return None
        started = time.perf_counter()
        try:
            completion = remote.complete(
                planned.remote_request(request), model=planned.decision.model_for(tier)
            )
        except TierError as e:
            self._remote_failed(tier, e)
            attempts.append((tier, e.kind))
            return None
        self.breakers[tier].record_success()
        self.latency[tier].add((time.perf_counter() - started) * 1000)
        if planned.redaction is not None:
            text = planned.redaction.placeholders.restore(completion.text)
            completion = replace(completion, text=text)
        return completion

    def complete(self, routed: RoutedRequest) -> RoutedResult:
        planned = self.plan(routed)
        decision = planned.decision
        if not decision.plan:
            raise self._unavailable(decision, [])
        local_name = self.local_model(routed.model)
        attempts: list[tuple[str, str]] = []
        kept: tuple[Completion, float] | None = None  # a low-confidence local answer
        threshold = self.config.cascade.threshold

        def outcome(tier: str, model: str, runtime: str, **extra: Any) -> RouteOutcome:
            served_first = tier == decision.plan[0]
            reason = (
                decision.reason if served_first else f"fallback:{attempts[0][0]}:{attempts[0][1]}"
            )
            if extra.get("escalated") and tier != "local":
                reason = "cascade:low_confidence"
            base: dict[str, Any] = {
                "reason": reason,
                "degraded": decision.degraded or (not served_first and not extra.get("escalated")),
                "attempts": tuple(attempts),
                **planned.outcome_fields(tier),
            }
            base.update(extra)
            return RouteOutcome(tier=tier, model=model, runtime=runtime, **base)

        for index, tier in enumerate(decision.plan):
            has_next = index + 1 < len(decision.plan)
            if tier == "local":
                assert local_name is not None
                runtime = self.local[local_name]
                cascade = decision.cascade and has_next
                request = replace(routed.request, logprobs=cascade or routed.request.logprobs)
                started = time.perf_counter()
                try:
                    completion = runtime.complete(request)
                except (RuntimeError, ValueError, OSError) as e:
                    attempts.append(("local", f"error:{type(e).__name__}"))
                    log.error("local tier failed: %s", type(e).__name__)
                    continue
                self.latency["local"].add((time.perf_counter() - started) * 1000)
                if cascade:
                    conf = structured_confidence(
                        completion.text, completion.token_logprobs, request.json_schema
                    )
                    escalate = conf < threshold
                    if self.guard.record(escalate):
                        self._on_alert(
                            "cascade_disabled",
                            {
                                "escalation_share": round(self.guard.escalation_share(), 3),
                                "cooldown_s": self.guard.cooldown_s,
                            },
                        )
                    if escalate:
                        kept = (completion, conf)
                        attempts.append(("local", f"low_confidence:{conf:.2f}"))
                        continue
                    return RoutedResult(
                        completion,
                        outcome("local", local_name, runtime.runtime_name, confidence=conf),
                    )
                return RoutedResult(completion, outcome("local", local_name, runtime.runtime_name))
            answer = self._complete_remote(tier, planned, routed.request, attempts)
            if answer is None:
                continue
            remote = self.remotes[tier]
            model = decision.model_for(tier) or remote.model_name
            return RoutedResult(
                answer,
                outcome(
                    tier,
                    model,
                    remote.runtime_name,
                    escalated=kept is not None,
                    confidence=kept[1] if kept else None,
                ),
            )
        if kept is not None and local_name is not None:
            # Escalation failed everywhere: the local answer is better than none.
            completion, conf = kept
            result = outcome(
                "local", local_name, self.local[local_name].runtime_name, confidence=conf
            )
            return RoutedResult(
                completion, replace(result, reason="cascade:escalation_failed", degraded=True)
            )
        raise self._unavailable(decision, attempts)

    def stream(self, routed: RoutedRequest) -> tuple[RouteOutcome, Iterator[CompletionChunk]]:
        """Start a stream on the first tier that produces a first chunk.

        Failover is allowed until the first token: a tier that fails before it is skipped.
        Streams are not cascaded (confidence is known only at the end of the answer).
        A remote tier's placeholders are restored as the chunks pass (:func:`restored`).
        """
        planned = self.plan(routed)
        decision = planned.decision
        if not decision.plan:
            raise self._unavailable(decision, [])
        local_name = self.local_model(routed.model)
        attempts: list[tuple[str, str]] = []
        for tier in decision.plan:
            if tier == "local":
                assert local_name is not None
                runtime: ChatRuntime = self.local[local_name]
                model, runtime_name = local_name, runtime.runtime_name
                chunks = runtime.stream(routed.request)
            else:
                if not self.breakers[tier].allow():
                    attempts.append((tier, "breaker_open"))
                    continue
                remote = self.remotes[tier]
                model = decision.model_for(tier) or remote.model_name
                runtime_name = remote.runtime_name
                chunks = remote.stream(
                    planned.remote_request(routed.request), model=decision.model_for(tier)
                )
                if planned.redaction is not None:
                    chunks = restored(chunks, planned.redaction.placeholders.restorer())
            try:
                first = next(chunks, None)
            except TierError as e:
                self._remote_failed(tier, e)
                attempts.append((tier, e.kind))
                continue
            except (RuntimeError, ValueError, OSError) as e:
                attempts.append((tier, f"error:{type(e).__name__}"))
                continue
            if tier in self.breakers:
                self.breakers[tier].record_success()
            served_first = tier == decision.plan[0]
            result = RouteOutcome(
                tier=tier,
                model=model,
                runtime=runtime_name,
                reason=decision.reason
                if served_first
                else f"fallback:{attempts[0][0]}:{attempts[0][1]}",
                degraded=decision.degraded or not served_first,
                attempts=tuple(attempts),
                **planned.outcome_fields(tier),
            )
            return result, chain([first] if first is not None else [], chunks)
        raise self._unavailable(decision, attempts)


def restored(
    chunks: Iterator[CompletionChunk], restorer: redaction.StreamRestorer
) -> Iterator[CompletionChunk]:
    """``chunks`` with their placeholders restored; a placeholder split across chunks is
    held back until it is whole (or cannot be one), what is held goes out with the chunk
    that ends the answer, or in a last chunk of its own."""
    for chunk in chunks:
        text = restorer.feed(chunk.text)
        if chunk.finish_reason is not None:
            text += restorer.flush()
        if text != chunk.text:
            chunk = replace(chunk, text=text)
        if chunk.text or chunk.finish_reason or chunk.completion_tokens is not None:
            yield chunk
    rest = restorer.flush()
    if rest:
        yield CompletionChunk(text=rest)
