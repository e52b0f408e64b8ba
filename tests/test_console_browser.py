"""The console in a real browser (Debian's Chromium driven by Playwright)."""

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from shared import Death, encode_message
from tests.conftest import ROOT, Broker, free_port, port_open, wait_for
from tests.procs import Proc, processes, run_cli
from tests.test_protocol import birth

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "browser-test-password"


@pytest.fixture
def controller(mosquitto: Broker, tmp_path: Path) -> Iterator[tuple[str, Proc]]:
    config = tmp_path / "controller.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "environment": "development",
                "database_url": f"sqlite:///{tmp_path / 'c.db'}",
                "broker": {"mode": "external", "url": mosquitto.url},
                "secure_cookies": False,
            }
        )
    )
    made = run_cli(
        [
            "-m",
            "controller",
            "admin",
            "create",
            "--username",
            "admin",
            "--password-stdin",
            "--config",
            str(config),
        ],
        stdin=PASSWORD + "\n",
    )
    assert made.returncode == 0, made.stderr
    port = free_port()
    with processes(tmp_path) as procs:
        procs.append(
            Proc(
                "controller",
                ["-m", "controller", "serve", "--config", str(config), "--port", str(port)],
                tmp_path,
            )
        )
        wait_for(lambda: port_open(port), 30, what="controller HTTP")
        yield f"http://127.0.0.1:{port}", procs[0]
        assert procs[0].stop(signal.SIGTERM) == 0


def test_fleet_page_updates_live_without_reload(
    controller: tuple[str, Proc], mosquitto: Broker
) -> None:
    """After login the fleet page shows a device coming online and then going offline by
    its will, in place (the page is never reloaded); screenshots land in test-artifacts/."""
    from playwright.sync_api import sync_playwright

    controller_url, controller_proc = controller

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing (scripts/dev test installs Debian's chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    device = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-browser")
    device.connect(mosquitto.host, mosquitto.port)
    device.loop_start()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                # Containers often give /dev/shm 64 MB, where renderers crash mid-navigation.
                "--disable-dev-shm-usage",
                "--disable-crash-reporter",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.on("crash", lambda _: print("chromium: the page's renderer crashed"))
        try:
            page.goto(f"{controller_url}/console")
            assert page.url.endswith("/login")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", PASSWORD)
            with page.expect_response(
                lambda r: r.url.endswith("/login") and r.request.method == "POST",
                timeout=90_000,  # a cold Chromium on a busy box
            ) as login:
                page.click("button[type=submit]")
            assert login.value.status == 303, _diagnose(page, controller_proc)
            page.wait_for_url("**/console", timeout=90_000)
            page.evaluate("window.__notReloaded = true")

            device.publish(*encode_message(birth("dev-browser", bd_seq=0)), qos=1).wait_for_publish(
                5
            )
            row = page.locator("tr[data-device='dev-browser'] .state")
            row.wait_for(timeout=60_000)
            assert row.inner_text() == "online"
            assert page.locator("#count-online").inner_text() == "1"
            assert "x86_64-cpu" in page.locator("tr[data-device='dev-browser']").inner_text()
            page.screenshot(path=str(ARTIFACTS / "console-fleet-online.png"), full_page=True)

            death = Death(device_id="dev-browser", bd_seq=0, reason="will")
            device.publish(*encode_message(death), qos=1).wait_for_publish(5)
            page.wait_for_function(
                "document.querySelector(\"tr[data-device='dev-browser'] .state\")"
                ".textContent === 'offline'",
                timeout=60_000,
            )
            assert page.evaluate("window.__notReloaded") is True
            assert page.locator("#count-offline").inner_text() == "1"
            page.screenshot(path=str(ARTIFACTS / "console-fleet-offline.png"), full_page=True)
        except BaseException:
            print(_diagnose(page, controller_proc))
            raise
        finally:
            browser.close()
            device.loop_stop()
            device.disconnect()


def _diagnose(page: Any, proc: Proc) -> str:
    """What the browser shows and what the controller logged, for a failure's report."""
    try:
        page.screenshot(path=str(ARTIFACTS / "console-failure.png"), full_page=True)
        shown = f"url={page.url}\n{page.content()[:3000]}"
    except Exception as e:  # the page itself may be what broke
        shown = f"page unavailable: {e!r}"
    return f"----- browser -----\n{shown}\n----- controller log -----\n{proc.log()[-6000:]}"
