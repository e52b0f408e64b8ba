"""The one HTTP client for the controller's API: where it is, how to authenticate, calls.

Everything that talks to a controller over HTTP (the CLI, the demo's traffic, flashing,
drills) goes through here, so errors read the same everywhere: ``ApiError`` with the
controller's own words ("409 from /api/x: already exists") or "cannot reach the controller".

Resolution order for URL and token: command-line options, ``EDGEFLEET_URL`` /
``EDGEFLEET_TOKEN``, then the credentials file the demo writes (``EDGEFLEET_CLI_CONFIG``,
default ``.edgefleet/demo/cli.json`` under the current folder).
"""

import json
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEMO_CLI_CONFIG = Path(".edgefleet/demo/cli.json")
DEFAULT_TIMEOUT_S = 10.0
UPLOAD_CHUNK_BYTES = 1024 * 1024
# Query parameters as httpx takes them: a mapping, or (name, value) pairs for repeated names.
Params = dict[str, Any] | list[tuple[str, Any]] | None


class ApiError(RuntimeError):
    """The controller could not be reached or refused the request; the text says why.
    ``status`` is the HTTP status of a refusal (None when no answer came)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """The authentication every API call sends."""
        return {"Authorization": f"Bearer {self.token}"}


def resolve_target(url: str | None, token: str | None) -> Target:
    file = Path(os.environ.get("EDGEFLEET_CLI_CONFIG", DEMO_CLI_CONFIG))
    saved: dict[str, Any] = {}
    if file.is_file():
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ApiError(f"cannot read CLI credentials {file}: {e}") from e
        if not isinstance(saved, dict):
            raise ApiError(f"CLI credentials {file} must be a JSON object with url and token")
    final_url = url or os.environ.get("EDGEFLEET_URL") or saved.get("url")
    final_token = token or os.environ.get("EDGEFLEET_TOKEN") or saved.get("token")
    if not final_url:
        state = "has none" if file.is_file() else "does not exist"
        raise ApiError(
            "no controller URL: pass --url or set EDGEFLEET_URL (or EDGEFLEET_CLI_CONFIG: a"
            f" JSON file with url and token; {file} {state})"
        )
    if not final_token:
        raise ApiError(
            "no API token: pass --token or set EDGEFLEET_TOKEN "
            "(create one on the controller host with 'edgefleet token create --username NAME"
            " -c CONFIG')"
        )
    return Target(url=str(final_url).rstrip("/"), token=str(final_token))


def open_client(
    target: Target, *, timeout: float | httpx.Timeout = 30.0, ca_file: Path | None = None
) -> httpx.Client:
    """An ``httpx.Client`` with the controller as base URL and the token in its headers,
    for a caller that makes many calls (close it, or use it as a context manager). With
    ``ca_file`` the controller's HTTPS certificate is verified against that CA (a private
    CA such as the device CA) instead of the public ones."""
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        try:
            verify = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ApiError(f"cannot use {ca_file} as the controller's CA: {e}") from e
    return httpx.Client(base_url=target.url, headers=target.headers, timeout=timeout, verify=verify)


def error_detail(response: httpx.Response) -> Any:
    """What the controller said about a refusal: its problem ``detail``, else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("detail", response.text) if isinstance(body, dict) else response.text


def check_response(response: httpx.Response, path: str) -> Any:
    """The JSON body of a successful answer (None for an empty one, e.g. 204); ApiError
    with the controller's words else."""
    if response.status_code >= 400:
        raise ApiError(
            f"{response.status_code} from {path}: {error_detail(response)}",
            status=response.status_code,
        )
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError as e:
        raise ApiError(f"{path} did not answer JSON", status=response.status_code) from e


def request_json(
    target: Target,
    method: str,
    path: str,
    *,
    params: Params = None,
    body: Any = None,
    timeout: float | httpx.Timeout | None = None,
    client: httpx.Client | None = None,
) -> Any:
    """One authenticated API call; ApiError with the controller's own words on failure.
    ``client`` (from ``open_client``) reuses its connection and, unless ``timeout`` is
    given, its timeout; without one the call times out after ``DEFAULT_TIMEOUT_S``."""
    try:
        if client is not None:
            extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
            response = client.request(method, path, params=params, json=body, **extra)
        else:
            response = httpx.request(
                method,
                f"{target.url}{path}",
                params=params,
                json=body,
                headers=target.headers,
                timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
            )
    except httpx.HTTPError as e:
        raise ApiError(f"cannot reach the controller at {target.url}: {e}") from e
    return check_response(response, path)


def get_json(target: Target, path: str, params: Params = None) -> Any:
    return request_json(target, "GET", path, params=params)


def post_json(target: Target, path: str, body: Any = None, *, params: Params = None) -> Any:
    return request_json(target, "POST", path, params=params, body=body)


def get_public_json(url: str, path: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
    """An unauthenticated GET of a public endpoint (e.g. ``/api/images/key``) of the
    controller at ``url``."""
    base = url.rstrip("/")
    try:
        response = httpx.get(f"{base}{path}", timeout=timeout)
    except httpx.HTTPError as e:
        raise ApiError(f"cannot reach the controller at {base}: {e}") from e
    return check_response(response, path)


def _chunks(file: Path) -> Iterator[bytes]:
    with file.open("rb") as f:
        while chunk := f.read(UPLOAD_CHUNK_BYTES):
            yield chunk


def upload_file(
    target: Target,
    path: str,
    file: Path,
    *,
    params: Params = None,
    read_timeout_s: float = 600.0,
) -> Any:
    """POST ``file`` as the raw request body (streamed, never read whole into memory),
    for endpoints that take an upload such as ``/api/models``."""
    headers = {
        **target.headers,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(file.stat().st_size),
    }
    try:
        response = httpx.post(
            f"{target.url}{path}",
            params=params,
            content=_chunks(file),
            headers=headers,
            timeout=httpx.Timeout(30.0, read=read_timeout_s),
        )
    except httpx.HTTPError as e:
        raise ApiError(f"cannot reach the controller at {target.url}: {e}") from e
    return check_response(response, path)


__all__ = [
    "DEMO_CLI_CONFIG",
    "ApiError",
    "Params",
    "Target",
    "check_response",
    "error_detail",
    "get_json",
    "get_public_json",
    "open_client",
    "post_json",
    "request_json",
    "resolve_target",
    "upload_file",
]
