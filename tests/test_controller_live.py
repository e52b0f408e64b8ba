"""The controller against a real Mosquitto: ingest, bad input, API auth and the console."""

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from controller.auth.credentials import SESSION_COOKIE
from controller.auth.csrf import token_for_session
from shared import MAX_PAYLOAD_BYTES, encode_message
from tests.conftest import Broker, wait_for
from tests.controller_harness import PASSWORD, LiveController, live_controller, login_form_token
from tests.test_protocol import birth, heartbeat_doc


@pytest.fixture
def live(mosquitto: Broker, tmp_path: Path) -> Iterator[LiveController]:
    with live_controller(tmp_path, {"mode": "external", "url": mosquitto.url}) as controller:
        yield controller


@pytest.fixture
def publisher(mosquitto: Broker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-publisher"
    )
    client.connect(mosquitto.host, mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(5)


def test_bad_messages_are_rejected_counted_and_good_ones_land(
    live: LiveController, publisher: mqtt.Client
) -> None:
    """Malformed, oversized, spoofed and off-version messages are dead-lettered by reason;
    the valid birth sent after them lands, and the controller stays healthy."""
    publish(publisher, "ef/v1/dev-1/heartbeat", b"{definitely not json")
    publish(publisher, "ef/v1/dev-1/heartbeat", b"{" + b" " * (MAX_PAYLOAD_BYTES + 10) + b"}")
    publish(
        publisher, "ef/v1/dev-2/heartbeat", json.dumps(heartbeat_doc(device_id="dev-1")).encode()
    )
    publish(publisher, "ef/v1/NOT A VALID ID/status", b"{}")
    publish(publisher, "ef/v1/dev-1/heartbeat", json.dumps(heartbeat_doc(v=99)).encode())
    topic, payload = encode_message(birth("dev-ok"))
    publish(publisher, topic, payload)

    wait_for(lambda: live.device("dev-ok"), 10, what="the valid birth to land")
    stats = wait_for(
        lambda: (
            (s := live.client.get("/api/ingest/stats", headers=live.auth).json())["rejected_total"]
            == 5
            and s
        ),
        10,
        what="five rejects to be counted",
    )
    assert stats["rejected"] == {
        "bad_json": 1,
        "oversized": 1,
        "spoofed_device_id": 1,
        "bad_topic": 1,
        "unsupported_version": 1,
    }
    rejected = live.client.get("/api/ingest/rejected", headers=live.auth).json()
    assert {r["reason"] for r in rejected} == set(stats["rejected"])
    oversized = next(r for r in rejected if r["reason"] == "oversized")
    assert "limit is 65536" in oversized["detail"]
    assert live.device("dev-2") is None, "a spoofed topic must not create a device"
    health = live.client.get("/healthz").json()
    assert health.pop("tuf_signing")["status"] in ("off", "ok")  # no repository, or a signed one
    assert health == {
        "status": "ok",
        "database": True,
        "broker": True,
        "workers_down": [],
        "broker_session": {
            "client_id": "edgefleet-controller",
            "taken_over": False,
            "takeovers": 0,
        },
    }


def test_silent_device_goes_offline_by_timeout(
    live: LiveController, publisher: mqtt.Client
) -> None:
    """A device that stops heartbeating is swept offline with reason heartbeat_timeout."""
    message = birth("dev-quiet").model_copy(update={"heartbeat_interval_s": 0.2})
    publish(publisher, *encode_message(message))
    wait_for(
        lambda: (d := live.device("dev-quiet")) and d["state_reason"] == "heartbeat_timeout",
        10,
        what="the timeout sweep",
    )
    events = live.client.get("/api/devices/dev-quiet/events", headers=live.auth).json()
    assert [e["event"] for e in events] == ["heartbeat_timeout", "birth"]


def test_api_refuses_anonymous_and_bad_tokens_with_problem_details(live: LiveController) -> None:
    """No credentials or a wrong token gets 401 problem+json; unknown devices get 404."""
    for headers in ({}, {"Authorization": "Bearer eft_wrong"}):
        response = live.client.get("/api/devices", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
    missing = live.client.get("/api/devices/nope", headers=live.auth)
    assert missing.status_code == 404
    assert "not registered" in missing.json()["detail"]
    bad_query = live.client.get("/api/devices?limit=0", headers=live.auth)
    assert bad_query.status_code == 422


def test_console_login_shows_the_fleet(live: LiveController, publisher: mqtt.Client) -> None:
    """The console redirects to login, refuses a wrong password and cross-site posts,
    and after login lists devices with their state and hardware class."""
    publish(publisher, *encode_message(birth("dev-console")))
    wait_for(lambda: live.device("dev-console"), 10, what="birth")
    client = live.client
    first = client.get("/console", follow_redirects=False)
    assert (first.status_code, first.headers["location"]) == (303, "/login")
    form = {"username": "admin", "csrf_token": login_form_token(client)}
    wrong = client.post("/login", data=form | {"password": "nope-nope-nope"})
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    form["csrf_token"] = login_form_token(client)
    forged = client.post(
        "/login",
        data=form | {"password": PASSWORD},
        headers={"Origin": "http://evil.example"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    form["csrf_token"] = login_form_token(client)
    ok = client.post("/login", data=form | {"password": PASSWORD}, follow_redirects=False)
    assert ok.status_code == 303
    assert "HttpOnly" in ok.headers["set-cookie"] and "SameSite=strict" in ok.headers["set-cookie"]
    page = client.get("/console")
    assert page.status_code == 200
    assert "dev-console" in page.text and "x86_64-cpu" in page.text and "online" in page.text
    assert client.get("/api/devices").json()["online"] == 1, (
        "the page's JSON API accepts the session"
    )
    client.post("/logout", data={"csrf_token": token_for_session(client.cookies[SESSION_COOKIE])})
    assert client.get("/api/devices").status_code == 401
