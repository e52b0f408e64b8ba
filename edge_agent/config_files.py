"""Every file an agent config names, checked at once (``edge-agent check-config``).

``load_config`` stops at the first file it cannot use, and reads only those it needs at
start; an operator preparing a device wants the whole list: each model, the TUF trusted
root, the broker password, the TLS files and the API keys file, with the key that names it.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edge_agent.api_keys import ApiKeysError, read_keys_file
from edge_agent.config import AgentConfig
from edge_agent.updates.client import read_trusted_root
from edge_agent.updates.decisions import UpdateError
from shared.broker_url import Tls, TlsConfigError, ssl_reason

GGUF_MAGIC = b"GGUF"
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True, slots=True)
class FileProblem:
    """A file the config names that the agent could not use: the key, the path, why."""

    key: str
    path: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.path}: {self.problem}"


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not a regular file the agent can open, or None."""
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a regular file"
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    return None


def _gguf_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable GGUF file (the magic bytes only), or None."""
    problem = _unreadable(path)
    if problem is not None:
        return problem
    try:
        with path.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as e:  # gone or changed since the check above
        return f"cannot read it: {e.strerror or e}"
    if head != GGUF_MAGIC:
        return "not a GGUF file (llama.cpp models are .gguf files)"
    return None


def _genai_folder_problem(path: Path) -> str | None:
    """Why ``path`` is not an ONNX GenAI model folder, or None."""
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return f"not a folder (an ort-genai model is a folder with {GENAI_CONFIG})"
    problem = _unreadable(path / GENAI_CONFIG)
    return None if problem is None else f"{GENAI_CONFIG}: {problem}"


def _model_problems(config: AgentConfig) -> Iterator[FileProblem]:
    for index, model in enumerate(config.models):
        check = _gguf_problem if model.runtime == "llama.cpp" else _genai_folder_problem
        problem = check(model.path)
        if problem is not None:
            yield FileProblem(f"models[{index}].path ({model.name})", model.path, problem)
    for index, classifier in enumerate(config.perception):
        problem = _unreadable(classifier.path)
        if problem is not None:
            key = f"perception[{index}].path ({classifier.name})"
            yield FileProblem(key, classifier.path, problem)


def _tls_problems(prefix: str, tls: Tls) -> Iterator[FileProblem]:
    """Each named TLS file that is unreadable; if all are readable, whether the CA and the
    certificate with its key load (what the handshake will need)."""
    files = (("ca_file", tls.ca_file), ("cert_file", tls.cert_file), ("key_file", tls.key_file))
    unreadable = [
        FileProblem(f"{prefix}.{key}", path, problem)
        for key, path in files
        if path is not None and (problem := _unreadable(path)) is not None
    ]
    if unreadable:
        yield from unreadable
        return
    # Loaded apart, so a problem is pinned on its key: the CA alone, then the certificate
    # with its key (against the system's trust store, which is always loadable).
    if tls.ca_file is not None:
        yield from _loading(f"{prefix}.ca_file", tls.ca_file, Tls(tls.ca_file))
    if tls.cert_file is not None:
        client = Tls(None, tls.cert_file, tls.key_file)
        yield from _loading(f"{prefix}.cert_file", tls.cert_file, client)


def _loading(key: str, path: Path, tls: Tls) -> Iterator[FileProblem]:
    """The problem of loading ``tls`` into a client context, if any, as ``key``'s."""
    try:
        tls.context()
    except TlsConfigError as e:
        why = ssl_reason(e.__cause__) if e.__cause__ is not None else str(e)
        yield FileProblem(key, path, why)


def _trusted_root_problem(path: Path) -> str | None:
    """Why ``path`` is not TUF root metadata the update client would start from, or None."""
    problem = _unreadable(path)
    if problem is not None:
        return problem
    try:
        read_trusted_root(path)
    except UpdateError as e:
        return str(e).removeprefix(f"trusted root {path} ")
    return None


def _password_problem(path: Path) -> str | None:
    """Why ``path`` holds no broker password, or None (the password is never shown)."""
    problem = _unreadable(path)
    if problem is not None:
        return problem
    try:
        empty = not path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        return f"cannot read it: {e}"
    return "empty (the broker would get an empty password)" if empty else None


def _secret_problems(config: AgentConfig) -> Iterator[FileProblem]:
    updates = config.updates
    if updates.trusted_root is not None:
        problem = _trusted_root_problem(updates.trusted_root)
        if problem is not None:
            yield FileProblem("updates.trusted_root", updates.trusted_root, problem)
    tls = updates.tls()
    if tls is not None:
        yield from _tls_problems("updates", tls)
    mqtt = config.mqtt
    if mqtt is not None:
        if mqtt.password_file is not None:
            problem = _password_problem(mqtt.password_file)
            if problem is not None:
                yield FileProblem("mqtt.password_file", mqtt.password_file, problem)
        mqtt_tls = mqtt.tls()
        if mqtt_tls is not None:
            yield from _tls_problems("mqtt", mqtt_tls)
    keys_file = config.api.keys_file
    if keys_file is not None:
        problem = _unreadable(keys_file)
        if problem is None:
            try:
                read_keys_file(keys_file)
            except ApiKeysError as e:
                problem = str(e).removeprefix(f"api.keys_file {keys_file}: ")
        if problem is not None:
            yield FileProblem("api.keys_file", keys_file, problem)


def file_problems(config: AgentConfig) -> list[FileProblem]:
    """Every file ``config`` names that the agent could not use (config from
    ``read_config``: paths already placed), in the order of the config's keys."""
    problems = list(_model_problems(config))
    if config.state_dir.exists() and not config.state_dir.is_dir():
        problems.append(FileProblem("state_dir", config.state_dir, "not a folder"))
    problems += _secret_problems(config)
    return problems


def named_files(config: AgentConfig) -> int:
    """How many files and folders ``config`` names (what check-config says it checked)."""
    updates, mqtt = config.updates, config.mqtt
    paths: list[Path | None] = [
        *(m.path for m in config.models),
        *(p.path for p in config.perception),
        updates.trusted_root,
        updates.ca_file,
        config.api.keys_file,
    ]
    if mqtt is not None:
        paths += [mqtt.password_file, mqtt.ca_file, mqtt.cert_file, mqtt.key_file]
    return sum(path is not None for path in paths)


__all__ = ["FileProblem", "file_problems", "named_files"]
