"""Image recipes: one declarative ``recipe.yaml`` per device class (``firmware_images/``).

A recipe says what a device of its class is flashed with: the pip platform and Python the
wheelhouse is fetched for, the agent version (it must be the version of the agent code the
build packs, so an image never claims one version and ships another), requirements pinned
as ``name==version`` (an unpinned requirement would make the same recipe give different
images on different days), packages fetched as sdists and built on the device (with the
environment their build needs), execution providers, the models the device should run once
it is up (desired state, installed from the TUF repository; not bytes in the image), latency
budgets, systemd resource limits and the agent config template beside the recipe.

Loading is strict: unknown keys, a missing field or a bad value is a ``RecipeError`` that
names the file and the field.
"""

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.yaml_guard import YamlShapeError, read_yaml_file

RECIPE_FILE = "recipe.yaml"
# pip's normalized project names and PEP 440 public versions (no local "+..." part: an
# image is built from published artifacts only).
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
_PIN = re.compile(rf"^({_NAME})==({_VERSION})$")
_PLATFORM_TAG = re.compile(
    r"^(manylinux[0-9a-z_]+|musllinux_[0-9]+_[0-9]+_[0-9a-z_]+|linux_[0-9a-z_]+|any)$"
)
_SIZE = re.compile(r"^[0-9]+[KMGT]?$|^infinity$")
_QUOTA = re.compile(r"^[0-9]+%$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_UNIT_VALUE = re.compile(r"^[^\n\r]*$")


class RecipeError(ValueError):
    """A recipe that cannot be built; the text names the file and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name (``Llama_CPP.python`` -> ``llama-cpp-python``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(text: str) -> tuple[str, str]:
    """``(name, version)`` of a ``name==version`` requirement; ``ValueError`` otherwise."""
    match = _PIN.match(text.strip())
    if match is None:
        raise ValueError(
            f"requirement {text!r} is not pinned as name==version (ranges, extras, markers"
            " and URLs make the image depend on the day it is built)"
        )
    return match.group(1), match.group(2)


class Platform(_Strict):
    """What the wheelhouse is fetched for (``pip download --platform ... --python-version``)."""

    arch: Literal["x86_64", "aarch64"]
    # pip platform tags, most specific first; pip accepts a wheel for any of them.
    pip_platforms: list[str] = Field(min_length=1)
    python_version: str = Field(pattern=r"^3\.[0-9]{1,2}$")
    implementation: Literal["cp"] = "cp"

    @field_validator("pip_platforms")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not _PLATFORM_TAG.match(tag):
                raise ValueError(f"{tag!r} is not a pip platform tag (e.g. manylinux2014_aarch64)")
        if len(set(value)) != len(value):
            raise ValueError("platform tags repeat")
        return value

    @model_validator(mode="after")
    def _arch_matches(self) -> "Platform":
        for tag in self.pip_platforms:
            if tag != "any" and not tag.endswith(self.arch):
                raise ValueError(f"platform tag {tag!r} is not for arch {self.arch}")
        return self


class OnDeviceBuild(_Strict):
    """A package fetched as an sdist and compiled on the device (no wheel fits the target,
    or the wheel must be built against the device's own CUDA/NPU libraries)."""

    requirement: str
    # Environment for the build (e.g. CMAKE_ARGS for llama-cpp-python with CUDA); also
    # written into the systemd unit's install step so a rebuild on the device matches.
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("requirement")
    @classmethod
    def _pinned(cls, value: str) -> str:
        parse_pin(value)
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)


class Runtime(_Strict):
    """How the device executes models."""

    # ONNX Runtime execution providers in order of preference (CPUExecutionProvider last).
    execution_providers: list[str] = Field(min_length=1)
    # llama.cpp layers offloaded to the GPU (-1: all; 0: CPU only).
    llama_cpp_gpu_layers: int = Field(default=0, ge=-1)

    @field_validator("execution_providers")
    @classmethod
    def _providers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9]+ExecutionProvider", name):
                raise ValueError(f"{name!r} is not an ONNX Runtime execution provider name")
        if value[-1] != "CPUExecutionProvider":
            raise ValueError("CPUExecutionProvider must come last (the fallback)")
        return value


class DefaultModel(_Strict):
    """A model version the device should run after first boot (desired state)."""

    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64)


class LatencyBudget(_Strict):
    """What local serving must stay inside on this class (drills and health checks)."""

    first_token_p95_ms: float = Field(gt=0)
    request_p95_ms: float = Field(gt=0)


class Resources(_Strict):
    """systemd resource limits of the agent service."""

    memory_max: str  # MemoryMax=, e.g. 6G
    cpu_quota: str  # CPUQuota=, e.g. 400%
    tasks_max: int = Field(ge=16, le=65536)  # TasksMax=

    @field_validator("memory_max")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _SIZE.match(value):
            raise ValueError(f"{value!r} is not a systemd size (e.g. 512M, 6G)")
        return value

    @field_validator("cpu_quota")
    @classmethod
    def _quota(cls, value: str) -> str:
        if not _QUOTA.match(value):
            raise ValueError(f"{value!r} is not a systemd CPUQuota (e.g. 200%)")
        return value


class Service(_Strict):
    """The ``edgefleet-agent.service`` unit, rendered by the build."""

    description: str = Field(default="edgefleet edge agent", pattern=_UNIT_VALUE.pattern)
    after: list[str] = Field(default_factory=lambda: ["network-online.target"])
    environment: dict[str, str] = Field(default_factory=dict)

    @field_validator("after")
    @classmethod
    def _units(cls, value: list[str]) -> list[str]:
        for unit in value:
            if not re.fullmatch(r"[A-Za-z0-9@_.:-]+\.(target|service|mount|socket)", unit):
                raise ValueError(f"{unit!r} is not a systemd unit name")
        return value

    @field_validator("environment")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_env(value)


def _check_env(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        if not _UNIT_VALUE.match(text) or '"' in text or "\\" in text:
            raise ValueError(f"{name}: value must be one line without quotes or backslashes")
    return value


class Recipe(_Strict):
    """One device class's image recipe."""

    format: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    device_class: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = Field(default="", max_length=500)
    platform: Platform
    agent_version: str = Field(min_length=1, max_length=32)
    requirements: list[str] = Field(default_factory=list)
    build_on_device: list[OnDeviceBuild] = Field(default_factory=list)
    runtime: Runtime
    default_models: list[DefaultModel] = Field(default_factory=list)
    latency: LatencyBudget
    resources: Resources
    service: Service = Field(default_factory=Service)
    # The agent config template beside the recipe (relative path, inside the recipe folder).
    agent_config: str = "agent.yaml"

    @field_validator("requirements")
    @classmethod
    def _pinned(cls, value: list[str]) -> list[str]:
        names = [normalize_name(parse_pin(text)[0]) for text in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"pinned more than once: {', '.join(twice)}")
        return value

    @field_validator("agent_config")
    @classmethod
    def _relative(cls, value: str) -> str:
        path = Path(value)
        if path.is_absolute() or ".." in path.parts or not value:
            raise ValueError("agent_config is a file name inside the recipe folder")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        pinned = {normalize_name(parse_pin(t)[0]) for t in self.requirements}
        built = [normalize_name(parse_pin(b.requirement)[0]) for b in self.build_on_device]
        both = sorted(pinned & set(built))
        if both:
            raise ValueError(
                f"{', '.join(both)} listed both as a wheel requirement and in build_on_device"
            )
        names = [m.name for m in self.default_models]
        if len(names) != len(set(names)):
            raise ValueError("default model names repeat")
        return self


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_recipe(recipe_dir: Path, *, agent_version: str | None = None) -> Recipe:
    """Load ``recipe_dir/recipe.yaml``; ``RecipeError`` says which field is wrong and why.

    ``agent_version``, when given, is the version of the agent code the build packs: a
    recipe naming another version is refused.
    """
    path = recipe_dir / RECIPE_FILE
    try:
        raw = read_yaml_file(path)
    except FileNotFoundError as e:
        raise RecipeError(f"{path}: no such recipe file") from e
    except OSError as e:
        raise RecipeError(f"{path}: cannot read: {e}") from e
    except YamlShapeError as e:
        raise RecipeError(str(e)) from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping")
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{_where(x['loc'])}: {x['msg']}" for x in e.errors())
        raise RecipeError(f"{path}: {problems}") from e
    if agent_version is not None and recipe.agent_version != agent_version:
        raise RecipeError(
            f"{path}: agent_version {recipe.agent_version!r} but the agent code being packed"
            f" is version {agent_version!r}; update the recipe or build from that agent"
        )
    template = recipe_dir / recipe.agent_config
    if not template.is_file():
        raise RecipeError(
            f"{path}: agent_config {recipe.agent_config!r} is not a file in {recipe_dir}"
        )
    return recipe


__all__ = [
    "RECIPE_FILE",
    "DefaultModel",
    "LatencyBudget",
    "OnDeviceBuild",
    "Platform",
    "Recipe",
    "RecipeError",
    "Resources",
    "Runtime",
    "Service",
    "load_recipe",
    "normalize_name",
    "parse_pin",
]
