"""llama.cpp through llama-cpp-python: GGUF chat models on CPU, or GPU layers on Jetson."""

import hashlib
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported when a model is loaded, not with the agent
    import numpy as np
    import numpy.typing as npt

from edge_agent.runtimes.base import (
    ChatMessage,
    ChatRequest,
    Completion,
    CompletionChunk,
    RuntimeLoadError,
)


def file_sha256(path: Path) -> str:
    """Hash a model file in 1 MiB blocks: models never need to fit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _StepLogprobs:
    """A logits processor that records, per sampling step, the log-probability of the most
    likely token (the chosen one under greedy decoding) and leaves the logits unchanged."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(
        self, input_ids: "npt.NDArray[np.intc]", scores: "npt.NDArray[np.single]"
    ) -> "npt.NDArray[np.single]":
        import numpy as np

        top = float(scores.max())
        total = float(np.exp(scores - top, dtype=np.float64).sum())
        self.values.append(-math.log(total))  # log softmax of the top logit
        return scores


class LlamaCppRuntime:
    """One GGUF model, loaded once and pinned resident, warmed up before first use."""

    runtime_name = "llama.cpp"

    def __init__(
        self,
        model_name: str,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int = 0,
        mlock: bool = False,
    ) -> None:
        self.model_name = model_name
        self.path = path
        if not path.is_file():
            raise RuntimeLoadError(f"model file {path} does not exist")
        try:
            from llama_cpp import Llama
        except ImportError as e:  # the agent still runs; the local tier is just unhealthy
            raise RuntimeLoadError(f"llama-cpp-python is not installed: {e}") from e
        self.sha256 = file_sha256(path)
        try:
            self._llama: Any = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_gpu_layers=n_gpu_layers,
                use_mlock=mlock,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise RuntimeLoadError(f"llama.cpp could not load {path.name}: {e}") from e
        # llama.cpp contexts are not safe for concurrent use; requests queue here.
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Run one tiny completion so the first real request does not pay for page-ins."""
        self.complete(ChatRequest(messages=(ChatMessage("user", "hi"),), max_tokens=1))

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        kwargs: dict[str, Any] = {
            "messages": messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": list(request.stop) or None,
        }
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.json_schema is not None:
            # llama-cpp-python turns the schema into a GBNF grammar: valid by construction.
            kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
        return kwargs

    def complete(self, request: ChatRequest) -> Completion:
        kwargs = self._kwargs(request)
        steps = _StepLogprobs() if request.logprobs else None
        if steps is not None:
            from llama_cpp import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([steps])
        with self._lock:
            result = self._llama.create_chat_completion(**kwargs, stream=False)
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            token_logprobs=tuple(steps.values) if steps is not None else (),
        )

    def stream(self, request: ChatRequest) -> Iterator[CompletionChunk]:
        with self._lock:
            for part in self._llama.create_chat_completion(**self._kwargs(request), stream=True):
                choice = part["choices"][0]
                delta = choice.get("delta") or {}
                text = delta.get("content") or ""
                finish = choice.get("finish_reason")
                if text or finish:
                    yield CompletionChunk(text=text, finish_reason=finish)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's own vocabulary (for context budgets)."""
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def close(self) -> None:
        with self._lock:
            close = getattr(self._llama, "close", None)
            if close is not None:
                close()
