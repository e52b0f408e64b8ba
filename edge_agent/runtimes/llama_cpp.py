"""llama.cpp through llama-cpp-python: GGUF chat models on CPU, or GPU layers on Jetson."""

import hashlib
import math
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import replace
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


class _TokenTally:
    """The tokens one streamed llama.cpp completion went through (see ``_counting_tokens``)."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self.prompt_tokens = 0
        self.sampled: list[int] = []

    def completion_tokens(self) -> int:
        """Counted as llama-cpp-python counts a non-streamed completion's usage: every
        sampled token but an end-of-generation one, which ends the answer uncounted."""
        import llama_cpp

        if not self.sampled:
            return 0
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        ends = bool(llama_cpp.llama_vocab_is_eog(vocab, self.sampled[-1]))
        return len(self.sampled) - ends


@contextmanager
def _counting_tokens(llama: Any) -> Iterator[_TokenTally]:
    """Count the prompt and sampled tokens of the completion run inside the block.

    llama-cpp-python reports usage only for non-streamed completions; a stream's chunks
    are text, and several tokens may make one chunk (or none, held back as a possible stop
    string). Its completions draw their tokens from ``Llama.generate``, so for the block
    that method is wrapped on this instance to see them. Call on the model's own thread.
    """
    tally = _TokenTally(llama)
    generate = llama.generate

    def counted(tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
        tally.prompt_tokens = len(tokens)
        tally.sampled.clear()
        inner = generate(tokens, *args, **kwargs)
        try:
            for token in inner:
                tally.sampled.append(int(token))
                yield token
        finally:
            inner.close()

    llama.generate = counted
    try:
        yield tally
    finally:
        del llama.generate  # the class's method again


def llama_token_counter(llama: Any) -> Callable[[str], int]:
    """A token counter (``routing.context.TokenCounter``) backed by a ``llama_cpp.Llama``
    (``vocab_only=True`` is enough)."""

    def count(text: str) -> int:
        return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    return count


class LlamaCppRuntime:
    """One GGUF model, loaded once and pinned resident, warmed up before first use.

    Every call into llama.cpp — loading included — runs on one dedicated thread per model.
    The wheel's OpenMP keeps a thread team per calling thread: calls from the HTTP server's
    worker threads would each add a team, and once there are more OpenMP threads than
    cores they sleep at every barrier instead of spinning (measured: 1.5-1.8x slower per
    request). One thread also serializes requests, which a llama.cpp context needs anyway.
    """

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
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{model_name}")

        def load() -> Any:
            return Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_gpu_layers=n_gpu_layers,
                use_mlock=mlock,
                verbose=False,
            )

        try:
            self._llama: Any = self._worker.submit(load).result()
        except (ValueError, RuntimeError, OSError) as e:
            self._worker.shutdown(wait=False)
            raise RuntimeLoadError(f"llama.cpp could not load {path.name}: {e}") from e

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
        result = self._worker.submit(
            lambda: self._llama.create_chat_completion(**kwargs, stream=False)
        ).result()
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
        """Chunks as the model thread produces them; closing the iterator stops generation.
        The last chunk carries the request's token counts, as ``complete`` reports them."""
        kwargs = self._kwargs(request)
        chunks: queue.Queue[CompletionChunk | BaseException | None] = queue.Queue()
        cancelled = threading.Event()

        def produce() -> None:
            last = CompletionChunk(text="")
            try:
                with (
                    _counting_tokens(self._llama) as tally,
                    closing(self._llama.create_chat_completion(**kwargs, stream=True)) as parts,
                ):
                    # Closed here, on the model's thread, also when the client hung up.
                    for part in parts:
                        if cancelled.is_set():
                            return
                        choice = part["choices"][0]
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason")
                        if finish:  # held back until the count is known
                            last = CompletionChunk(text=text, finish_reason=finish)
                        elif text:
                            chunks.put(CompletionChunk(text=text))
                chunks.put(
                    replace(
                        last,
                        prompt_tokens=tally.prompt_tokens,
                        completion_tokens=tally.completion_tokens(),
                    )
                )
            except BaseException as e:  # handed to the consumer, raised there
                chunks.put(e)
            finally:
                chunks.put(None)

        self._worker.submit(produce)
        try:
            while (item := chunks.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's own vocabulary (for context budgets)."""
        return int(
            self._worker.submit(
                lambda: len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))
            ).result()
        )

    def close(self) -> None:
        def release() -> None:
            close = getattr(self._llama, "close", None)
            if close is not None:
                close()

        self._worker.submit(release).result()
        self._worker.shutdown(wait=True)
