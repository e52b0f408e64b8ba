"""`edgefleet demo`, the README's first command, as a user runs it (2 devices to save time)."""

import json
import os
import re
import signal
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import port_open, wait_for
from tests.procs import Proc, processes, run_cli

pytestmark = pytest.mark.e2e


def _mqtt_login(
    host: str, port: int, data_dir: Path, user: str | None, password: str | None
) -> str:
    """What the demo's broker answers a paho client's CONNECT with (over its TLS, no client
    certificate), e.g. ``Success`` or ``Not authorized``."""
    answers: list[str] = []
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"probe-{user}",
        protocol=mqtt.MQTTv311,
    )
    client.tls_set(ca_certs=str(data_dir / "pki" / "ca.crt"))
    if user is not None:
        client.username_pw_set(user, password)
    client.on_connect = lambda c, u, f, reason, p: answers.append(str(reason))
    client.connect(host, port)
    client.loop_start()
    try:
        wait_for(lambda: answers, 10, what="the broker's CONNACK")
    finally:
        client.loop_stop()
        client.disconnect()
    return answers[0]


def test_demo_brings_up_a_working_fleet_and_stops_cleanly(model_path: Path, tmp_path: Path) -> None:
    """The demo prints a console URL and login that work, its devices are online over mutual
    TLS with the demo's own CA, attest cleanly (their factory model is a signed TUF target)
    and answer chat completions through the embedded broker setup, the CLI sees them, and
    Ctrl-C stops every process with exit status 0."""
    data_dir = tmp_path / "demo"
    with processes(tmp_path) as procs:
        demo = Proc(
            "demo",
            [
                "-m",
                "controller",
                "demo",
                "--devices",
                "2",
                "--model",
                str(model_path),
                "--data-dir",
                str(data_dir),
            ],
            tmp_path,
        )
        procs.append(demo)
        wait_for(
            lambda: "Press Ctrl-C to stop." in demo.log() or demo.popen.poll() is not None,
            180,
            interval=0.5,
            what="the demo banner",
        )
        out = demo.log()
        assert demo.popen.poll() is None, out
        console = re.search(r"Console\s+(http://\S+)/console", out)
        login = re.search(r"Login\s+admin / (\S+)", out)
        devices = dict(re.findall(r"Device\s+(\S+): (http://\S+)", out))
        assert console and login and len(devices) == 2, out
        # MQTT runs over mutual TLS with the demo's own CA: the devices came online with it.
        assert "MQTT on mqtts://" in out and "mutual TLS" in out, out
        device_config = yaml.safe_load((data_dir / "agents" / "demo-edge-1.yaml").read_text())
        assert device_config["mqtt"]["url"].startswith("mqtts://")
        assert Path(device_config["mqtt"]["cert_file"]).is_file()
        # The broker takes only the run's logins: each device its own (a 0600 file), and
        # no anonymous or made-up client (issue 21: a rogue device logged in and enrolled).
        assert device_config["mqtt"]["username"] == "demo-edge-1"
        secret_file = Path(device_config["mqtt"]["password_file"])
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "broker.passwd").stat().st_mode & 0o777 == 0o600
        assert secret_file.read_text() not in out
        broker = re.search(r"MQTT on mqtts://([\d.]+):(\d+)", out)
        assert broker, out
        for user, password in [(None, None), ("rogue-1", "guess"), ("demo-edge-1", "guess")]:
            assert _mqtt_login(broker.group(1), int(broker.group(2)), data_dir, user, password) == (
                "Not authorized"
            ), user
        # The right password under another client id is refused too (a login cannot take
        # over another client's session); the device's own connection shows it works.
        assert _mqtt_login(
            broker.group(1), int(broker.group(2)), data_dir, "demo-edge-1", secret_file.read_text()
        ) == ("Not authorized")

        with httpx.Client(base_url=console.group(1), timeout=30) as browser:

            def log_in(password: str) -> int:
                form = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/login").text)
                assert form, "the login form carries a CSRF token"
                data = {"username": "admin", "password": password, "csrf_token": form.group(1)}
                return browser.post("/login", data=data).status_code

            assert log_in("wrong-password") == 401
            assert log_in(login.group(1)) == 303
            page = browser.get("/console").text
            assert page.count('class="state online"') == 2
            assert "demo-edge-1" in page and "demo-edge-2" in page

        env = {**os.environ, "EDGEFLEET_CLI_CONFIG": str(data_dir / "cli.json")}
        listed = run_cli(["-m", "controller", "devices", "list", "--json"], env=env)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["online"] == 2

        token = json.loads((data_dir / "cli.json").read_text())["token"]
        api = httpx.Client(
            base_url=console.group(1),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        models = api.get("/api/models").json()["data"]
        assert [(m["name"], m["version"]) for m in models] == [("smollm2-135m", "1.0")]

        def attested(device_id: str) -> dict | None:
            view = api.get(f"/api/devices/{device_id}/attestation").json()
            return view if view["results"] else None

        for device_id in devices:
            view = wait_for(lambda d=device_id: attested(d), 60, what=f"{device_id}'s quote")
            assert view["results"][0]["ok"], view
            assert not view["quarantined"], view
            assert view["results"][0]["measurements"]["model:smollm2-135m"] == models[0]["sha256"]
        api.close()

        url = devices["demo-edge-2"]
        answer = httpx.post(
            url,
            timeout=120,
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1

        assert demo.stop(signal.SIGINT, timeout=60) == 0, demo.log()
        final = demo.log()
        assert "edgefleet demo stopped." in final
        assert "Traceback" not in final
        agent_ports = [int(u.split(":")[2].split("/")[0]) for u in devices.values()]
        assert not any(port_open(p) for p in agent_ports), "agents must be stopped with the demo"


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(model_path: Path, tmp_path: Path) -> None:
    """--data-dir pointing at a non-empty folder without the demo's marker is refused, untouched."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("keep me")
    result = run_cli(
        ["-m", "controller", "demo", "--model", str(model_path), "--data-dir", str(precious)]
    )
    assert result.returncode == 1
    assert "was not made by the demo" in result.stderr
    assert (precious / "thesis.txt").read_text() == "keep me"
