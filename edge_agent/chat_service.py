"""Chat completions behind the HTTP layer: admit, route, record, remember the session.

Built once when the agent starts (the router, its remote tiers and the sensitivity
detector with it) and handed to the HTTP app; nothing here knows HTTP. Blocking calls
(token counting, routing) are the caller's to run off the event loop.

Prompt contents are never logged; only counts and timings leave this module.
"""

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.config import AUTO_MODEL, AgentConfig
from edge_agent.model_registry import ModelRegistry
from edge_agent.routing.context import (
    ContextTooLarge,
    SessionStore,
    compact,
    policy_from_config,
)
from edge_agent.routing.policy import RouteHints
from edge_agent.routing.router import RoutedRequest, RoutedResult, RouteOutcome, Router
from edge_agent.routing.sensitivity import DeferredDetector, SensitivityConfig
from edge_agent.runtimes.base import ChatMessage, ChatRequest, CompletionChunk

if TYPE_CHECKING:
    from edge_agent.routing.remote import RemoteTier


def build_router(
    config: AgentConfig,
    models: ModelRegistry,
    *,
    on_alert: Callable[[str, dict[str, Any]], None],
    tier_veto: Callable[[str], str | None],
) -> Router:
    """The router over the registry's chat models and the configured remote tiers."""
    routing = config.routing
    remotes: dict[str, RemoteTier] = {}
    costs: dict[str, float] = {}
    for name in ("private", "cloud"):
        tier = getattr(config.tiers, name)
        if tier is not None:
            # httpx loads only with a remote tier configured (agent memory: issue 15).
            from edge_agent.routing import remote

            remotes[name] = remote.RemoteTier(name, tier)
            costs[name] = tier.cost_per_1k_input + tier.cost_per_1k_output
    settings = routing.sensitivity
    detector = DeferredDetector(
        SensitivityConfig(
            internal_keywords=(*SensitivityConfig().internal_keywords, *settings.internal_keywords),
            internal_domains=tuple(settings.internal_domains),
            extra_restricted_patterns=dict(settings.extra_restricted_patterns),
            # Routing needs the class, not every finding: stop at the first restricted one.
            stop_at_restricted=True,
        ),
        # Built by the first request (RE2 and the rule set: ~8 MiB an idle agent need not
        # hold), unless the operator configured rules: a refused one then stops the start.
        build_now=bool(
            settings.internal_keywords
            or settings.internal_domains
            or settings.extra_restricted_patterns
        ),
    )
    return Router(
        config=routing,
        detector=detector,
        local=models.chat,
        local_errors=models.load_errors,
        default_local=models.default_chat(),
        remotes=remotes,
        costs=costs,
        on_alert=on_alert,
        tier_veto=tier_veto,
    )


class ChatRecorder(Protocol):
    """Where requests are counted and recorded (the agent: outbox, windows, Prometheus)."""

    def count_request(self, *, error: bool = False, rejected: str | None = None) -> None: ...

    def record_inference(
        self,
        *,
        outcome: dict[str, Any],
        latency_ms: float,
        prompt_tokens: int,
        completion_tokens: int,
        stream: bool,
        status: str,
        task_class: str | None,
        local_model: str | None = None,
        app: str | None = None,
    ) -> None: ...


class ChatRefused(Exception):
    """A request refused before routing: the HTTP status, a message and an error code."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What the client asked of the answer (``max_tokens`` None: the model's default)."""

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None


@dataclass(slots=True)
class StreamTally:
    """What a stream sent so far: its text pieces, and the token counts its tier reported
    with the last chunk (None until then)."""

    pieces: list[str] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def add(self, chunk: CompletionChunk) -> None:
        if chunk.text:
            self.pieces.append(chunk.text)
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens: as the tier counted them, or, for a stream that
        ended before its count (cancelled, failed, a remote tier that sends none), 0 and
        the pieces sent (a local runtime sends about one piece per token)."""
        if self.prompt_tokens is not None and self.completion_tokens is not None:
            return self.prompt_tokens, self.completion_tokens
        return 0, len(self.pieces)


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One admitted request: what goes to the router, and what its record needs."""

    routed: RoutedRequest
    new: tuple[ChatMessage, ...]  # the client's messages, without the session's history
    local_model: str | None
    session_id: str | None
    stream: bool
    started: float  # time.perf_counter() when the request arrived
    # The local app's name from its API key (api.keys_file), None on an open API.
    app: str | None = None
    # The model name the client sent (an alias, "auto"), None if it named none.
    requested_model: str | None = None


class ChatService:
    """Admits, routes and records chat requests for one agent."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        models: ModelRegistry,
        router: Router,
        sessions: SessionStore,
        recorder: ChatRecorder,
    ) -> None:
        self.config = config
        self.models = models
        self.router = router
        self.sessions = sessions
        self._recorder = recorder

    def refuse(self, code: str) -> None:
        """Count a request refused before routing (``code``: its error code)."""
        self._recorder.count_request(error=True, rejected=code)

    def remote_models(self) -> set[str]:
        """Model names a remote tier or a routing rule answers to."""
        return {remote.model_name for remote in self.router.remotes.values()} | {
            rule.model for rule in self.router.rules if rule.model
        }

    def local_for(self, model: str | None) -> str | None:
        """The local model a request's ``model`` asks for: the model itself or the one its
        alias names; for ``auto`` the first loaded model; None when it names no local model
        (absent, or a remote tier's model: the default local model then). Refuses (404) a
        name that neither this device nor a tier answers to."""
        if model is None:
            return None
        local = self.models.resolve(model)
        if local == AUTO_MODEL:
            return self.models.auto_chat()
        if local is None and model not in self.remote_models():
            self.refuse("model_not_found")
            raise ChatRefused(
                404, f"model {model!r} is not served by this device", "model_not_found"
            )
        return local

    def admit(
        self,
        *,
        model: str | None,
        messages: tuple[ChatMessage, ...],
        params: SamplingParams,
        hints: RouteHints,
        session_id: str | None,
        stream: bool,
        started: float,
        app: str | None = None,
    ) -> ChatCall:
        """The request with the session's history, compacted to fit (blocking: counting
        tokens waits for the model's thread). Raises ``ChatRefused`` for a model name
        nothing answers to (404), or when the request cannot fit."""
        wanted = self.local_for(model)
        local_name = self.router.local_model(wanted)
        max_default = next(
            (m.max_tokens_default for m in self.config.models if m.name == local_name), 128
        )
        try:
            history = self._with_history(local_name, session_id, messages)
        except ContextTooLarge as e:
            self.refuse("context_length_exceeded")
            raise ChatRefused(400, str(e), "context_length_exceeded") from e
        request = ChatRequest(
            messages=history,
            max_tokens=params.max_tokens or max_default,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=params.stop,
            json_schema=params.json_schema,
        )
        # Redaction keeps a session's placeholders with the session, so a value keeps its
        # placeholder across the conversation (the history travels redacted the same way).
        # A request that does not ask for redaction still gets an existing map: its values
        # keep the request restricted wherever they appear.
        placeholders = None
        if session_id is not None and self.router.wants_redaction(hints):
            placeholders = self.sessions.placeholders(session_id)
        elif session_id is not None:
            placeholders = self.sessions.existing_placeholders(session_id)
        return ChatCall(
            routed=RoutedRequest(request, hints, wanted, placeholders),
            new=messages,
            local_model=local_name,
            session_id=session_id,
            stream=stream,
            started=started,
            app=app,
            requested_model=model,
        )

    def _with_history(
        self, local_name: str | None, session_id: str | None, new: tuple[ChatMessage, ...]
    ) -> tuple[ChatMessage, ...]:
        """The request's messages with the session's history, compacted to fit every tier.

        The budget is the smaller of the local model's context and ``remote_context_tokens``,
        counted with the local model's tokenizer (remote tokenizers are not on the device).
        """
        if session_id is None:
            return new
        history = self.sessions.history(session_id)
        system = next((m for m in new if m.role == "system"), None)
        fresh = [m for m in new if m.role != "system"]
        budget = self.router.config.remote_context_tokens
        model_cfg = next((m for m in self.config.models if m.name == local_name), None)
        if model_cfg is not None:
            budget = min(budget, model_cfg.n_ctx)
        runtime = self.models.chat.get(local_name or "")
        count_tokens = getattr(runtime, "count_tokens", None)
        counter = count_tokens if callable(count_tokens) else (lambda text: len(text) // 3 + 1)
        policy = policy_from_config(self.router.config.context)
        result = compact(system, history, fresh, budget_tokens=budget, count=counter, policy=policy)
        return result.messages

    # --- answering (blocking; ``NoTierAvailable`` goes to the caller) ----------------------
    def complete(self, call: ChatCall) -> RoutedResult:
        """Route and answer; the answer is recorded and joins the session."""
        result = self.router.complete(call.routed)
        self._recorder.count_request()
        completion, outcome = result.completion, result.outcome
        self.record(call, outcome, "ok", completion.prompt_tokens, completion.completion_tokens)
        if call.session_id is not None:
            self.sessions.append(
                call.session_id, [*call.new, ChatMessage("assistant", completion.text)]
            )
        return result

    def stream(self, call: ChatCall) -> tuple[RouteOutcome, Iterator[CompletionChunk]]:
        """Route and start streaming; ``stream_done`` records it once the stream ends."""
        outcome, chunks = self.router.stream(call.routed)
        self._recorder.count_request()
        return outcome, chunks

    def stream_done(
        self, call: ChatCall, outcome: RouteOutcome, status: str, tally: StreamTally
    ) -> None:
        """Record a finished stream; a complete answer joins the session."""
        prompt_tokens, completion_tokens = tally.tokens()
        self.record(call, outcome, status, prompt_tokens, completion_tokens)
        text = "".join(tally.pieces)
        if status == "ok" and call.session_id is not None:
            self.sessions.append(call.session_id, [*call.new, ChatMessage("assistant", text)])

    def unavailable(self, call: ChatCall) -> None:
        """Count and record a request no allowed tier could answer."""
        self._recorder.count_request(error=True)
        self.record(call, None, "unavailable", 0, 0)

    def queued(self, call: ChatCall) -> None:
        """Record a request queued as a job (counted neither as served nor as an error)."""
        self.record(call, None, "queued", 0, 0)

    def record(
        self,
        call: ChatCall,
        outcome: RouteOutcome | None,
        status: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        self._recorder.record_inference(
            outcome={
                **(outcome.telemetry() if outcome else {"route": None}),
                "requested_model": call.requested_model,
            },
            latency_ms=(time.perf_counter() - call.started) * 1000,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            stream=call.stream,
            status=status,
            task_class=call.routed.hints.task_class,
            local_model=call.local_model,
            app=call.app,
        )
