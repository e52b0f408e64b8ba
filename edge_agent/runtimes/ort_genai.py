"""onnxruntime-genai: chat models exported as an ONNX folder (``genai_config.json`` + tokenizer).

The folder is what ``onnxruntime_genai.models.builder`` (or Olive) writes: ``genai_config.json``,
one or more ``.onnx`` files with their external data, and a Hugging Face tokenizer.

Prompts use the model's own chat template when its tokenizer provides one. Otherwise the
fallback is plain text, one line per message, ending with the assistant's turn::

    System: <content>
    User: <content>
    Assistant:
"""

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.runtimes.base import (
    ChatMessage,
    ChatRequest,
    Completion,
    CompletionChunk,
    RuntimeLoadError,
)
from shared.digests import folder_sha256
from shared.json_guard import loads_bounded

# genai_config.json comes with a published model archive; real ones are a few KiB.
MAX_GENAI_CONFIG_BYTES = 1024 * 1024
# ONNX Runtime execution provider names (what the hardware probe reports) -> the names
# onnxruntime-genai's Config.append_provider takes. CPU needs no entry: it is the fallback.
GENAI_PROVIDERS = {
    "CUDAExecutionProvider": "cuda",
    "DmlExecutionProvider": "dml",
    "QNNExecutionProvider": "QNN",
    "OpenVINOExecutionProvider": "OpenVINO",
    "WebGpuExecutionProvider": "WebGPU",
    "NvTensorRTRTXExecutionProvider": "NvTensorRtRtx",
    "VitisAIExecutionProvider": "VitisAI",
}

_FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def fallback_prompt(messages: tuple[ChatMessage, ...]) -> str:
    """The documented plain-text prompt for models whose tokenizer has no chat template."""
    lines = [f"{_FALLBACK_ROLES[m.role]}: {m.content}" for m in messages]
    lines.append("Assistant:")
    return "\n".join(lines)


def _log_softmax_at(logits: np.ndarray, index: int) -> float:
    """Natural-log probability of ``index`` under the softmax of ``logits`` (float64 math)."""
    row = logits.astype(np.float64).reshape(-1)
    peak = float(row.max())
    log_total = peak + float(np.log(np.exp(row - peak).sum()))
    return min(0.0, float(row[index]) - log_total)


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


@dataclass(frozen=True, slots=True)
class Generation:
    """Everything one request produced, in token ids as well as text (tests pin the ids)."""

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]
    text: str
    finish_reason: str


class _Run:
    """Mutable tally of one generation, filled in while its chunks are produced."""

    def __init__(self, prompt_ids: tuple[int, ...]) -> None:
        self.prompt_ids = prompt_ids
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text: list[str] = []
        self.finish_reason = "length"

    def result(self) -> Generation:
        return Generation(
            prompt_ids=self.prompt_ids,
            token_ids=tuple(self.token_ids),
            token_logprobs=tuple(self.logprobs),
            text="".join(self.text),
            finish_reason=self.finish_reason,
        )


class OrtGenaiRuntime:
    """One onnxruntime-genai model folder, loaded once, warmed up before first use."""

    runtime_name = "ort-genai"

    def __init__(
        self, model_name: str, folder: Path, *, providers: list[str] | None = None
    ) -> None:
        self.model_name = model_name
        self.folder = folder
        if not folder.is_dir():
            raise RuntimeLoadError(f"model folder {folder} does not exist")
        config_path = folder / "genai_config.json"
        if not config_path.is_file():
            raise RuntimeLoadError(f"model folder {folder} has no genai_config.json")
        try:
            with config_path.open("rb") as f:
                data = f.read(MAX_GENAI_CONFIG_BYTES + 1)
            config = loads_bounded(data, max_bytes=MAX_GENAI_CONFIG_BYTES)
            model_config = config["model"]
            self.context_length = int(model_config["context_length"])
            self.vocab_size = int(model_config["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RuntimeLoadError(f"{config_path} is not a usable genai config: {e!r}") from e
        try:
            import onnxruntime_genai as og
        except ImportError as e:  # the agent still runs; the local tier is just unhealthy
            raise RuntimeLoadError(f"onnxruntime-genai is not installed: {e}") from e
        self._og: Any = og
        self.sha256 = folder_sha256(folder)
        self.providers = self._genai_providers(providers)
        try:
            og_config = og.Config(str(folder))
            if providers is not None:
                og_config.clear_providers()
                for name in self.providers:
                    og_config.append_provider(name)
            self._model: Any = og.Model(og_config)
            self._tokenizer: Any = og.Tokenizer(self._model)
        except (RuntimeError, ValueError, OSError) as e:
            raise RuntimeLoadError(f"onnxruntime-genai could not load {folder.name}: {e}") from e
        self.eos_token_ids = frozenset(int(t) for t in self._tokenizer.eos_token_ids)
        self.device_type = str(self._model.device_type)
        # One generator at a time: requests queue here instead of competing for cores and memory.
        self._lock = threading.Lock()

    @staticmethod
    def _genai_providers(providers: list[str] | None) -> list[str]:
        """The first provider in ``providers`` that onnxruntime-genai can drive; [] means CPU."""
        for name in providers or ():
            if name in GENAI_PROVIDERS:
                return [GENAI_PROVIDERS[name]]
        return []

    def warm_up(self) -> None:
        """Run one tiny completion so the first real request does not pay for page-ins."""
        self.complete(ChatRequest(messages=(ChatMessage("user", "hi"),), max_tokens=1))

    def prompt_text(self, messages: tuple[ChatMessage, ...]) -> str:
        """The prompt: the model's chat template, or the plain-text fallback without one.

        A template the tokenizer cannot render for these messages (some refuse a system
        message) also gets the fallback rather than failing the request.
        """
        payload = json.dumps([{"role": m.role, "content": m.content} for m in messages])
        try:
            return str(self._tokenizer.apply_chat_template(payload, add_generation_prompt=True))
        except RuntimeError:  # "Empty chat template." (or one the engine cannot render)
            return fallback_prompt(messages)

    def prompt_ids(self, messages: tuple[ChatMessage, ...]) -> tuple[int, ...]:
        """Token ids of the prompt for ``messages``, exactly as a request would feed them."""
        encoded = self._tokenizer.encode(self.prompt_text(messages))
        return tuple(int(t) for t in np.asarray(encoded).reshape(-1))

    def _params(self, request: ChatRequest, prompt_len: int) -> Any:
        if request.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if prompt_len >= self.context_length:
            raise ValueError(
                f"prompt is {prompt_len} tokens; {self.model_name} has a context of "
                f"{self.context_length}"
            )
        options: dict[str, Any] = {
            "max_length": min(prompt_len + request.max_tokens, self.context_length),
            "min_length": 0,
            "num_beams": 1,
            "repetition_penalty": 1.0,
        }
        if request.temperature > 0:
            options.update(
                do_sample=True,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=self.vocab_size,  # no top-k cut: top_p and temperature decide
            )
        else:
            options.update(do_sample=False, top_k=1)
        if request.seed is not None:
            options["random_seed"] = request.seed
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(**options)
        if request.json_schema is not None:
            try:
                params.set_guidance("json_schema", json.dumps(request.json_schema))
            except RuntimeError as e:
                raise ValueError(f"{self.model_name} cannot constrain output: {e}") from e
        return params

    def _chunks(self, request: ChatRequest, run: _Run) -> Iterator[str]:
        """Generate, yielding text as soon as no stop string can still claim it.

        Call with the lock held. ``run`` is filled in as tokens arrive; its text is the
        concatenation of what was yielded, so streaming and completing agree by construction.
        Log-probabilities are the model's own (log-softmax of the raw logits), also when a
        ``json_schema`` masks what may be chosen. EOS ends the run and is not counted.
        """
        params = self._params(request, len(run.prompt_ids))
        generator = self._og.Generator(self._model, params)
        stream = self._tokenizer.create_stream()
        stops = tuple(s for s in request.stop if s)
        text, emitted = "", 0
        try:
            generator.append_tokens(np.asarray(run.prompt_ids, dtype=np.int32))
            while not generator.is_done():
                # Logits for the next position; generate_next_token moves past them.
                logits = generator.get_logits() if request.logprobs else None
                generator.generate_next_token()
                token = int(generator.get_next_tokens()[0])
                if token in self.eos_token_ids:
                    run.finish_reason = "stop"
                    break
                run.token_ids.append(token)
                if logits is not None:
                    run.logprobs.append(_log_softmax_at(logits, token))
                text += stream.decode(token)
                # The hold-back below means no stop string can start before ``emitted``.
                hits = [i for i in (text.find(s, emitted) for s in stops) if i >= 0]
                if hits:
                    cut = min(hits)
                    run.text.append(text[emitted:cut])
                    yield text[emitted:cut]
                    run.finish_reason = "stop"
                    return
                safe = len(text) - _held_back(text, stops)
                if safe > emitted:
                    run.text.append(text[emitted:safe])
                    yield text[emitted:safe]
                    emitted = safe
            if emitted < len(text):
                run.text.append(text[emitted:])
                yield text[emitted:]
        finally:
            del generator

    def generate(self, request: ChatRequest) -> Generation:
        """Run ``request`` to the end; token ids and log-probabilities included."""
        with self._lock:
            run = _Run(self.prompt_ids(request.messages))
            for _ in self._chunks(request, run):
                pass
        return run.result()

    def complete(self, request: ChatRequest) -> Completion:
        result = self.generate(request)
        return Completion(
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=len(result.prompt_ids),
            completion_tokens=len(result.token_ids),
            token_logprobs=result.token_logprobs if request.logprobs else (),
        )

    def stream(self, request: ChatRequest) -> Iterator[CompletionChunk]:
        with self._lock:
            run = _Run(self.prompt_ids(request.messages))
            for piece in self._chunks(request, run):
                if piece:
                    yield CompletionChunk(text=piece)
        yield CompletionChunk(
            text="",
            finish_reason=run.finish_reason,
            prompt_tokens=len(run.prompt_ids),
            completion_tokens=len(run.token_ids),
        )

    def close(self) -> None:
        with self._lock:
            self._tokenizer = None
            self._model = None
