"""The CLI's view of the controller: where it is, how to authenticate, and HTTP calls.

Resolution order for URL and token: command-line options, ``EDGEFLEET_URL`` /
``EDGEFLEET_TOKEN``, then the credentials file the demo writes (``EDGEFLEET_CLI_CONFIG``,
default ``.edgefleet/demo/cli.json`` under the current folder).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

DEMO_CLI_CONFIG = Path(".edgefleet/demo/cli.json")


class ApiError(RuntimeError):
    """The controller could not be reached or refused the request; the text says why."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    token: str


def resolve_target(url: str | None, token: str | None) -> Target:
    file = Path(os.environ.get("EDGEFLEET_CLI_CONFIG", DEMO_CLI_CONFIG))
    saved: dict[str, Any] = {}
    if file.is_file():
        try:
            saved = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ApiError(f"cannot read CLI credentials {file}: {e}") from e
    final_url = url or os.environ.get("EDGEFLEET_URL") or saved.get("url")
    final_token = token or os.environ.get("EDGEFLEET_TOKEN") or saved.get("token")
    if not final_url:
        raise ApiError("no controller URL: pass --url or set EDGEFLEET_URL")
    if not final_token:
        raise ApiError(
            "no API token: pass --token or set EDGEFLEET_TOKEN "
            "(create one with 'edgefleet token create')"
        )
    return Target(url=str(final_url).rstrip("/"), token=str(final_token))


def request_json(
    target: Target,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
) -> Any:
    """One authenticated API call; ApiError with the controller's own words on failure."""
    try:
        response = httpx.request(
            method,
            f"{target.url}{path}",
            params=params,
            json=body,
            headers={"Authorization": f"Bearer {target.token}"},
            timeout=10,
        )
    except httpx.HTTPError as e:
        raise ApiError(f"cannot reach the controller at {target.url}: {e}") from e
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ApiError(f"{response.status_code} from {path}: {detail}")
    return response.json()


def get_json(target: Target, path: str, params: dict[str, Any] | None = None) -> Any:
    return request_json(target, "GET", path, params=params)
