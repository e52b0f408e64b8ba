"""The bounded YAML loader and every file read through it: hostile YAML is one clear error."""

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.images.flash import render_agent_config
from controller.images.recipe import RecipeError, load_recipe
from controller.settings import load_settings
from edge_agent.config import ConfigError, config_schema, load_config
from shared.yaml_guard import (
    MAX_YAML_BYTES,
    YamlShapeError,
    load_yaml_bounded,
    read_yaml_file,
)

ROOT = Path(__file__).resolve().parent.parent

# name -> (document, reason): each a way a YAML file has been used to attack a loader.
HOSTILE: dict[str, tuple[str, str]] = {
    "deep flow sequence": ("[" * 3000 + "]" * 3000, "too_deep"),
    "deep flow unclosed": ("[" * 3000, "too_deep"),
    "deep block mapping": (
        "".join(f"{' ' * i}k:\n" for i in range(60)) + " " * 60 + "v\n",
        "too_deep",
    ),
    "billion laughs": (
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n"
            for i in range(8)
        ),
        "alias",
    ),
    "single alias": ("base: &b {x: 1}\nother: *b\n", "alias"),
    "anchor alone": ("a: &only 1\n", "alias"),
    "merge key alias": ("base: &b {x: 1}\nother: {<<: *b}\n", "alias"),
    "many elements": ("[" + ",".join(["1"] * 60_000) + "]", "too_many_elements"),
    "oversized": ("a: '" + "x" * MAX_YAML_BYTES + "'\n", "oversized"),
    "impossible date": ("a: 2001-13-45\n", "bad_yaml"),
    "impossible time zone": ("a: 2001-12-14t21:59:43.10+25:00\n", "bad_yaml"),
    "5000-digit integer": ("a: " + "1" * 5000 + "\n", "bad_yaml"),
    "infinity": ("a: .inf\n", "bad_yaml"),
    "nan": ("a: .nan\n", "bad_yaml"),
    "python object tag": ("a: !!python/object/apply:os.system ['true']\n", "bad_yaml"),
    "bad base64": ("a: !!binary 'a'\n", "bad_yaml"),
    "unhashable key": ("? [a, b]\n: 1\n", "bad_yaml"),
    "two documents": ("a: 1\n---\nb: 2\n", "bad_yaml"),
    "unclosed flow": ("a: [1, 2\n", "bad_yaml"),
    "control character": ("a: \x07\n", "bad_yaml"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_is_refused_with_its_reason(case: str) -> None:
    """Each hostile document raises YamlShapeError with the expected reason, naming the file."""
    text, reason = HOSTILE[case]
    with pytest.raises(YamlShapeError) as caught:
        load_yaml_bounded(text, source="hostile.yaml")
    assert caught.value.reason == reason
    assert str(caught.value).startswith("hostile.yaml: ")


def test_invalid_utf8_is_refused() -> None:
    """Bytes that are not UTF-8 are refused as bad YAML, not a UnicodeDecodeError."""
    with pytest.raises(YamlShapeError, match="not UTF-8"):
        load_yaml_bounded(b"a: \xff\xfe\n", source="x.yaml")


def test_ordinary_yaml_loads_as_safe_load_does() -> None:
    """Documents within the limits load exactly as yaml.safe_load loads them."""
    text = "a: 1\nb: [x, {c: 2.5, d: null}]\nwhen: 2024-01-02\nflag: true\n"
    assert load_yaml_bounded(text, source="ok.yaml") == yaml.safe_load(text)
    assert load_yaml_bounded("", source="empty.yaml") is None


def test_a_file_larger_than_the_limit_is_not_read_whole(tmp_path: Path) -> None:
    """A file past max_bytes is refused as oversized after reading only max_bytes + 1."""
    path = tmp_path / "big.yaml"
    path.write_bytes(b"a: 1\n" + b"#" * 10_000)
    with pytest.raises(YamlShapeError) as caught:
        read_yaml_file(path, max_bytes=1000)
    assert caught.value.reason == "oversized"
    assert str(path) in str(caught.value)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)


@given(json_like)
def test_dumped_documents_round_trip(value: Any) -> None:
    """Whatever safe_dump writes within the limits, the bounded loader reads back equal."""
    text = yaml.safe_dump(value)
    assert load_yaml_bounded(text, source="p.yaml") == value


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_yaml_shape_error(data: bytes) -> None:
    """Random bytes either load or raise YamlShapeError; nothing else escapes."""
    with contextlib.suppress(YamlShapeError):
        load_yaml_bounded(data, source="fuzz.yaml")


yaml_tokens = st.sampled_from(
    ["[", "]", "{", "}", ",", ":", " ", "\n", "- ", "&a ", "*a", "!!binary ", "!!set ",
     "2001-13-45", "? ", "'", '"', "1e400", ".inf", "<<: ", "x", "1" * 40, "#", "|", ">"]
)  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(yaml_tokens, max_size=200))
def test_yaml_shaped_noise_raises_only_yaml_shape_error(tokens: list[str]) -> None:
    """Text built from YAML's own syntax either loads or raises YamlShapeError only."""
    with contextlib.suppress(YamlShapeError):
        load_yaml_bounded("".join(tokens), source="fuzz.yaml")


# PyYAML's scanner looks up to 1,024 characters ahead for a key: ~0.3 s per deep case.
@settings(deadline=None, max_examples=20)
@given(st.integers(33, 5000))
def test_any_nesting_past_the_limit_is_too_deep(depth: int) -> None:
    """Nesting of any depth past the limit is too_deep, never a RecursionError."""
    with pytest.raises(YamlShapeError) as caught:
        load_yaml_bounded("[" * depth + "]" * depth, source="deep.yaml")
    assert caught.value.reason == "too_deep"


# --- every YAML file the project reads goes through it -----------------------------------


@pytest.mark.parametrize("case", ["deep flow sequence", "billion laughs", "impossible date"])
def test_agent_config_refuses_hostile_yaml(tmp_path: Path, case: str) -> None:
    """The agent's config loader turns hostile YAML into a ConfigError naming the file."""
    path = tmp_path / "agent.yaml"
    path.write_text(HOSTILE[case][0])
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_check_config_prints_the_yaml_problem_and_exits_2(tmp_path: Path) -> None:
    """edge-agent check-config on a billion-laughs file exits 2 with a sentence, no traceback."""
    path = tmp_path / "agent.yaml"
    path.write_text(HOSTILE["billion laughs"][0])
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "aliases are not allowed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("case", ["deep flow sequence", "single alias", "5000-digit integer"])
def test_controller_settings_refuse_hostile_yaml(tmp_path: Path, case: str) -> None:
    """The controller's settings loader refuses hostile YAML with a ValueError naming the file."""
    path = tmp_path / "controller.yaml"
    path.write_text(HOSTILE[case][0])
    with pytest.raises(ValueError, match=str(path)):
        load_settings(path)


def test_controller_settings_still_read_the_file(tmp_path: Path) -> None:
    """A plain controller YAML file still sets values, below the environment."""
    path = tmp_path / "controller.yaml"
    path.write_text("http_port: 8123\n")
    assert load_settings(path).http_port == 8123
    path.write_text("")
    assert load_settings(path).http_port == load_settings(None).http_port


def test_serve_with_a_deeply_nested_config_exits_2_without_traceback(tmp_path: Path) -> None:
    """`edgefleet serve` with a 3,000-deep config exits 2 and says it is nested too deep."""
    path = tmp_path / "controller.yaml"
    path.write_text(HOSTILE["deep flow sequence"][0])
    result = subprocess.run(
        [sys.executable, "-m", "controller", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "nested deeper than" in result.stderr
    assert "Traceback" not in result.stderr


def test_recipe_with_aliases_is_refused(tmp_path: Path) -> None:
    """An image recipe using anchors is a RecipeError naming recipe.yaml."""
    (tmp_path / "recipe.yaml").write_text(HOSTILE["billion laughs"][0])
    with pytest.raises(RecipeError, match=r"recipe\.yaml: anchors and aliases"):
        load_recipe(tmp_path)


def test_flash_template_with_deep_nesting_is_refused() -> None:
    """An image's agent.yaml template nested 3,000 deep is refused as a ValueError."""
    with pytest.raises(ValueError, match=r"agent\.yaml template: nested deeper"):
        render_agent_config(
            HOSTILE["deep flow sequence"][0].encode(),
            schema=config_schema(),
            device_id="d-1",
            broker_url="mqtt://h:1883",
            controller_url="http://h",
        )
