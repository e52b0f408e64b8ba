"""The console in a real browser (Debian's Chromium driven by Playwright).

Screenshots of each step land in ``$EDGEFLEET_TEST_ARTIFACTS`` (default ``test-artifacts/``,
git-ignored); see docs/console.md."""

import os
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from playwright.sync_api import expect

from shared import Death, encode_message
from shared.messages import Record, TelemetryBatch
from tests.conftest import ROOT, Broker, free_port, port_open, wait_for
from tests.procs import Proc, processes, run_cli
from tests.rollout_world import World
from tests.test_protocol import birth

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("EDGEFLEET_TEST_ARTIFACTS", ROOT / "test-artifacts"))
PASSWORD = "browser-test-password"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    # Containers often give /dev/shm 64 MB, where renderers crash mid-navigation.
    "--disable-dev-shm-usage",
    "--disable-crash-reporter",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


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
                # Rollouts are steered from the page; no scheduler step between the clicks.
                "rollouts": {"tick_interval_s": 3600},
            }
        )
    )
    assert run_cli(["-m", "controller", "db", "init", "-c", str(config)]).returncode == 0
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


@contextmanager
def chromium_page(proc: Proc) -> Iterator[Any]:
    """A fresh Chromium page; on any failure the screenshot and logs are printed."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing (scripts/dev test installs Debian's chromium)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("crash", lambda _: print("chromium: the page's renderer crashed"))
        page.on("console", lambda m: print(f"browser console: {m.type}: {m.text}"))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.script_errors = errors  # read by tests: a script error fails the step
        # The pages run under their Content-Security-Policy (no bypass): anything it blocks
        # is reported on the console and fails the test at the end.
        blocked: list[str] = []
        page.on(
            "console",
            lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.on(
            "response",
            lambda r: (
                print(f"browser: {r.request.method} {r.url} -> {r.status}")
                if not r.url.split("?")[0].endswith((".js", ".css"))
                else None
            ),
        )
        try:
            yield page
            assert not blocked, f"the console broke its own Content-Security-Policy: {blocked}"
        except BaseException:
            print(_diagnose(page, proc))
            raise
        finally:
            browser.close()


def log_in(page: Any, controller_url: str, proc: Proc) -> None:
    page.goto(f"{controller_url}/console")
    assert page.url.endswith("/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", PASSWORD)
    with page.expect_response(
        lambda r: r.url.endswith("/login") and r.request.method == "POST",
        timeout=90_000,  # a cold Chromium on a busy box
    ) as login:
        page.click("button[type=submit]")
    assert login.value.status == 303, _diagnose(page, proc)
    # Wait for what the fleet page renders rather than for a navigation event, which can
    # have fired before the wait starts.
    page.locator("#count-online").wait_for(timeout=90_000)
    assert page.url.endswith("/console"), page.url


def canvas_painted(page: Any, selector: str) -> bool:
    """Whether the chart's canvas has any non-transparent pixel."""
    return bool(
        page.evaluate(
            """(sel) => {
                const c = document.querySelector(sel);
                if (!c || !c.width || !c.height) return false;
                const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) return true;
                return false;
            }""",
            selector,
        )
    )


def test_fleet_page_updates_live_without_reload(
    controller: tuple[str, Proc], mosquitto: Broker
) -> None:
    """After login the fleet page shows a device coming online and then going offline by
    its will, in place (the page is never reloaded), and /docs renders; nothing breaks the
    pages' Content-Security-Policy; screenshots land in the artifacts."""
    controller_url, controller_proc = controller
    device = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-browser")
    device.connect(mosquitto.host, mosquitto.port)
    device.loop_start()
    try:
        with chromium_page(controller_proc) as page:
            log_in(page, controller_url, controller_proc)
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
            expect(row).to_have_text("offline", timeout=60_000)
            assert page.evaluate("window.__notReloaded") is True
            assert page.locator("#count-offline").inner_text() == "1"
            page.screenshot(path=str(ARTIFACTS / "console-fleet-offline.png"), full_page=True)
            # Swagger UI starts from an inline script its page's policy allows by hash.
            page.goto(f"{controller_url}/docs")
            page.locator(".swagger-ui .info .title").wait_for(timeout=60_000)
    finally:
        device.loop_stop()
        device.disconnect()


def simulated_fleet(database: Path, devices: int) -> World:
    """A published model and ``devices`` simulated devices (births, reported shadows and a
    few ``system`` records) in the controller's database, through its real ingest."""
    world = World(f"sqlite:///{database}")
    world.add_model()
    now = datetime.now(UTC)
    ids = world.add_devices(devices, at=now)
    batches = [
        TelemetryBatch(
            device_id=d,
            ts=now,
            records=[
                Record(
                    epoch=1,
                    seq=i,
                    kind="metric",
                    name="system",
                    at=now - timedelta(minutes=3 - i),
                    body={
                        "cpu_percent": 20.0 + 10 * i,
                        "memory_percent": 40.0 + i,
                        "disk_percent": 55.0,
                        "load1": 0.5,
                        "outbox_bytes": 0,
                    },
                )
                for i in range(4)
            ],
        )
        for d in ids
    ]
    world.ingest(batches, now)
    world.seq.update(dict.fromkeys(ids, 4))
    return world


def test_operator_starts_and_pauses_a_rollout_from_the_console(
    controller: tuple[str, Proc], tmp_path: Path
) -> None:
    """Login, the fleet counts, a device page with drawn charts, starting a rollout from the
    form and pausing it with the confirmed button: the page then shows it paused (one
    screenshot per step in the artifacts)."""
    controller_url, controller_proc = controller
    simulated_fleet(tmp_path / "c.db", 3)
    with chromium_page(controller_proc) as page:
        log_in(page, controller_url, controller_proc)
        # The table is filled by the page's first poll of /api/devices.
        page.locator("#devices tbody tr[data-device='dev-0002']").wait_for(timeout=30_000)
        assert page.locator("#devices tbody tr[data-device]").count() == 3
        assert page.locator("#count-online").inner_text() == "3"
        assert page.locator("#count-total").inner_text() == "3"
        page.screenshot(path=str(ARTIFACTS / "console-1-fleet.png"), full_page=True)

        page.click("a[href='/console/devices/dev-0000']")
        page.wait_for_url("**/console/devices/dev-0000")
        page.locator("#chart-cpu canvas").wait_for(timeout=30_000)
        page.locator("#chart-memory canvas").wait_for(timeout=30_000)
        assert canvas_painted(page, "#chart-cpu canvas")
        assert canvas_painted(page, "#chart-memory canvas")
        page.locator("#shadow tbody tr[data-key='model.target']").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "console-2-device.png"), full_page=True)

        page.goto(f"{controller_url}/console/rollouts")
        expect(
            page.locator("#model-version option", has_text=re.compile(r"^smollm2 1\.1"))
        ).not_to_have_count(0, timeout=30_000)
        page.fill("input[name=waves]", "canary:1, 100%")
        page.screenshot(path=str(ARTIFACTS / "console-3-start-form.png"), full_page=True)
        page.click("#start-rollout button[type=submit]")
        page.wait_for_url("**/console/rollouts/*", timeout=30_000)
        status = page.locator("#rollout-status")
        expect(page.locator("#rollout-status")).to_have_text("running", timeout=30_000)
        page.locator("#waves .wave").first.wait_for(timeout=30_000)
        assert page.locator("#waves .wave").count() == 2
        pause = page.locator("button[data-command=pause]")
        assert pause.is_enabled()
        page.screenshot(path=str(ARTIFACTS / "console-4-rollout-running.png"), full_page=True)

        page.once("dialog", lambda dialog: dialog.accept())
        pause.click()
        expect(page.locator("#rollout-status")).to_have_text("paused", timeout=30_000)
        assert status.inner_text() == "paused"
        assert page.locator("button[data-command=resume]").is_enabled()
        assert pause.is_disabled()
        page.locator("#history tbody tr", has_text="rollout.pause").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "console-5-rollout-paused.png"), full_page=True)

        page.goto(f"{controller_url}/console/models")
        page.locator("#models tr[data-model='smollm2'][data-version='1.1']").wait_for(
            timeout=30_000
        )
        page.screenshot(path=str(ARTIFACTS / "console-6-models.png"), full_page=True)
        page.goto(f"{controller_url}/console/audit")
        page.fill("input[name=action]", "rollout.")
        page.click("#audit-filters button[type=submit]")
        page.locator("#audit tbody tr", has_text="rollout.pause").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "console-7-audit.png"), full_page=True)
        page.goto(f"{controller_url}/console/drift/smollm2")
        page.locator("#reference:not(:has-text('Loading'))").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "console-8-drift.png"), full_page=True)
        assert page.script_errors == []


def _diagnose(page: Any, proc: Proc) -> str:
    """What the browser shows and what the controller logged, for a failure's report."""
    try:
        page.screenshot(path=str(ARTIFACTS / "console-failure.png"), full_page=True)
        shown = f"url={page.url}\n{page.content()[:3000]}"
    except Exception as e:  # the page itself may be what broke
        shown = f"page unavailable: {e!r}"
    return f"----- browser -----\n{shown}\n----- controller log -----\n{proc.log()[-6000:]}"
