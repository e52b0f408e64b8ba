"""OrtGenaiRuntime against a tiny seeded llama-type decoder built on the fly (no downloads)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtimes.base import ChatMessage, ChatRequest, RuntimeLoadError
from edge_agent.runtimes.ort_genai import OrtGenaiRuntime, fallback_prompt
from shared.digests import folder_sha256
from tests.tiny_models import (
    EOS_TOKEN_ID,
    build_tiny_genai_model,
    reference_greedy,
    reference_logits,
)

MESSAGES = (ChatMessage("system", "be brief"), ChatMessage("user", "hello world"))


def request(max_tokens: int = 8, **kwargs: object) -> ChatRequest:
    return ChatRequest(messages=MESSAGES, max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_genai_model(tmp_path_factory.mktemp("genai") / "tiny-llama", layers=2)


@pytest.fixture(scope="module")
def runtime(model_folder: Path) -> OrtGenaiRuntime:
    rt = OrtGenaiRuntime("tiny-llama", model_folder)
    rt.warm_up()
    return rt


def test_prompt_uses_the_models_chat_template(runtime: OrtGenaiRuntime) -> None:
    """The tokenizer's Jinja chat template renders the messages and opens the assistant turn."""
    text = runtime.prompt_text(MESSAGES)
    assert text == "<|system|>be brief<|end|><|user|>hello world<|end|><|assistant|>"
    ids = runtime.prompt_ids(MESSAGES)
    assert ids[0] == 3 and ids[-2:] == (4, 2)  # <|system|> ... <|end|><|assistant|>


def test_prompt_falls_back_to_plain_text_without_a_template(
    model_folder: Path, tmp_path: Path
) -> None:
    """A tokenizer without a chat template gets the documented 'Role: content' prompt."""
    folder = tmp_path / "no-template"
    shutil.copytree(model_folder, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["chat_template"]
    config_path.write_text(json.dumps(config))
    rt = OrtGenaiRuntime("no-template", folder)
    assert rt.prompt_text(MESSAGES) == "System: be brief\nUser: hello world\nAssistant:"
    assert fallback_prompt(MESSAGES) == rt.prompt_text(MESSAGES)
    assert rt.complete(request(3)).completion_tokens == 3


def test_greedy_generation_matches_a_cache_free_numpy_reference(
    runtime: OrtGenaiRuntime, model_folder: Path
) -> None:
    """Greedy ids equal a numpy full-recompute forward pass, so the KV cache wiring is right."""
    first = runtime.generate(request(8))
    expected = reference_greedy(model_folder, list(first.prompt_ids), 8)
    assert len(expected) == 8, "the seeded model should not emit EOS this early"
    assert list(first.token_ids) == expected
    assert first.finish_reason == "length"
    again = runtime.generate(request(8))
    assert again == first


def test_complete_reports_token_counts(runtime: OrtGenaiRuntime) -> None:
    """complete() counts the templated prompt's tokens and the generated ones."""
    completion = runtime.complete(request(5))
    assert completion.prompt_tokens == len(runtime.prompt_ids(MESSAGES))
    assert completion.completion_tokens == 5
    assert completion.finish_reason == "length"
    assert completion.token_logprobs == ()  # not asked for


@pytest.mark.parametrize("max_tokens", [1, 2, 7])
def test_max_tokens_is_respected(runtime: OrtGenaiRuntime, max_tokens: int) -> None:
    """Generation stops after exactly max_tokens tokens when nothing else stops it first."""
    completion = runtime.complete(request(max_tokens))
    assert completion.completion_tokens == max_tokens
    assert completion.finish_reason == "length"


def test_generation_stops_at_the_context_length(runtime: OrtGenaiRuntime) -> None:
    """A max_tokens past the context window is cut at the window, reported as 'length'."""
    completion = runtime.complete(request(10_000))
    assert completion.prompt_tokens + completion.completion_tokens == runtime.context_length
    assert completion.finish_reason == "length"


def test_stream_yields_the_same_text_as_complete(runtime: OrtGenaiRuntime) -> None:
    """Streamed chunks concatenate to complete()'s text; only the last chunk has a reason."""
    completion = runtime.complete(request(12))
    chunks = list(runtime.stream(request(12)))
    assert "".join(c.text for c in chunks) == completion.text
    assert completion.text
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == completion.finish_reason == "length"


def test_logprobs_match_the_reference_log_softmax(
    runtime: OrtGenaiRuntime, model_folder: Path
) -> None:
    """One log-probability per generated token, each <= 0 and equal to the reference's."""
    result = runtime.generate(request(6, logprobs=True))
    completion = runtime.complete(request(6, logprobs=True))
    assert completion.token_logprobs == result.token_logprobs
    assert len(result.token_logprobs) == completion.completion_tokens == 6
    assert all(lp <= 0.0 for lp in result.token_logprobs)
    ids = list(result.prompt_ids)
    for token, logprob in zip(result.token_ids, result.token_logprobs, strict=True):
        logits = reference_logits(model_folder, ids)[-1]
        expected = logits[token] - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        assert logprob == pytest.approx(expected, abs=1e-3)
        ids.append(token)


def test_stop_string_truncates_complete_and_stream_alike(runtime: OrtGenaiRuntime) -> None:
    """A stop string ends generation early and is cut, in complete() and stream() the same."""
    full = runtime.complete(request(12)).text
    stop = full[4:6]
    assert len(stop) == 2
    cut = full[: full.index(stop)]
    completion = runtime.complete(request(12, stop=(stop,)))
    assert completion.text == cut
    assert completion.finish_reason == "stop"
    assert completion.completion_tokens < 12
    chunks = list(runtime.stream(request(12, stop=(stop,))))
    assert "".join(c.text for c in chunks) == cut
    assert chunks[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(runtime: OrtGenaiRuntime) -> None:
    """With temperature > 0 the same seed gives the same tokens and another seed differs."""
    a = runtime.generate(request(12, temperature=1.0, seed=7))
    b = runtime.generate(request(12, temperature=1.0, seed=7))
    c = runtime.generate(request(12, temperature=1.0, seed=8))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_json_schema_constrains_the_output(runtime: OrtGenaiRuntime) -> None:
    """A json_schema request yields JSON that validates against it, even from random weights."""
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    completion = runtime.complete(request(40, json_schema=schema))
    assert completion.finish_reason == "stop"
    assert isinstance(json.loads(completion.text)["ok"], bool)


def test_eos_token_ids_come_from_the_config(runtime: OrtGenaiRuntime) -> None:
    """The runtime stops on the tokenizer's EOS ids, which match genai_config.json."""
    assert runtime.eos_token_ids == frozenset({EOS_TOKEN_ID})


def test_cpu_provider_list_loads_and_agrees(runtime: OrtGenaiRuntime, model_folder: Path) -> None:
    """providers=['CPUExecutionProvider'] (and unknown ones) fall back to CPU with equal output."""
    cpu = OrtGenaiRuntime(
        "tiny-cpu", model_folder, providers=["TensorrtExecutionProvider", "CPUExecutionProvider"]
    )
    assert cpu.providers == []
    assert cpu.device_type == "CPU"
    assert cpu.generate(request(4)).token_ids == runtime.generate(request(4)).token_ids
    assert OrtGenaiRuntime._genai_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "cuda"
    ]


def test_sha256_covers_names_and_contents(model_folder: Path, tmp_path: Path) -> None:
    """The folder hash is stable across copies and changes when any file's bytes change."""
    copy = tmp_path / "copy"
    shutil.copytree(model_folder, copy)
    assert folder_sha256(copy) == folder_sha256(model_folder)
    assert len(folder_sha256(copy)) == 64
    with (copy / "tokenizer_config.json").open("a") as f:
        f.write(" ")
    assert folder_sha256(copy) != folder_sha256(model_folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert folder_sha256(empty) == hashlib.sha256().hexdigest()


def test_runtime_exposes_the_folder_hash(runtime: OrtGenaiRuntime, model_folder: Path) -> None:
    """runtime.sha256 is the folder hash the controller can compare against its catalogue."""
    assert runtime.sha256 == folder_sha256(model_folder)


def test_missing_folder_is_a_load_error(tmp_path: Path) -> None:
    """A folder that does not exist fails with a reason naming it."""
    with pytest.raises(RuntimeLoadError, match="does not exist"):
        OrtGenaiRuntime("gone", tmp_path / "gone")


def test_folder_without_genai_config_is_a_load_error(tmp_path: Path) -> None:
    """A folder without genai_config.json fails with that reason."""
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(RuntimeLoadError, match=r"no genai_config\.json"):
        OrtGenaiRuntime("bare", tmp_path)


def test_unparseable_genai_config_is_a_load_error(model_folder: Path, tmp_path: Path) -> None:
    """A genai_config.json that is not JSON fails with a reason, before any native code runs."""
    folder = tmp_path / "bad-config"
    shutil.copytree(model_folder, folder)
    (folder / "genai_config.json").write_text("{not json")
    with pytest.raises(RuntimeLoadError, match="not a usable genai config"):
        OrtGenaiRuntime("bad-config", folder)


def test_truncated_model_file_is_a_load_error(model_folder: Path, tmp_path: Path) -> None:
    """A corrupt model.onnx surfaces onnxruntime-genai's reason in a RuntimeLoadError."""
    folder = tmp_path / "truncated"
    shutil.copytree(model_folder, folder)
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(RuntimeLoadError, match="could not load truncated"):
        OrtGenaiRuntime("truncated", folder)


def test_prompt_longer_than_the_context_is_rejected(runtime: OrtGenaiRuntime) -> None:
    """A prompt that does not fit the context window is a ValueError, not a crash."""
    long = ChatRequest(messages=(ChatMessage("user", "hello world " * 200),), max_tokens=4)
    with pytest.raises(ValueError, match="context"):
        runtime.complete(long)
