"""What a drill asks of the controller: its API through ``controller.api_client`` (via
``ControllerHandle.call``), and the TUF trusted root from its TUF mirror.

Calls made while faults are in force (polls) answer None or "unknown" when the controller
cannot be reached or refuses; set-up calls raise ``DrillError`` with the controller's words.
"""

from typing import Any

import httpx

from controller.api_client import ApiError, open_client
from controller.drills.processes import ControllerHandle, DrillError

TELEMETRY_PAGE = 5000


def trusted_root(controller: ControllerHandle) -> bytes:
    """The controller's first TUF root (the agents' trust anchor), as served."""
    path = "/tuf/metadata/1.root.json"
    try:
        with open_client(controller.target) as client:
            response = client.get(path)
    except httpx.HTTPError as e:
        raise DrillError(f"cannot reach the controller at {controller.url}: {e}") from e
    if response.status_code != 200:
        raise DrillError(f"controller has no TUF root ({response.status_code}); updates off?")
    return response.content


def device_state(controller: ControllerHandle, device_id: str) -> str | None:
    """``online``, ``offline``, ...; None when the controller does not say."""
    try:
        body = controller.call("GET", f"/api/devices/{device_id}", timeout=5)
    except ApiError:
        return None
    return str(body.get("state"))


def quarantine(controller: ControllerHandle, device_id: str) -> Any:
    """The desired ``quarantine`` the controller set for the device, None when it set
    none, ``"unknown"`` when it does not say."""
    try:
        shadow = controller.call("GET", f"/api/devices/{device_id}/shadow", timeout=5)
    except ApiError:
        return "unknown"
    return (shadow.get("desired") or {}).get("quarantine")


def shadow(controller: ControllerHandle, device_id: str) -> dict[str, Any]:
    """The device's shadow document; empty when the controller does not answer (a poll
    asks again)."""
    try:
        body = controller.call("GET", f"/api/devices/{device_id}/shadow")
    except ApiError:
        return {}
    return body if isinstance(body, dict) else {}


def stored_telemetry(
    controller: ControllerHandle, device_id: str
) -> tuple[list[tuple[int, int]], int]:
    """(epoch, seq) of every record the controller holds, and the drops it was told of."""
    keys: list[tuple[int, int]] = []
    reported_drops = 0
    offset = 0
    while True:
        try:
            page = controller.call(
                "GET",
                f"/api/devices/{device_id}/telemetry",
                params={"limit": TELEMETRY_PAGE, "offset": offset},
            )
        except ApiError as e:
            raise DrillError(f"GET telemetry of {device_id}: {e}") from e
        for r in page["data"]:
            keys.append((int(r["epoch"]), int(r["seq"])))
            if r["name"] == "outbox_drops":
                reported_drops += sum(int(v) for v in r["body"].values())
        offset += len(page["data"])
        if not page["data"] or offset >= int(page["count"]):
            return keys, reported_drops


def ingest_duplicates(controller: ControllerHandle) -> int | None:
    """The controller's ``records_duplicate`` counter (redeliveries it discarded), or
    None when it cannot be read. Controller-wide, and reset when the controller starts."""
    try:
        return int(controller.call("GET", "/api/ingest/stats", timeout=5)["records_duplicate"])
    except (ApiError, KeyError, ValueError, TypeError):
        return None


def set_desired(controller: ControllerHandle, device_id: str, labels: dict[str, str]) -> int:
    """Desire ``labels`` on the device; the new desired version."""
    try:
        body = controller.call(
            "PATCH", f"/api/devices/{device_id}/shadow/desired", body={"labels": labels}
        )
    except ApiError as e:
        raise DrillError(f"PATCH desired for {device_id}: {e}") from e
    return int(body["desired_version"])


def start_rollout(controller: ControllerHandle, body: dict[str, Any]) -> int:
    """Create the rollout ``body`` describes; its id."""
    try:
        return int(controller.call("POST", "/api/rollouts", body=body)["id"])
    except ApiError as e:
        raise DrillError(f"POST /api/rollouts: {e}") from e


def rollout_progress(controller: ControllerHandle, rollout_id: int) -> tuple[int, str] | None:
    """(wave, status) of the rollout; None when the controller does not say."""
    try:
        view = controller.call("GET", f"/api/rollouts/{rollout_id}", timeout=5)
        return int(view["wave"]), str(view["status"])
    except (ApiError, KeyError, ValueError, TypeError):
        return None


def store_report(controller: ControllerHandle, report: dict[str, Any]) -> int:
    """POST the drill's report; its id. ApiError when the controller does not take it."""
    return int(controller.call("POST", "/api/drills", body=report)["id"])


__all__ = [
    "device_state",
    "ingest_duplicates",
    "quarantine",
    "rollout_progress",
    "set_desired",
    "shadow",
    "start_rollout",
    "store_report",
    "stored_telemetry",
    "trusted_root",
]
