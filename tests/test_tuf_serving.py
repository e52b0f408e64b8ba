"""The controller serving its TUF repository and taking model uploads, over real HTTP:
the app runs in uvicorn on loopback and a python-tuf ngclient installs from it."""

import http.client
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from tuf.ngclient import Updater
from typer.testing import CliRunner

from controller.app import create_app
from controller.auth.credentials import create_api_token
from controller.auth.users import create_user
from controller.cli.main import app as cli_app
from controller.db import session_scope
from controller.services import Services
from controller.settings import load_settings
from controller.updates.keys import KeyStore
from controller.updates.repository import TufRepository
from tests.conftest import free_port, wait_for

PASSPHRASE = "serving tests passphrase"
LIMIT = 3 * 1024 * 1024


@dataclass
class Served:
    url: str
    operator: str
    viewer: str
    repo: TufRepository
    keys_dir: Path

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.operator}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    (root / "passphrase").write_text(PASSPHRASE)
    settings = load_settings(
        None,
        environment="development",
        database_url=f"sqlite:///{root / 'controller.db'}",
        secure_cookies=False,
        updates={
            "repo_dir": str(root / "repo"),
            "keys_dir": str(root / "keys"),
            "passphrase_file": str(root / "passphrase"),
            "max_upload_bytes": LIMIT,
        },
    )
    repo = TufRepository.from_settings(settings)
    repo.initialize(now=datetime.now(UTC))
    services = Services.create(settings)
    with session_scope(services.engine) as session:
        operator = create_user(
            session, username="op", password="operator-password", role="operator"
        )
        viewer = create_user(session, username="view", password="viewer-password", role="viewer")
        operator_token = create_api_token(session, operator, name="tests")
        viewer_token = create_api_token(session, viewer, name="tests")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, services=services),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, what="uvicorn to start")
        yield Served(f"http://127.0.0.1:{port}", operator_token, viewer_token, repo, root / "keys")
    finally:
        server.should_exit = True
        thread.join(30)


def upload(
    served: Served,
    data: bytes,
    *,
    name: str,
    version: str = "1.0",
    runtime: str = "onnx",
    filename: str = "model.onnx",
    token: str | None = None,
    device_classes: tuple[str, ...] = (),
    chunked: bool = True,
) -> httpx.Response:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("name", name),
        ("version", version),
        ("runtime", runtime),
        ("filename", filename),
    ]
    params += [("device_class", c) for c in device_classes]

    def body() -> Iterator[bytes]:  # no Content-Length: the server must count itself
        for i in range(0, len(data), 256 * 1024):
            yield data[i : i + 256 * 1024]

    return httpx.post(
        f"{served.url}/api/models",
        params=params,
        content=body() if chunked else data,
        headers={**served.auth(token), "Content-Type": "application/octet-stream"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def published(served: Served) -> tuple[str, bytes]:
    """One model uploaded over HTTP: (its hash-prefixed URL path, its bytes)."""
    data = os.urandom(1_500_000)
    response = upload(served, data, name="ranges")
    assert response.status_code == 201, response.text
    row = response.json()
    return f"/tuf/targets/ranges/1.0/{row['sha256']}.model.onnx", data


def test_ngclient_installs_a_model_uploaded_over_http(served: Served, tmp_path: Path) -> None:
    """A model streamed to POST /api/models is published, and ngclient refreshes from the
    controller's /tuf URLs and downloads it with matching bytes and custom metadata."""
    data = os.urandom(2_200_000)
    response = upload(served, data, name="detector", device_classes=("jetson-orin",))
    assert response.status_code == 201, response.text
    assert response.json()["target_path"] == "detector/1.0/model.onnx"
    (tmp_path / "metadata").mkdir()
    (tmp_path / "downloads").mkdir()
    client = Updater(
        str(tmp_path / "metadata"),
        f"{served.url}/tuf/metadata/",
        str(tmp_path / "downloads"),
        f"{served.url}/tuf/targets/",
        bootstrap=served.repo.root_bytes(1),
    )
    client.refresh()
    info = client.get_targetinfo("detector/1.0/model.onnx")
    assert info is not None
    assert info.custom["edgefleet"]["runtime"] == "onnx"
    assert info.custom["edgefleet"]["device_classes"] == ["jetson-orin"]
    assert Path(client.download_target(info)).read_bytes() == data


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=1000-", 1000, None),
        ("bytes=-500", -500, None),
        ("bytes=1499990-2000000", 1499990, None),
    ],
    ids=["first-100", "open-ended", "suffix", "end-past-size"],
)
def test_range_requests_get_206_with_the_right_bytes(
    served: Served, published: tuple[str, bytes], header: str, start: int, end: int | None
) -> None:
    """A single byte range is answered 206 with that slice and a matching Content-Range,
    which is what lets a device resume a large download."""
    path, data = published
    response = httpx.get(served.url + path, headers={"Range": header})
    expected = data[start:end]
    assert response.status_code == 206
    assert response.content == expected
    first = start if start >= 0 else len(data) + start
    assert response.headers["content-range"] == (
        f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    )
    assert response.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "header",
    ["bytes=1500000-", "bytes=2000000-2000010", "bytes=500-100", "bytes=-0", "bytes=x-y"],
    ids=["start-at-size", "past-end", "reversed", "empty-suffix", "garbage"],
)
def test_unsatisfiable_ranges_get_416(
    served: Served, published: tuple[str, bytes], header: str
) -> None:
    """A byte range outside the file, reversed or malformed is answered 416 with the size."""
    path, data = published
    response = httpx.get(served.url + path, headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(data)}"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Range": "bytes=0-1,5-6"},
        {"Range": "items=0-1"},
        {"Range": "bytes=0-9", "If-Range": '"old"'},
    ],
    ids=["no-range", "multi-range", "other-unit", "if-range-mismatch"],
)
def test_whole_file_when_a_range_does_not_apply(
    served: Served, published: tuple[str, bytes], headers: dict[str, str]
) -> None:
    """No range, several ranges, another unit or a stale If-Range get the whole file (200)."""
    path, data = published
    response = httpx.get(served.url + path, headers=headers)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["accept-ranges"] == "bytes"


def test_if_range_with_the_current_etag_resumes(
    served: Served, published: tuple[str, bytes]
) -> None:
    """If-Range carrying the file's current ETag gets the range (206)."""
    path, data = published
    etag = httpx.head(served.url + path).headers["etag"]
    response = httpx.get(served.url + path, headers={"Range": "bytes=10-19", "If-Range": etag})
    assert response.status_code == 206 and response.content == data[10:20]


def test_metadata_is_json_and_timestamp_is_not_cached(served: Served) -> None:
    """Metadata is served as JSON without authentication; timestamp.json must be
    revalidated while versioned files are immutable; unknown names are 404."""
    timestamp = httpx.get(f"{served.url}/tuf/metadata/timestamp.json")
    root = httpx.get(f"{served.url}/tuf/metadata/1.root.json")
    assert timestamp.status_code == 200 and root.status_code == 200
    assert timestamp.headers["content-type"] == "application/json"
    assert timestamp.headers["cache-control"] == "no-cache"
    assert "immutable" in root.headers["cache-control"]
    assert root.content == served.repo.root_bytes(1)
    for name in ("root.json", "0.root.json", "2.keys.json", "timestamp.json.tmp"):
        assert httpx.get(f"{served.url}/tuf/metadata/{name}").status_code == 404


def raw_get(served: Served, path: str) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalization)."""
    port = int(served.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_path_traversal_is_refused(served: Served) -> None:
    """Encoded '..', hidden names and symlinks out of the targets folder never serve a
    file outside it, such as a private key."""
    key_file = next(served.keys_dir.glob("targets.*.pem"))
    link_dir = served.repo.targets_dir / "links"
    link_dir.mkdir(parents=True, exist_ok=True)
    (link_dir / "key.pem").symlink_to(key_file)
    attempts = [
        (f"/tuf/targets/..%2F..%2Fkeys%2F{key_file.name}", 400),
        (f"/tuf/targets/%2e%2e/%2e%2e/keys/{key_file.name}", 400),
        (f"/tuf/targets/ranges/..%2F..%2F..%2Fkeys%2F{key_file.name}", 400),
        ("/tuf/targets/..%2F.lock", 400),
        ("/tuf/targets/links/key.pem", 400),
        (f"/tuf/metadata/..%2F..%2Fkeys%2F{key_file.name}", 404),
    ]
    for path, expected in attempts:
        status, body = raw_get(served, path)
        assert status == expected, path
        assert b"PRIVATE KEY" not in body, path


def test_tuf_needs_no_login_but_uploads_need_an_operator(served: Served) -> None:
    """The mirror is public (TUF verifies); an upload without a token is 401 and a
    viewer's upload is 403."""
    assert httpx.get(f"{served.url}/tuf/metadata/1.root.json").status_code == 200
    anonymous = httpx.post(
        f"{served.url}/api/models",
        params={"name": "x", "version": "1", "runtime": "onnx", "filename": "x.onnx"},
        content=b"abc",
    )
    assert anonymous.status_code == 401
    assert upload(served, b"abc", name="x", token=served.viewer).status_code == 403


def test_upload_errors_leave_nothing_behind(served: Served) -> None:
    """Too large (streamed or declared), duplicate and invalid uploads get 413, 409 and
    422, publish nothing and leave no staging files."""
    before = served.repo.load().versions()
    assert upload(served, os.urandom(LIMIT + 1), name="huge").status_code == 413
    declared = upload(served, os.urandom(LIMIT + 1), name="huge", chunked=False)
    assert declared.status_code == 413
    assert upload(served, b"x" * 10, name="bad", runtime="tensorflow").status_code == 422
    assert upload(served, b"x" * 10, name="..", filename="x.onnx").status_code == 422
    assert upload(served, b"", name="empty").status_code == 422
    assert served.repo.load().versions() == before
    assert upload(served, b"first", name="dup").status_code == 201
    duplicate = upload(served, b"second", name="dup")
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["detail"]
    assert list(served.repo.staging_dir.iterdir()) == []


def test_model_list_filters_and_cli(served: Served, tmp_path: Path) -> None:
    """GET /api/models filters by name, runtime and device class (models without classes
    suit every class), and 'edgefleet models upload' and 'models list' use the API."""
    source = tmp_path / "chat.gguf"
    source.write_bytes(os.urandom(300_000))
    runner = CliRunner()
    env = {"EDGEFLEET_URL": served.url, "EDGEFLEET_TOKEN": served.operator}
    result = runner.invoke(
        cli_app,
        ["models", "upload", str(source), "--name", "chat", "--version", "2.0",
         "--runtime", "llama.cpp", "--device-class", "cpu-x86", "--quantization", "Q4_1"],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "chat/2.0/chat.gguf" in result.output

    def names(**params: str) -> set[str]:
        response = httpx.get(f"{served.url}/api/models", params=params, headers=served.auth())
        assert response.status_code == 200
        return {f"{m['name']}/{m['version']}" for m in response.json()["data"]}

    assert names(runtime="llama.cpp") == {"chat/2.0"}
    assert names(name="chat") == {"chat/2.0"}
    assert "chat/2.0" not in names(device_class="jetson-orin")
    assert "chat/2.0" in names(device_class="cpu-x86")
    assert "ranges/1.0" in names(device_class="jetson-orin")  # no classes: fits all

    listed = runner.invoke(cli_app, ["models", "list", "--json", "--name", "chat"], env=env)
    assert listed.exit_code == 0, listed.output
    assert '"quantization": "Q4_1"' in listed.output

    again = runner.invoke(
        cli_app,
        ["models", "upload", str(source), "--name", "chat", "--version", "2.0",
         "--runtime", "llama.cpp"],
        env=env,
    )  # fmt: skip
    assert again.exit_code == 1 and "409" in again.output


def test_models_add_on_the_host_then_served(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'edgefleet models add' on the controller host publishes into the same repository,
    and the running controller serves the new target at once."""
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"environment: development\n"
        f"database_url: sqlite:///{served.repo.dir.parent / 'controller.db'}\n"
        f"updates:\n  repo_dir: {served.repo.dir}\n  keys_dir: {served.keys_dir}\n"
    )
    source = tmp_path / "vision.onnx"
    source.write_bytes(os.urandom(1_200_000))
    result = CliRunner().invoke(
        cli_app,
        ["models", "add", str(source), "--config", str(config), "--name", "vision",
         "--version", "3", "--runtime", "onnx", "--expected-latency-ms", "12.5"],
        env={"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    state = served.repo.load()
    target = state.targets.signed.targets["vision/3/vision.onnx"]
    assert target.custom["edgefleet"]["expected_latency_ms"] == 12
    path = f"/tuf/targets/vision/3/{target.hashes['sha256']}.vision.onnx"
    assert httpx.get(served.url + path).content == source.read_bytes()
    duplicate = CliRunner().invoke(
        cli_app,
        ["models", "add", str(source), "--config", str(config), "--name", "vision",
         "--version", "3", "--runtime", "onnx"],
        env={"EDGEFLEET_KEY_PASSPHRASE": PASSPHRASE},
    )  # fmt: skip
    assert duplicate.exit_code == 1
    assert "vision version 3 already exists" in duplicate.output
    assert KeyStore(served.keys_dir, SecretStr(PASSPHRASE)).files()
